"""viva.eval: the world bench, metrics, the resumable runner, baselines, --outputs scoring and `viva eval`."""

import json

import numpy as np
import pytest
import torch

from viva.cli import main
from viva.errors import VivaUserError
from viva.eval import (
    BENCH_CATEGORIES,
    FunctionEditor,
    OutputsEditor,
    PipelineEditor,
    evaluate,
    export_bench,
    make_case,
    psnr,
    ssim,
    ssim_map,
    world_bench,
)
from viva.eval.bench import PRIMITIVE_BENCH_CATEGORIES
from viva.eval.metrics import PSNR_CAP, preservation, quality, temporal_change
from viva.eval.runner import CASES_NAME


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _metrics(record: dict) -> dict:
    """A record without its timing (the only field that may differ between equal runs)."""
    return {k: v for k, v in record.items() if k != "seconds"}


@pytest.fixture(scope="module")
def small():
    """Three cases of every category."""
    return world_bench(cases=3)


@pytest.fixture(scope="module")
def baselines(small):
    return {name: evaluate(name, small) for name in ("identity", "ground_truth")}


# ------------------------------------------------------------------------------------------------ bench


def test_bench_is_deterministic_with_fixed_categories_and_counts(small):
    assert len(small) == 3 * len(BENCH_CATEGORIES) == 27
    counts = {c: sum(case.category == c for case in small.cases) for c in BENCH_CATEGORIES}
    assert counts == {c: 3 for c in BENCH_CATEGORIES}
    assert small.ids[:3] == ["add-0000", "add-0001", "add-0002"]
    by_id = {c.id: c for c in small.cases}
    assert [by_id[f"attribute-000{i}"].op_category for i in range(3)] == ["color", "size", "color"]
    assert [by_id[f"global-000{i}"].op_category for i in range(3)] == ["background", "weather", "style"]
    assert by_id["hybrid-0000"].op_category == "hybrid" and len(by_id["hybrid-0000"].clause_categories) >= 2
    assert all(c.held_out == (c.category == "heldout_phrasing") for c in small.cases)
    assert all(c.reference is not None for c in small.cases if c.category.startswith("ref_"))
    assert all(c.source.shape == (8, 64, 64, 3) and c.target is not None for c in small.cases)
    # A fresh generation (cache cleared) gives the same cases; a smaller bench is a prefix of a larger one.
    before = [(c.instruction, c.source.copy(), c.target.copy(), c.mask.copy()) for c in small.cases[::5]]
    make_case.cache_clear()
    again = world_bench(cases=3).cases[::5]
    for (text, src, tgt, mask), case in zip(before, again):
        assert case.instruction == text
        np.testing.assert_array_equal(case.source, src)
        np.testing.assert_array_equal(case.target, tgt)
        np.testing.assert_array_equal(case.mask, mask)
    assert set(world_bench(cases=2, categories="remove,add").ids) == {"add-0000", "add-0001", "remove-0000", "remove-0001"}
    with pytest.raises(VivaUserError, match="unknown bench category nope"):
        world_bench(cases=2, categories="add,nope")


# ---------------------------------------------------------------------------------------------- metrics


