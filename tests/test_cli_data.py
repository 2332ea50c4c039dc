"""`viva data generate | info | show` through real subprocesses: outputs, exit codes and one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from viva.data.dataset import EditPairDataset
from viva.data.format import load_manifest
from viva.data.preview import render_preview

NUM = 20


def viva(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "viva", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pairs"
    result = viva(
        "data", "generate", "--out", out, "--num", NUM, "--workers", 2, "--seed", 4,
        "--shard-size", 8, "--frames", 4, "--size", 32, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {NUM} pairs in 3 shards" in result.stdout
    return out


def test_version():
    result = viva("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("viva ")
    script = Path(sys.executable).with_name("viva")
    if script.exists():  # the console script of the installed package
        assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout == result.stdout


def test_generate_writes_a_dataset(generated):
    manifest = load_manifest(generated, verify=True)
    assert manifest["num"] == NUM and manifest["seed"] == 4 and manifest["shard_size"] == 8
    assert manifest["config"]["num_frames"] == 4 and manifest["config"]["height"] == 32
    item = EditPairDataset(generated)[0]
    assert item["source"].shape[1:] == (32, 32, 3)


def test_info(generated):
    result = viva("data", "info", generated, "--verify")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(generated)
    assert f"{NUM} in 3 shards" in result.stdout and "checksums" in result.stdout
    for category, count in manifest["counts"].items():
        assert any(line.split() == [category, str(count)] for line in result.stdout.splitlines())


def test_show_png_and_gif(generated, tmp_path):
    pair = EditPairDataset(generated).pair(2)
    png = tmp_path / "preview.png"
    result = viva("data", "show", generated, "--index", 2, "-o", png)
    assert result.returncode == 0, result.stderr
    expected = render_preview(pair)
    assert Image.open(png).size == (expected.shape[1], expected.shape[0])
    gif = tmp_path / "preview.gif"
    result = viva("data", "show", generated, "--index", 2, "-o", gif, "--gif")
    assert result.returncode == 0, result.stderr
    with Image.open(gif) as image:
        assert image.n_frames == pair.source.shape[0]


def test_categories_option(tmp_path):
    out = tmp_path / "d"
    result = viva(
        "data", "generate", "--out", out, "--num", 6, "--categories", "remove,color", "--frames", 2,
        "--size", 32, "--shard-size", 3, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert set(manifest["counts"]) <= {"remove", "color"} and sum(manifest["counts"].values()) == 6
    assert list(manifest["categories"]) == ["remove", "color"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["data", "generate", "--out", "{tmp}/x", "--num", "4", "--categories", "add,teleport"], ["teleport", "add"]),
        (["data", "generate", "--out", "{tmp}/x", "--num", "0"], ["num", "at least 1"]),
        (["data", "generate", "--out", "{tmp}/x", "--num", "many"], ["--num"]),
        (["data", "generate", "--num", "4"], ["--out"]),
        (["data", "generate", "--out", "{tmp}/x", "--num", "4", "--ray", "--ray-address", "auto"], ["--ray"]),
        (["data", "info", "{tmp}/missing"], ["does not exist"]),
        (["data", "show", "{tmp}/missing", "--index", "0", "-o", "{tmp}/p.png"], ["does not exist"]),
        (["data", "teleport"], ["teleport"]),
        ([], ["COMMAND"]),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, args, fragments):
    result = viva(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_user_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_show_bad_index_and_output(generated, tmp_path):
    assert_user_error(viva("data", "show", generated, "--index", NUM, "-o", tmp_path / "p.png"), "out of range")
    assert_user_error(viva("data", "show", generated, "--index", -1, "-o", tmp_path / "p.png"), "out of range")
    assert_user_error(viva("data", "show", generated, "-o", tmp_path / "p.png", "--gif"), ".gif")
    assert_user_error(viva("data", "show", generated, "-o", tmp_path / "p.jpg"), ".png")
    assert list(tmp_path.iterdir()) == []


def test_existing_out_is_refused_and_kept(generated):
    before = {p.name: p.read_bytes() for p in generated.iterdir()}
    result = viva("data", "generate", "--out", generated, "--num", 4, "--no-progress")
    assert_user_error(result, "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in generated.iterdir()} == before


def test_not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(viva("data", "info", tmp_path / "empty"), "not a viva dataset")


def test_interrupt_leaves_no_dataset(tmp_path):
    """Ctrl-C during generation: exit 130, one line, no output folder and no temporary folder."""
    out = tmp_path / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "viva", "data", "generate", "--out", str(out), "--num", "100000",
         "--shard-size", "2", "--frames", "2", "--size", "32", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # A shell's background job (e.g. `make test &`) runs with SIGINT ignored, which children inherit and
        # Python then respects; give the child the default disposition, as a terminal's foreground job has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".big.tmp-*/shard-*.tar")):  # at least one shard written
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # make a hang diagnosable: faulthandler dumps every thread's stack
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=30)
            pytest.fail(f"no exit 60 s after SIGINT; the child's stacks:\n{stderr}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM semantics")
def test_sigterm_leaves_no_dataset(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "viva", "data", "generate", "--out", str(out), "--num", "100000",
         "--shard-size", "2", "--frames", "2", "--size", "32", "--workers", "2", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".big.tmp-*/shard-*.tar")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated" and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
