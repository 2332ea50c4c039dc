"""The paired-data generator: determinism, validity per category, masks, held-out phrasings, referring
expressions, hybrids and clean layouts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from viva.data import (
    ALL_CATEGORIES,
    CATEGORY_OPS,
    DEFAULT_HELDOUT_PHRASINGS,
    HYBRID,
    PRIMITIVE_CATEGORIES,
    DataConfig,
    all_phrasing_ids,
    make_pair,
    resolve_expression,
)
from viva.data.grammar import REGION_WORDS
from viva.world.program import apply_program, program_to_list, region_of
from viva.world.render import frame_times, render, render_float
from viva.world.scene import COLORS, Motion, Scene, Sprite

SEED = 11
PER_CATEGORY = 24


@pytest.fixture(scope="module")
def pairs():
    """A few pairs of every category (hybrids included), split "any", some of them images."""
    config = DataConfig(split="any", image_fraction=0.25)
    return [make_pair(SEED, i, c, config) for c in ALL_CATEGORIES for i in range(PER_CATEGORY)]


@pytest.fixture(scope="module")
def train_pairs():
    config = DataConfig(split="train")
    out = [make_pair(SEED, i, None, config) for i in range(300)]
    return out + [make_pair(SEED, i, HYBRID, config) for i in range(60)]


@pytest.fixture(scope="module")
def heldout_pairs():
    config = DataConfig(split="heldout")
    out = [make_pair(SEED, i, None, config) for i in range(200)]
    return out + [make_pair(SEED, i, HYBRID, config) for i in range(40)]


# Determinism -------------------------------------------------------------------------------------------


def _fingerprint(pair) -> tuple:
    return (
        pair.key,
        pair.category,
        pair.instruction,
        json.dumps(program_to_list(pair.program), sort_keys=True),
        pair.source_scene.to_json(),
        pair.target_scene.to_json(),
        pair.source.tobytes(),
        pair.target.tobytes(),
        pair.mask.tobytes(),
        None if pair.reference is None else pair.reference.tobytes(),
        json.dumps(pair.meta, sort_keys=True),
    )


@pytest.mark.parametrize("category", [None, "add", "ref_replace", "hybrid"])
def test_same_arguments_same_pair(category):
    config = DataConfig(image_fraction=0.3)
    for index in (0, 5, 123456):
        assert _fingerprint(make_pair(3, index, category, config)) == _fingerprint(make_pair(3, index, category, config))


def test_different_index_or_seed_different_pair():
    a = make_pair(3, 10, "color")
    assert a.key == "00000010"
    for other in (make_pair(3, 11, "color"), make_pair(4, 10, "color")):
        assert not np.array_equal(a.source, other.source)
        assert a.source_scene.to_json() != other.source_scene.to_json()


def test_independent_of_process_and_hash_seed():
    code = (
        "from viva.data import make_pair, DataConfig; import hashlib;"
        "p = make_pair(9, 77, None, DataConfig(split='any'));"
        "print(p.instruction); print(hashlib.sha256(p.source.tobytes() + p.mask.tobytes()).hexdigest())"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outputs) == 1
    import hashlib

    here = make_pair(9, 77, None, DataConfig(split="any"))
    assert outputs.pop() == here.instruction + "\n" + hashlib.sha256(here.source.tobytes() + here.mask.tobytes()).hexdigest() + "\n"


# Validity ----------------------------------------------------------------------------------------------


def _changed_region(pair) -> np.ndarray:
    """Independent recomputation of where an edit may act: changed pixels and touched sprites."""
    t, h, w = pair.mask.shape
    src, src_cov = render_float(pair.source_scene, h, w, t, with_coverage=True)
    tgt, tgt_cov = render_float(pair.target_scene, h, w, t, with_coverage=True)
    region = (np.abs(pair.source.astype(int) - pair.target.astype(int)) > 2).any(-1)
    ids = {c.target for c in pair.program if c.target is not None}
    ids |= {c.sprite.id for c in pair.program if c.sprite is not None}
    for sid in ids:
        for cov in (src_cov, tgt_cov):
            if sid in cov:
                region |= cov[sid] > 0.05
    return ndimage.binary_dilation(region, structure=np.ones((1, 3, 3), bool))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_category_gives_a_valid_pair(pairs):
    seen = set()
    for pair in pairs:
        seen.add(pair.category)
        t = pair.meta["num_frames"]
        assert pair.source.shape == pair.target.shape == (t, 64, 64, 3)
        assert pair.source.dtype == pair.target.dtype == pair.mask.dtype == np.uint8
        assert pair.mask.shape == (t, 64, 64)
        assert set(np.unique(pair.mask)) <= {0, 255}
        # the program explains the target exactly, and the clips are renders of the scenes
        assert apply_program(pair.source_scene, pair.program).to_dict() == pair.target_scene.to_dict()
        assert np.array_equal(pair.source, render(pair.source_scene, 64, 64, t))
        assert np.array_equal(pair.target, render(pair.target_scene, 64, 64, t))
        assert not np.array_equal(pair.source, pair.target)
        # the mask is not empty, covers every changed pixel, and stays inside the changed region
        mask = pair.mask > 0
        assert mask.any()
        changed = (np.abs(pair.source.astype(int) - pair.target.astype(int)) > 2).any(-1)
        assert not (changed & ~mask).any()
        if any(c.op == "global" for c in pair.program):
            assert mask.all()
        else:
            assert not (mask & ~_changed_region(pair)).any()
        if pair.category != HYBRID:
            assert len(pair.program) == 1 and pair.program[0].op == CATEGORY_OPS[pair.category]
        refs = [c for c in pair.program if c.op in ("ref_add", "ref_replace")]
        if refs:
            assert pair.reference is not None and pair.reference.shape == (64, 64, 3)
        else:
            assert pair.reference is None
    assert seen == set(ALL_CATEGORIES)


def test_operation_semantics(pairs):
    reverse_weather = 0
    for pair in pairs:
        src = pair.source_scene
        for clause in pair.program:
            if clause.op == "resize":
                assert clause.scale in (1.6, 0.6)
                words = ("bigger", "larger", "twice as big", "enlarge", "scale up", "grow", "increase", "magnify")
                if pair.category == "size":
                    assert any(w in pair.instruction.lower() for w in words) == (clause.scale > 1)
            if clause.op == "recolor":
                assert clause.color != src.sprite(clause.target).color
            if clause.op in ("replace", "ref_replace"):
                old, new = src.sprite(clause.target), clause.sprite
                assert (old.color, old.shape) != (new.color, new.shape)
                assert new.radius == old.radius and new.motion == old.motion
            if clause.op in ("ref_add", "ref_replace"):
                pattern = clause.sprite.pattern
                assert pattern.kind != "solid"
                assert pattern.color2 == tuple(int(round(c * 0.45)) for c in COLORS[clause.sprite.color])
            if clause.op == "background":
                assert (clause.background.kind, clause.background.color) != (src.background.kind, src.background.color)
                assert clause.background.color in pair.instruction or "grey" in pair.instruction
            if clause.op == "global":
                assert clause.state != src.global_state
                reverse_weather += clause.state == "none"
            if clause.op in ("add", "ref_add") and clause.region is not None:
                times = frame_times(pair.meta["num_frames"])
                x, y = np.mean([clause.sprite.position(float(t)) for t in times], axis=0)
                assert region_of(x, y) == clause.region
                assert any(p in pair.instruction for p in REGION_WORDS[clause.region])
        # ordinary sprites are solid
        for sprite in src.sprites:
            assert sprite.pattern.kind == "solid"
    assert reverse_weather > 0


def test_image_pairs_have_one_frame():
    config = DataConfig(image_fraction=1.0)
    for i, category in enumerate(ALL_CATEGORIES):
        pair = make_pair(1, i, category, config)
        assert pair.source.shape[0] == pair.target.shape[0] == pair.mask.shape[0] == 1
        assert pair.meta["image"] and pair.meta["num_frames"] == 1
    mixed = [make_pair(1, i, None, DataConfig(image_fraction=0.5)).source.shape[0] for i in range(40)]
    assert set(mixed) == {1, 8}
    assert make_pair(1, 0, "add", DataConfig(height=48, width=80, num_frames=5)).source.shape == (5, 48, 80, 3)


# Held-out phrasings ------------------------------------------------------------------------------------


def _contains_word(text: str, phrase: str) -> bool:
    return re.search(r"\b" + re.escape(phrase) + r"\b", text.lower()) is not None


def test_train_split_never_uses_heldout_phrasings(train_pairs):
    heldout = set(DEFAULT_HELDOUT_PHRASINGS)
    synonyms = [p for p in heldout if "." not in p]
    known = all_phrasing_ids()
    assert any(p.category == HYBRID for p in train_pairs)
    for pair in train_pairs:
        used = set(pair.meta["phrasings"])
        assert used <= known
        assert not used & heldout and not pair.held_out and pair.meta["heldout_phrasings"] == []
        assert not [s for s in synonyms if _contains_word(pair.instruction, s)], pair.instruction
    assert not any(p.category == HYBRID for p in train_pairs[:300])  # hybrids only when asked


def test_heldout_split_always_uses_one(heldout_pairs):
    heldout = set(DEFAULT_HELDOUT_PHRASINGS)
    used_overall = set()
    for pair in heldout_pairs:
        used = set(pair.meta["phrasings"]) & heldout
        assert used and pair.held_out and set(pair.meta["heldout_phrasings"]) == used
        used_overall |= used
        for s in used:
            if "." not in s:
                assert _contains_word(pair.instruction, s)
    assert len(used_overall) >= 20  # a wide spread, not one phrasing over and over


def test_custom_heldout_set():
    config = DataConfig(split="heldout", heldout_phrasings=("remove.0", "delete"), categories=("remove",))
    for i in range(20):
        pair = make_pair(2, i, None, config)
        assert {"remove.0", "delete"} & set(pair.meta["phrasings"])
    train = DataConfig(split="train", heldout_phrasings=("remove.0", "delete"))
    for i in range(20):
        assert not {"remove.0", "delete"} & set(make_pair(2, i, "remove", train).meta["phrasings"])


# Referring expressions ---------------------------------------------------------------------------------


def test_referring_expressions_resolve_to_their_target(pairs):
    kinds = set()
    count = 0
    for pair in pairs:
        targets = [c.target for c in pair.program if c.target is not None]
        assert [r["target"] for r in pair.meta["refs"]] == targets
        for ref in pair.meta["refs"]:
            assert ref["text"] in pair.instruction.lower() or ref["text"].capitalize() in pair.instruction
            ids = resolve_expression(ref["text"], pair.source_scene, pair.meta["num_frames"])
            assert ids == [ref["target"]], (pair.instruction, ref)
            kinds.add(ref["kind"])
            count += 1
    assert count > 100
    assert {"color", "shape", "color+shape", "biggest", "left"} <= kinds or len(kinds) >= 8


def test_resolver_reports_ambiguity():
    def sprite(i, color, shape, x, radius=0.1):
        return Sprite(id=i, shape=shape, color=color, radius=radius, motion=Motion(start=(x, 0.5)))

    scene = Scene(sprites=[sprite(0, "red", "circle", 0.2), sprite(1, "red", "star", 0.5), sprite(2, "blue", "star", 0.8, 0.15)])
    assert resolve_expression("the red one", scene) == [0, 1]
    assert resolve_expression("the crimson circle", scene) == [0]
    assert resolve_expression("the star", scene) == [1, 2]
    assert resolve_expression("the leftmost object", scene) == [0]
    assert resolve_expression("the shape furthest to the right", scene) == [2]
    assert resolve_expression("the biggest one", scene) == [2]
    assert resolve_expression("the smallest thing", scene) == [0, 1]  # a tie is ambiguous
    assert resolve_expression("the large star", scene) == [2]


# Hybrids -----------------------------------------------------------------------------------------------


def test_hybrids_compose_compatible_clauses(pairs):
    hybrids = [p for p in pairs if p.category == HYBRID]
    assert len(hybrids) == PER_CATEGORY
    sizes = set()
    for pair in hybrids:
        program = pair.program
        sizes.add(len(program))
        assert 2 <= len(program) <= 3
        targets = [c.target for c in program if c.target is not None]
        assert len(targets) == len(set(targets))
        assert sum(c.op == "global" for c in program) <= 1
        assert sum(c.op == "background" for c in program) <= 1
        assert sum(c.op in ("ref_add", "ref_replace") for c in program) <= 1
        assert pair.instruction.endswith(".") and pair.instruction[0].isupper()
    assert sizes == {2, 3}


def test_hybrids_only_when_asked():
    assert all(make_pair(5, i, None).category != HYBRID for i in range(150))
    assert all(make_pair(5, i, None, DataConfig(hybrid_fraction=1.0)).category == HYBRID for i in range(10))
    assert make_pair(5, 0, None, DataConfig(categories=("hybrid",))).category == HYBRID


# Layout ------------------------------------------------------------------------------------------------


def _check_layout(scene: Scene, times: np.ndarray, margin: float) -> None:
    tracks = {s.id: np.array([s.position(float(t)) for t in times]) for s in scene.sprites}
    for s in scene.sprites:
        xy = tracks[s.id]
        assert (xy >= s.radius - 1e-9).all() and (xy <= 1 - s.radius + 1e-9).all()
    for i, a in enumerate(scene.sprites):
        for b in scene.sprites[i + 1 :]:
            dist = np.linalg.norm(tracks[a.id] - tracks[b.id], axis=1)
            assert dist.min() > a.radius + b.radius + margin, (a, b)


def test_sprites_never_overlap(pairs):
    frames = frame_times(8)
    dense = np.linspace(0, 1, 121)
    for pair in pairs:
        for scene in (pair.source_scene, pair.target_scene):
            _check_layout(scene, frames, 0.03 - 1e-9)
            _check_layout(scene, dense, 0.02)
            combos = [(s.color, s.shape) for s in scene.sprites]
            assert len(combos) == len(set(combos))
        assert 2 <= len(pair.source_scene.sprites) <= 4


# Config ------------------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = DataConfig(image_fraction=0.2, categories=("add", "hybrid"), split="heldout", heldout_phrasings=("erase",))
    again = DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert DataConfig.from_dict(DataConfig().to_dict()) == DataConfig()
    assert DataConfig().categories == PRIMITIVE_CATEGORIES and DataConfig().hybrid_fraction == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"categories": ("teleport",)}, {"split": "test"}, {"image_fraction": 1.5}, {"categories": ()}, {"height": 0}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        DataConfig(**kwargs)
    with pytest.raises(ValueError):
        DataConfig.from_dict({"colour": 1})
