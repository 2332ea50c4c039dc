"""`viva train instructor` and the grounding probe: a tiny pre-training run whose exported instructor loads
and gives tokens; grounding labels; the probe's examples, poolings and linear probe."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from viva.cli import main
from viva.data.generate import DataConfig, make_pair
from viva.models.instructor import MiniVLMInstructor
from viva.train.instructor import build_instructor
from viva.train.probe import (
    extract_features,
    fit_linear_probe,
    grounding_probe,
    instruction_token_mask,
    probe_accuracy,
    probe_data_config,
    probe_examples,
)
from viva.train.world_data import (
    COLOR_NAMES,
    IGNORE,
    PATCH_COLUMNS,
    REGION_NAMES,
    SIZE_NAMES,
    grounding_label_spaces,
    grounding_labels,
    patch_labels,
)
from viva.world.program import region_of
from viva.world.scene import SHAPES, size_name

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not suffer from a busy machine's spinning threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_MODEL = [
    "model.vision.width=32",
    "model.vision.depth=1",
    "model.vision.heads=2",
    "model.projector_hidden=64",
]
TINY = [
    *TINY_MODEL,
    "train.steps=3",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.log_every=1",
    "train.tensorboard=false",
    "eval.num_examples=6",
    "eval.batch_size=6",
    "probe.num_train=12",
    "probe.num_test=6",
    "probe.batch_size=12",
    "probe.l2=0.1",
    "probe.max_iter=20",
]


@pytest.fixture(scope="module")
def tiny_instructor() -> MiniVLMInstructor:
    torch.manual_seed(0)
    return MiniVLMInstructor(vision={"width": 32, "depth": 1, "heads": 2}, projector_hidden=64).eval()


def test_pretraining_runs_and_exports_an_instructor(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "instructor", "--no-progress", "--out", str(run), *TINY]) == 0
    assert "held-out accuracy" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    report = json.loads((run / "eval.json").read_text())
    assert report["heads"]["num_examples"] == 6 and "c0.category" in report["heads"]["accuracy"]
    probe = report["probe"]
    for name in ("instructor", "text_only"):
        assert 0.0 <= probe[name]["color"] <= 1.0 and 0.0 <= probe[name]["cell"] <= 1.0
        assert probe[name]["num_test"] == 6 and "all_tokens" in probe[name]
    # MiniLM's trained layers are saved with the instructor, its (frozen) embeddings are not; the exported
    # folder loads and gives tokens.
    checkpoint = next((run / "checkpoints").glob("step-*"))
    assert (checkpoint / "trainable.safetensors").stat().st_size < 50_000_000  # MiniLM whole is 90 MB
    instructor = MiniVLMInstructor.from_pretrained(run / "instructor")
    assert instructor.config.train_language_model and instructor.config.image_token_positions
    with safe_open(str(run / "instructor" / "model.safetensors"), "pt") as f:
        lm_keys = [k for k in f.keys() if k.startswith("language_model.")]
    assert lm_keys and all(k.startswith("language_model.encoder.") for k in lm_keys)
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = instructor(["remove the star", "make the leftmost one red"], frames, [None, frames[0]])
    assert out.tokens.shape[0] == 2 and out.tokens.shape[-1] == 384 and torch.isfinite(out.tokens).all()
    assert out.mask[1].sum() > out.mask[0].sum()  # the second item has 16 reference tokens more


def test_fusion_layers_fine_tune_a_trained_instructor(tmp_path, capsys):
    """init=DIR model.fusion_layers=N train_part=fusion: the init's ViT, projector and MiniLM come back
    bit-identical in the export, only the new fusion layers changed; bad combinations are one line. (The
    base run also trains the vision head on the projected frame tokens: heads.vision_weight.)"""
    base = tmp_path / "base"
    args = ["train", "instructor", "--no-progress", *TINY, "probe.enabled=false", "train.steps=2"]
    assert main([*args, "--out", str(base), "heads.vision_weight=1.0"]) == 0
    rows = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["vision_shape_ce"]) and np.isfinite(r["patch_referred_bce"]) for r in rows)
    run = tmp_path / "fused"
    assert main([*args, "--out", str(run), f"init={base / 'instructor'}", "model.fusion_layers=1", "train_part=fusion"]) == 0
    before = MiniVLMInstructor.from_pretrained(base / "instructor").own_state_dict()
    after = MiniVLMInstructor.from_pretrained(run / "instructor")
    assert after.config.fusion_layers == 1 and after.config.vision.width == 32
    state = after.own_state_dict()
    assert set(state) - set(before) == {k for k in state if k.startswith("fusion")} != set()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert not torch.equal(state["fusion.0.attn.to_out.weight"], torch.zeros_like(state["fusion.0.attn.to_out.weight"]))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "train_part=fusion"]) == 2
    assert "init=DIR" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "bad"), f"init={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(base / "instructor", broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main([*args, "--out", str(tmp_path / "bad"), f"init={broken}"]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_vision_pretraining_then_init(tmp_path, capsys):
    """train_part=vision trains only the ViT, projector and image embedding on what each patch shows
    (MiniLM untouched, no probe); its export is the init of a full run with fusion layers."""
    args = ["train", "instructor", "--no-progress", *TINY, "train.steps=2", "model.vision.stem=conv"]
    vision = tmp_path / "vision"
    assert main([*args, "--out", str(vision), "train_part=vision", "data.image_fraction=1.0"]) == 0
    assert "held-out vision accuracy" in capsys.readouterr().err
    rows = [json.loads(line) for line in (vision / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r[f"vision_{k}_ce"]) for r in rows for k in ("color", "shape", "cell", "size"))
    report = json.loads((vision / "eval.json").read_text())
    assert "probe" not in report and set(report["heads"]["vision_accuracy"]) == {"color", "shape", "cell", "size"}
    trained = MiniVLMInstructor.from_pretrained(vision / "instructor")
    assert trained.config.vision.stem == "conv"
    torch.manual_seed(0)  # the instructor the run started from (same seed, same config)
    start = build_instructor(trained.config).own_state_dict()
    changed = {k for k, v in trained.own_state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith(("vision.", "projector.", "image_")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("vision.") for k in changed)
    run = tmp_path / "full"
    assert main([*args, "--out", str(run), f"init={vision / 'instructor'}", "model.fusion_layers=1", "probe.enabled=false"]) == 0
    assert MiniVLMInstructor.from_pretrained(run / "instructor").config.fusion_layers == 1


def test_grounding_labels_follow_the_program():
    spaces = grounding_label_spaces(1)
    config = DataConfig(image_fraction=0.5)
    for index in range(12):
        pair = make_pair(3, index, None, config)
        labels = grounding_labels(pair, 1)
        assert set(labels) == set(spaces)
        for name, value in labels.items():
            assert value == IGNORE or 0 <= value < len(spaces[name]), (name, value)
        clause = pair.program[0]
        if clause.target is not None:
            sprite = pair.source_scene.sprite(clause.target)
            assert COLOR_NAMES[labels["c0.target_color"]] == sprite.color
            assert SHAPES[labels["c0.target_shape"]] == sprite.shape
        else:
            assert labels["c0.target_color"] == IGNORE
        assert labels["ref.present"] == int(pair.reference is not None)
        patches = patch_labels(pair, 8)
        assert patches.shape == (64, PATCH_COLUMNS)
        shown = {(COLOR_NAMES[c], SHAPES[s], REGION_NAMES[cell], SIZE_NAMES[z]) for c, s, _, cell, z in patches if c < len(COLOR_NAMES)}
        truth = {(s.color, s.shape, region_of(*s.position(0.0)), size_name(s.radius)) for s in pair.source_scene.sprites}
        assert shown and shown <= truth
        background = patches[:, 0] == len(COLOR_NAMES)
        assert (patches[background, 3:] == IGNORE).all()
        if clause.target is not None and labels["c0.target_size"] != 0:  # not a small sprite: it covers patches
            assert patches[:, 2].max() == 1


def test_probe_examples_never_name_the_color():
    examples = probe_examples(5, 10, probe_data_config(), workers=0)
    assert len(examples) == 10
    for e in examples:
        assert "color" not in e["kind"].split("+")
        assert 0 <= e["color"] < len(COLOR_NAMES) and 0 <= e["cell"] < len(REGION_NAMES)
        assert e["frame"].shape == (64, 64, 3) and e["frame"].dtype == torch.uint8
    assert [e["instruction"] for e in examples] == [e["instruction"] for e in probe_examples(5, 10, workers=0)]


def test_probe_on_a_tiny_instructor(tiny_instructor):
    examples = probe_examples(11, 18, workers=0)
    feats = extract_features(tiny_instructor, examples[:4], batch_size=3)
    assert feats["text"].shape == feats["all"].shape == (4, 384)
    result = grounding_probe(tiny_instructor, examples[:12], examples[12:], batch_size=6, l2=0.1, max_iter=20)
    assert result["num_train"] == 12 and result["num_test"] == 6 and result["pooling"] == "text"
    for key in ("color", "cell", "color_train", "cell_majority"):
        assert 0.0 <= result[key] <= 1.0
    assert 0.0 <= result["all_tokens"]["cell"] <= 1.0
    # Per kind of reference: counts add up, and the kinds' accuracies average (weighted) to the overall one.
    by_kind = result["by_kind"]
    assert set(by_kind) == {e["kind"] for e in examples[12:]} and sum(r["n"] for r in by_kind.values()) == 6
    for name in ("color", "cell"):
        assert abs(sum(r[name] * r["n"] for r in by_kind.values()) / 6 - result[name]) < 1e-9


def test_instruction_token_mask(tiny_instructor):
    frames = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny_instructor(["remove the star", "add this"], frames, [None, frames[0]])
    text = instruction_token_mask(tiny_instructor, out.mask, [None, frames[0]])
    words = [len(tiny_instructor.token_ids(s)) for s in ("remove the star", "add this")]
    assert text[0].sum() == words[0] + 2 and text[1].sum() == words[1] + 2  # + [CLS] and [SEP]
    assert text[0, 0] and not text[0, 1:65].any() and not text[1, 1:129].any()


def test_linear_probe_recovers_a_linear_label():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    probe = fit_linear_probe(x[:300], y[:300], 4)
    assert probe_accuracy(probe, x[300:], y[300:]) > 0.9