def test_psnr_and_ssim_sanity():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert psnr(a, a) == PSNR_CAP
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # Constant clips: every window has zero variance, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1).
    x, y = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-9)
    assert psnr(x, y) == pytest.approx(10 * np.log10(255**2 / 100))
    # Noise lowers SSIM; it is symmetric; a region restricts both.
    noisy = np.clip(a.astype(int) + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert 0.0 < ssim(a, noisy) < 0.99 and ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert ssim_map(a, noisy).shape == (2, 16, 16)
    region = np.zeros((2, 16, 16), bool)
    assert psnr(a, noisy, region) is None and ssim(a, noisy, region) is None


def test_preservation_ignores_the_dilated_edit_and_temporal_and_quality():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = src.copy()
    out[:, 10:14, 10:14] = 0  # an edit exactly inside the mask
    mask = np.zeros((3, 32, 32), np.uint8)
    mask[:, 11:13, 11:13] = 255  # 2 px smaller on each side: covered by the 2 px dilation
    assert preservation(src, out, mask) == (PSNR_CAP, pytest.approx(1.0))
    out[:, 0, 0] = 255 - src[:, 0, 0]  # a change outside counts
    assert preservation(src, out, mask)[0] < 60
    assert preservation(src, out, np.full((3, 32, 32), 255, np.uint8)) == (None, None)  # global edit
    assert temporal_change(src[:1]) is None
    still = np.repeat(src[:1], 3, axis=0)
    assert temporal_change(still) == 0.0 and temporal_change(src) > 50
    clean = make_case("add", 0).target
    assert quality(clean, clean)["quality"] == pytest.approx(1.0)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(clean.astype(float), (0, 1, 1, 0)).round().astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    assert quality(blurred, clean)["quality"] < 0.7 and quality(noisy, clean)["quality"] < 0.6


# -------------------------------------------------------------------------------------------- baselines


def test_identity_preserves_perfectly_and_follows_nothing(baselines):
    res = baselines["identity"]
    for r in res["cases"]:
        assert not r["passed"], r["id"]
        assert r["temporal"] == 0.0
        if r["category"] != "global":
            assert r["pres_psnr"] == PSNR_CAP and r["pres_ssim"] == pytest.approx(1.0)
    assert res["categories"]["global"]["pres_psnr"] is None  # weather/style edits touch every pixel
    assert res["overall"]["passed"] == 0.0 and res["overall"]["n"] == 27


def test_ground_truth_passes_and_matches_itself(baselines):
    res = baselines["ground_truth"]
    for c in PRIMITIVE_BENCH_CATEGORIES:
        assert res["categories"][c]["passed"] >= 0.99, c
    assert res["overall"]["passed"] >= 0.99
    for r in res["cases"]:
        assert r["fid_psnr"] == PSNR_CAP and r["fid_ssim"] == pytest.approx(1.0) and r["quality"] == pytest.approx(1.0)
        assert r["pres_psnr"] is None or r["pres_psnr"] > 50


# ----------------------------------------------------------------------------------------------- runner


class Counting:
    """An editor returning the target, counting cases, optionally interrupting after `stop` cases."""

    name = "counting"

    def __init__(self, stop=None):
        self.seen, self.stop = [], stop

    def info(self):
        return {"kind": "function", "name": self.name}

    def edit(self, cases, seeds):
        if self.stop is not None and len(self.seen) >= self.stop:
            raise KeyboardInterrupt
        self.seen += [c.id for c in cases]
        return [np.array(c.target) for c in cases]


def test_resume_continues_where_it_stopped(tmp_path):
    bench = world_bench(cases=2, categories="add,attribute,ref_add")
    first = Counting(stop=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate(first, bench, tmp_path / "run", batch_size=1)
    assert len(first.seen) == 4
    lines = (tmp_path / "run" / CASES_NAME).read_text().splitlines()
    assert len(lines) == 4 and not (tmp_path / "run" / "results.json").exists()
    with open(tmp_path / "run" / CASES_NAME, "a") as f:
        f.write('{"id": "torn')  # killed while writing a line: cut off and recomputed
    second = Counting()
    resumed = evaluate(second, bench, tmp_path / "run", batch_size=4)
    assert second.seen == bench.ids[4:]
    whole = evaluate(Counting(), bench, tmp_path / "whole", batch_size=3)
    assert [_metrics(r) for r in resumed["cases"]] == [_metrics(r) for r in whole["cases"]]
    assert resumed["categories"] == whole["categories"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["bench"]["version"] == 1 and saved["cases"][0]["id"] == "add-0000"
    assert "| add | 2 |" in (tmp_path / "run" / "results.md").read_text()
    assert "ref_add-0001.png" in (tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "previews" / "ref_add-0001.png").is_file()
    # A third run recomputes nothing; another editor may not write into this folder.
    third = Counting()
    evaluate(third, bench, tmp_path / "run")
    assert third.seen == []
    with pytest.raises(VivaUserError, match="holds results of another run"):
        evaluate("identity", bench, tmp_path / "run")


def test_tiny_pipeline_runs_through_the_runner_batch_independent(tmp_path):
    from viva.models.tiny import build_tiny_editor
    from viva.pipeline import VivaPipeline

    bench = world_bench(cases=1, categories="add,global,ref_replace")
    editor = PipelineEditor(VivaPipeline(build_tiny_editor(seed=0, vlm=True)), steps=2)
    one = evaluate(editor, bench, tmp_path / "b1", batch_size=1)
    three = evaluate(editor, bench, batch_size=3)
    assert [_metrics(r) for r in one["cases"]] == [_metrics(r) for r in three["cases"]]
    assert one["editor"]["steps"] == 2 and one["overall"]["n"] == 3
    assert 0.0 <= one["overall"]["clause_score"] <= 1.0 and one["overall"]["fid_psnr"] < PSNR_CAP


# ------------------------------------------------------------------------------------- outputs and CLI


def test_exported_ground_truth_scores_like_the_baseline(tmp_path):
    bench = world_bench(cases=1)
    export_bench(bench, tmp_path / "bench", targets=True)
    lines = [json.loads(x) for x in (tmp_path / "bench" / "manifest.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == bench.ids
    ref = next(x for x in lines if x["category"] == "ref_add")
    assert (tmp_path / "bench" / ref["reference"]).is_file() and (tmp_path / "bench" / ref["video"]).is_file()
    from viva.io import read_video

    frames, _ = read_video(tmp_path / "bench" / lines[0]["video"])
    assert psnr(frames, bench.cases[0].source) > 25  # H.264 yuv420p: lossy
    frames, _ = read_video(tmp_path / "bench" / lines[0]["frames"])
    np.testing.assert_array_equal(frames, bench.cases[0].source)  # PNG frames: lossless
    scored = evaluate(OutputsEditor(tmp_path / "bench" / "targets"), bench)
    truth = evaluate("ground_truth", bench)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in scored["cases"]] == [strip(r) for r in truth["cases"]]
    (tmp_path / "partial").mkdir()
    with pytest.raises(VivaUserError, match="no result for 9 of 9 cases"):
        evaluate(OutputsEditor(tmp_path / "partial"), bench)


def _run(capsys, *args):
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_scores_baselines_outputs_and_a_model(tmp_path, capsys):
    code, out, err = _run(capsys, "--export-bench", str(tmp_path / "bench"), "--with-targets", "--cases", "1",
                          "--categories", "add,hybrid", "--no-progress")
    assert code == 0 and "wrote 2 cases" in out, err
    code, out, err = _run(capsys, "--outputs", str(tmp_path / "bench" / "targets"), "--cases", "1", "--categories",
                          "add,hybrid", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, err
    assert "| add | 1 | 100.0% |" in out and f"wrote {tmp_path / 'o' / 'results.json'}" in out
    code, out, err = _run(capsys, "--baseline", "identity", "--cases", "1", "--categories", "remove",
                          "--out", str(tmp_path / "i"), "--no-progress")
    assert code == 0 and "| remove | 1 | 0.0% |" in out, err

    from viva.models.tiny import save_tiny_editor

    save_tiny_editor(tmp_path / "model", seed=0)
    code, out, err = _run(capsys, "--model", str(tmp_path / "model"), "--steps", "2", "--cases", "1", "--categories",
                          "ref_add", "--out", str(tmp_path / "m"), "--no-progress", "--batch-size", "2")
    assert code == 0 and "| ref_add | 1 |" in out, err
    assert json.loads((tmp_path / "m" / "results.json").read_text())["editor"]["steps"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--outputs", "{tmp}/missing"], "--outputs folder {tmp}/missing does not exist"),
        (["--model", "{tmp}/missing"], "model folder {tmp}/missing does not exist"),
        (["--baseline", "identity", "--cases", "0"], "--cases must be at least 1"),
        (["--baseline", "identity", "--steps", "4"], "--steps only apply to a model"),
        (["--baseline", "identity", "--categories", "add,nope"], "unknown bench category nope"),
        (["--with-targets"], "--with-targets goes with --export-bench"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = _run(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "out").exists()


def test_function_editor_takes_floats_and_other_sizes():
    bench = world_bench(cases=1, categories="remove")
    exact = evaluate(FunctionEditor(lambda case, seed: case.target / 255.0), bench)  # float in [0, 1]
    assert exact["cases"][0]["passed"] and exact["cases"][0]["fid_psnr"] == PSNR_CAP
    big = evaluate(FunctionEditor(lambda case, seed: case.target.repeat(2, axis=1).repeat(2, axis=2)[::2]), bench)
    assert big["editor"]["name"] == "function" and big["cases"][0]["fid_psnr"] > 25  # 4 frames, 128x128: fitted
