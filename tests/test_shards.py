"""Shards, manifest, datasets and previews of generated edit pairs (viva.data.shards / dataset / preview)."""

from __future__ import annotations

import dataclasses
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viva.data.dataset import EditPairDataset, EditPairIterable, collate_pairs, decode_sample, encode_sample
from viva.data.format import MANIFEST_NAME, load_manifest
from viva.data.generate import DataConfig, make_pair
from viva.data.preview import render_preview, render_preview_frames, save_preview
from viva.data.shards import generate_dataset
from viva.errors import VivaUserError
from viva.world.program import program_to_list

NUM = 24
SEED = 5
SHARD = 8


def small_config(**changes) -> DataConfig:
    return dataclasses.replace(DataConfig(), height=32, width=32, num_frames=4, image_fraction=0.25, **changes)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and path.name in p.name)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards") / "pairs"
    generate_dataset(root, NUM, SEED, workers=1, config=small_config(), shard_size=SHARD, progress=False)
    return root


# Shards and manifest ----------------------------------------------------------------------------------


def test_workers_do_not_change_bytes(dataset, tmp_path):
    other = tmp_path / "pairs2"
    generate_dataset(other, NUM, SEED, workers=2, config=small_config(), shard_size=SHARD, progress=False)
    assert read_tree(other) == read_tree(dataset)
    assert sorted(read_tree(dataset)) == [MANIFEST_NAME, "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_manifest_counts(dataset):
    manifest = load_manifest(dataset, verify=True)
    pairs = [make_pair(SEED, i, None, small_config()) for i in range(NUM)]
    assert manifest["num"] == NUM and manifest["seed"] == SEED and manifest["shard_size"] == SHARD
    assert manifest["counts"] == dict(Counter(p.category for p in pairs))
    assert sum(manifest["counts"].values()) == NUM
    assert manifest["images"] == sum(p.source.shape[0] == 1 for p in pairs)
    assert manifest["images"] + manifest["videos"] == NUM
    assert manifest["held_out"] == sum(p.held_out for p in pairs)
    assert [s["num_samples"] for s in manifest["shards"]] == [8, 8, 8]
    assert [s["first_index"] for s in manifest["shards"]] == [0, 8, 16]
    assert DataConfig.from_dict(manifest["config"]) == small_config()
    assert isinstance(manifest["generator_version"], int) and manifest["note"]


def test_last_shard_is_partial(tmp_path):
    manifest = generate_dataset(tmp_path / "d", 10, 1, config=small_config(), shard_size=4, progress=False)
    assert [s["num_samples"] for s in manifest["shards"]] == [4, 4, 2]
    assert len(EditPairDataset(tmp_path / "d")) == 10


def test_tar_members_are_canonical(dataset):
    with tarfile.open(dataset / "shard-000001.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {n.split(".")[0] for n in names} == {f"{i:08d}" for i in range(8, 16)}
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert m.name.split(".", 1)[1] in ("json", "src.png", "tgt.png", "mask.png", "ref.png")


def assert_same_pair(got, want):
    assert got.key == want.key
    assert got.category == want.category and got.instruction == want.instruction
    assert program_to_list(got.program) == program_to_list(want.program)
    assert got.source_scene.to_dict() == want.source_scene.to_dict()
    assert got.target_scene.to_dict() == want.target_scene.to_dict()
    assert got.held_out == want.held_out
    assert json.loads(json.dumps(got.meta)) == json.loads(json.dumps(want.meta, default=lambda v: v.tolist()))
    for name in ("source", "target", "mask"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b), name
    assert (got.reference is None) == (want.reference is None)
    if want.reference is not None:
        assert np.array_equal(got.reference, want.reference)


def test_round_trip_equals_make_pair(dataset):
    ds = EditPairDataset(dataset)
    assert len(ds) == NUM
    for i in range(NUM):
        assert_same_pair(ds.pair(i), make_pair(SEED, i, None, small_config()))


@pytest.mark.parametrize("category", ["ref_add", "ref_replace", "color"])
def test_encode_decode_each_kind(category):
    pair = make_pair(11, 3, category, small_config())
    assert_same_pair(decode_sample(encode_sample(pair, 3)), pair)


def test_decode_rejects_incomplete_sample():
    files = encode_sample(make_pair(0, 0, "add", small_config()))
    del files["src.png"]
    with pytest.raises(VivaUserError, match="src.png"):
        decode_sample(files)


def test_reference_round_trip(tmp_path):
    root = tmp_path / "refs"
    categories = ["ref_add", "ref_replace"]
    generate_dataset(root, 6, 2, categories=categories, config=small_config(), shard_size=4, progress=False)
    ds = EditPairDataset(root)
    for i in range(len(ds)):
        item = ds[i]
        assert item["category"] in ("ref_add", "ref_replace")
        assert item["reference"] is not None and item["reference"].dtype == torch.uint8
        assert_same_pair(ds.pair(i), make_pair(2, i, None, small_config(categories=("ref_add", "ref_replace"))))


# Datasets ---------------------------------------------------------------------------------------------


def test_map_dataset_items(dataset):
    ds = EditPairDataset(dataset)
    item = ds[3]
    t, h, w, c = item["source"].shape
    assert (h, w, c) == (32, 32, 3) and item["source"].dtype == torch.uint8
    assert item["target"].shape == item["source"].shape
    assert item["mask"].shape == (t, h, w) and item["mask"].dtype == torch.uint8
    assert isinstance(item["instruction"], str) and isinstance(item["program"], list)
    assert item["key"] == make_pair(SEED, 3, None, small_config()).key
    assert ds[-1]["key"] == ds[NUM - 1]["key"]
    with pytest.raises(IndexError):
        ds[NUM]


def test_category_filter(dataset):
    counts = load_manifest(dataset)["counts"]
    category = max(counts, key=counts.get)
    ds = EditPairDataset(dataset, categories=[category])
    assert len(ds) == counts[category]
    assert all(ds[i]["category"] == category for i in range(len(ds)))
    streamed = list(EditPairIterable(dataset, categories=category))
    assert len(streamed) == counts[category] and {x["category"] for x in streamed} == {category}
    with pytest.raises(VivaUserError, match="choose from"):
        EditPairDataset(dataset, categories=["nonsense"])


def test_iterable_splits_ranks(dataset, monkeypatch):
    keys = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        keys.append([x["key"] for x in EditPairIterable(dataset, seed=3)])
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    all_keys = {make_pair(SEED, i, None, small_config()).key for i in range(NUM)}
    assert sorted(keys[0] + keys[1]) == sorted(all_keys)


def test_iterable_more_consumers_than_shards(dataset):
    parts = [[x["key"] for x in EditPairIterable(dataset, rank=r, world_size=5)] for r in range(5)]
    assert all(parts) and sum(map(len, parts)) == NUM and len(set().union(*parts)) == NUM


def test_iterable_epochs_are_deterministic(dataset):
    ds = EditPairIterable(dataset, seed=7, buffer_size=5)
    first = [x["key"] for x in ds]
    assert first == [x["key"] for x in EditPairIterable(dataset, seed=7, buffer_size=5)]
    ds.set_epoch(1)
    second = [x["key"] for x in ds]
    assert sorted(second) == sorted(first) and second != first
    plain = [x["key"] for x in EditPairIterable(dataset, shuffle=False)]
    assert plain == [EditPairDataset(dataset)[i]["key"] for i in range(NUM)]


def test_dataloader_workers_cover_everything_once(dataset):
    loader = torch.utils.data.DataLoader(
        EditPairIterable(dataset), batch_size=4, num_workers=2, collate_fn=collate_pairs
    )
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == NUM and len(set(keys)) == NUM
    batch = collate_pairs([EditPairDataset(dataset)[i] for i in range(2)])
    assert isinstance(batch["instruction"], list) and len(batch["reference"]) == 2


# Validation and atomicity ------------------------------------------------------------------------------


def test_manifest_validation(dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, data in read_tree(dataset).items():
        (broken / name).write_bytes(data)
    load_manifest(broken, verify=True)
    shard = broken / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    load_manifest(broken)  # same size: only the checksum notices
    with pytest.raises(VivaUserError, match="sha256"):
        load_manifest(broken, verify=True)
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(VivaUserError, match="wrong size"):
        EditPairDataset(broken)
    shard.unlink()
    with pytest.raises(VivaUserError, match="missing"):
        EditPairDataset(broken)
    (broken / MANIFEST_NAME).unlink()
    with pytest.raises(VivaUserError, match="not a viva dataset"):
        EditPairDataset(broken)
    with pytest.raises(VivaUserError, match="does not exist"):
        EditPairIterable(tmp_path / "nowhere")


def test_existing_out_dir_is_refused_and_kept(dataset, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(VivaUserError, match="--overwrite"):
        generate_dataset(out, 4, 0, config=small_config(), progress=False)
    with pytest.raises(VivaUserError, match="not a viva dataset"):  # never delete a foreign folder
        generate_dataset(out, 4, 0, config=small_config(), overwrite=True, progress=False)
    assert read_tree(out) == {"keep.txt": b"mine"}
    assert siblings(out) == []


def test_overwrite_replaces_a_dataset(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, 4, 0, config=small_config(), shard_size=2, progress=False)
    before = read_tree(out)
    with pytest.raises(VivaUserError, match="already exists"):
        generate_dataset(out, 6, 1, config=small_config(), progress=False)
    assert read_tree(out) == before
    manifest = generate_dataset(out, 6, 1, config=small_config(), shard_size=3, overwrite=True, progress=False)
    assert manifest["num"] == 6 and load_manifest(out)["seed"] == 1 and len(EditPairDataset(out)) == 6
    assert siblings(out) == []


def test_failures_leave_nothing_behind(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(VivaUserError, match="unknown category 'bogus'"):
        generate_dataset(out, 4, 0, categories=["add", "bogus"], progress=False)
    for bad in (dict(num=0), dict(num=3, workers=0), dict(num=3, shard_size=0), dict(num=3, seed=-1)):
        args = {"seed": 0, **bad}
        with pytest.raises(VivaUserError):
            generate_dataset(out, progress=False, **args)
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a parent folder should be: the path cannot be created
    with pytest.raises(VivaUserError, match="cannot create"):
        generate_dataset(blocker / "ds", 4, 0, config=small_config(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_ray_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    with pytest.raises(VivaUserError, match=r"pip install 'viva\[ray\]'"):
        generate_dataset(tmp_path / "ds", 4, 0, ray=True, progress=False)
    assert list(tmp_path.iterdir()) == []


# Previews ---------------------------------------------------------------------------------------------


def test_preview_png_and_gif(dataset, tmp_path):
    ds = EditPairDataset(dataset)
    pair = ds.pair(0)
    t, h, w = pair.mask.shape
    image = render_preview(pair, scale=3)
    columns = 4 if pair.reference is not None else 3
    assert image.dtype == np.uint8 and image.shape[1] >= columns * w * 3
    assert image.shape[0] >= t * h * 3
    path = save_preview(pair, tmp_path / "sub" / "p.png")
    assert Image.open(path).size == (image.shape[1], image.shape[0])
    frames = render_preview_frames(pair)
    assert frames.shape[0] == t
    gif = save_preview(pair, tmp_path / "p.gif")
    with Image.open(gif) as im:
        assert im.n_frames == t
    with pytest.raises(VivaUserError, match=".png"):
        save_preview(pair, tmp_path / "p.bmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gif", "sub"]


def test_preview_wraps_long_instructions(dataset):
    pair = EditPairDataset(dataset).pair(1)
    short = render_preview(pair)
    pair.instruction = " ".join(["please make the small red circle on the left turn blue"] * 6)
    long = render_preview(pair)
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0]
