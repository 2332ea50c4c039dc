"""Generating on Ray (a local 2-CPU instance) writes exactly the files of a local run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ray")

from viva.data.format import load_manifest  # noqa: E402
from viva.data.shards import generate_dataset  # noqa: E402

ARGS = dict(num=12, seed=9, shard_size=4)


def test_ray_matches_local(tmp_path):
    local = tmp_path / "local"
    generate_dataset(local, workers=1, progress=False, **ARGS)
    on_ray = tmp_path / "ray"
    result = subprocess.run(
        [sys.executable, "-m", "viva", "data", "generate", "--out", str(on_ray), "--num", str(ARGS["num"]),
         "--seed", str(ARGS["seed"]), "--shard-size", str(ARGS["shard_size"]), "--workers", "2", "--ray",
         "--no-progress"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in local.iterdir())
    assert files == sorted(p.name for p in on_ray.iterdir())
    for name in files:
        assert (local / name).read_bytes() == (on_ray / name).read_bytes(), name
    assert len(load_manifest(on_ray, verify=True)["shards"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "ray"]  # no temporary folder left
