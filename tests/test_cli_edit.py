"""`viva edit` through a real subprocess: outputs, notes, and one-line errors that leave no file behind."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from viva.io import probe_video, read_image, read_video, write_image, write_video
from viva.models.tiny import save_tiny_editor
from viva.pipeline import PREVIEW_GAP


def viva(*args: str, cwd) -> subprocess.CompletedProcess:
    # One thread: tiny models gain nothing from two, and on a busy machine two spin-waiting threads crawl.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "viva", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny model, a 12-frame 96x80 mp4, an image, a reference, and broken inputs."""
    root = tmp_path_factory.mktemp("edit")
    save_tiny_editor(root / "model", seed=0, vlm=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:80, 0:96]
    frames = np.zeros((12, 80, 96, 3), np.uint8)
    for t in range(12):
        frames[t, ..., 0] = (xs * 2 + 8 * t) % 256
        frames[t, ..., 1] = ys * 3
        frames[t, 20:40, 4 * t : 4 * t + 20, 2] = 255
    write_video(root / "in.mp4", frames, fps=12)
    write_image(root / "still.png", frames[0])
    write_image(root / "ref.png", rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + rng.bytes(2000))
    (root / "notimage.png").write_bytes(b"this is not a png")
    good = (root / "in.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    shutil.copytree(root / "model", root / "no_weights")
    (root / "no_weights" / "denoiser" / "model.safetensors").unlink()
    (root / "no_index").mkdir()
    return root


def test_edit_writes_video_and_preview(work):
    out = viva("edit", "in.mp4", "-i", "make the square red", "--ref", "ref.png", "-o", "out.mp4",
               "--preview", "preview.png", "--model", "model", "--steps", "4", "--seed", "1", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "note: sampled 8 of 12 frames evenly" in out.stdout
    assert "note: resized 96x80 -> 64x64 (center crop)" in out.stdout
    assert "note: reference resized 40x50 -> 64x64 (center crop)" in out.stdout
    assert "wrote out.mp4" in out.stdout and "wrote preview.png" in out.stdout
    assert "editing" in out.stderr and "4/4" in out.stderr  # the progress bar
    frames, info = read_video(work / "out.mp4")
    assert frames.shape == (8, 64, 64, 3)
    assert info.fps == pytest.approx(8.0)  # 8 frames over the clip's 1 s
    preview = read_image(work / "preview.png")
    assert preview.shape == (8 * 128 + 9 * PREVIEW_GAP, 3 * 128 + 4 * PREVIEW_GAP, 3)


def test_edit_image_to_image_and_gif(work):
    out = viva("edit", "still.png", "-i", "add a star", "-o", "still_out.png", "--model", "model",
               "--steps", "2", "--no-progress", cwd=work)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert read_image(work / "still_out.png").shape == (64, 64, 3)
    out = viva("edit", "in.mp4", "-i", "add a star", "-o", "out.gif", "--model", "model", "--steps", "2",
               "--fps", "10", "--no-progress", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "note: sampled 8 of 12 frames at 10 fps (source 12 fps)" in out.stdout
    info = probe_video(work / "out.gif")
    assert (info.num_frames, info.width, info.height) == (8, 64, 64)


BAD = {
    "missing input": (["missing.mp4", "-i", "x"], "not found"),
    "corrupt input": (["corrupt.mp4", "-i", "x"], "corrupt"),
    "truncated input": (["truncated.mp4", "-i", "x"], "truncated.mp4"),
    "empty instruction": (["in.mp4", "-i", "   "], "instruction is empty"),
    "missing reference": (["in.mp4", "-i", "x", "--ref", "nope.png"], "--ref: image not found"),
    "bad reference": (["in.mp4", "-i", "x", "--ref", "notimage.png"], "--ref:"),
    "reference is a folder": (["in.mp4", "-i", "x", "--ref", "model"], "is a folder"),
    "missing model": (["in.mp4", "-i", "x", "--model", "nomodel"], "does not exist"),
    "model without weights": (["in.mp4", "-i", "x", "--model", "no_weights"], "denoiser/model.safetensors is missing"),
    "model without index": (["in.mp4", "-i", "x", "--model", "no_index"], "no model_index.json"),
    "missing output folder": (["in.mp4", "-i", "x", "-o", "nodir/out.mp4"], "does not exist"),
    "unknown extension": (["in.mp4", "-i", "x", "-o", "out.xyz"], "unknown extension"),
    "output is a folder": (["in.mp4", "-i", "x", "-o", "model"], "unknown extension"),
    "video into an image": (["in.mp4", "-i", "x", "-o", "out.png"], "is an image"),
    "bad preview extension": (["in.mp4", "-i", "x", "--preview", "p.gif"], "preview"),
    "zero steps": (["in.mp4", "-i", "x", "--steps", "0"], "--steps"),
    "bad guidance": (["in.mp4", "-i", "x", "--guidance", "abc"], "invalid number"),
    "unknown device": (["in.mp4", "-i", "x", "--device", "quantum"], "unknown --device 'quantum'"),
    "vlm without a preset": (["in.mp4", "-i", "x", "--vlm", "model"], "go with --preset"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_inputs_exit_2_with_one_line_and_no_output(work, case):
    args, expected = BAD[case]
    args = list(args)
    if "--model" in args:
        i = args.index("--model")
        args = args[:i] + args[i + 2 :] if args[i + 1] is None else args
    else:
        args += ["--model", "model"]
    if "-o" not in args:
        args += ["-o", "bad_out.mp4"]
    if "--preview" not in args and case != "bad preview extension":
        args += ["--preview", "bad_preview.png"]
    before = set(os.listdir(work))
    out = viva("edit", *args, "--steps" if "--steps" not in args else "--seed", "2", "--no-progress", cwd=work)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    assert expected in lines[0], lines[0]
    assert set(os.listdir(work)) == before  # no output, preview or temporary file left


def test_offload_edits_the_same(work):
    """`--offload` (VAE and instructor kept in CPU memory, visiting --device per use) changes where weights
    live, not the result: the same frames as without it."""
    args = ["in.mp4", "-i", "make the square red", "--ref", "ref.png", "--model", "model", "--steps", "3", "--no-progress"]
    for name, extra in (("plain.mp4", []), ("offload.mp4", ["--offload"])):
        out = viva("edit", *args, "-o", name, *extra, cwd=work)
        assert out.returncode == 0, out.stderr
    assert np.array_equal(read_video(work / "plain.mp4")[0], read_video(work / "offload.mp4")[0])


def test_no_model_and_no_bundled_model_is_one_line(work, monkeypatch, capsys):
    """An install without the bundled model (e.g. a trimmed package) and no --model: exit 2, one line."""
    import viva.pipeline
    from viva.cli import main

    monkeypatch.setattr(viva.pipeline, "BUNDLED_MODEL", work / "no_such_model")
    code = main(["edit", str(work / "in.mp4"), "-i", "x", "-o", str(work / "never.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: no --model given and no bundled model; pass --model DIR", err
    assert not (work / "never.mp4").exists()
