"""`viva judge` against a real local HTTP server playing the VLM judge (tests/fake_judge.py, `judge` fixture in
conftest.py), on the world bench's judge manifest and the outputs `viva eval --save-outputs` keeps."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from viva.cli import main
from viva.eval import world_bench
from viva.io import read_video
from viva.rewards.judge import CRITERIA, REFERENCE_CRITERIA

from fake_judge import scores_answer  # tests/fake_judge.py

CATEGORIES = "add,ref_add"


def viva(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """An exported bench (with judge.jsonl) and an identity run that kept its outputs."""
    root = tmp_path_factory.mktemp("judge_cli")
    common = ["--cases", "1", "--categories", CATEGORIES, "--no-progress"]
    assert main(["eval", "--export-bench", str(root / "bench"), *common]) == 0
    assert main(["eval", "--baseline", "identity", "--out", str(root / "run"), "--save-outputs", *common]) == 0
    return root


def test_world_bench_run_is_judged_and_resumes(judge, bench_run, tmp_path, capsys, monkeypatch):
    root = bench_run
    # The kept outputs are the editor's exact frames (identity: the sources), one folder per case.
    for case in world_bench(cases=1, categories=CATEGORIES).cases:
        frames, _ = read_video(root / "run" / "outputs" / case.id)
        np.testing.assert_array_equal(frames, case.source)
    monkeypatch.setenv("VIVA_TEST_JUDGE_KEY", "sk-local")
    out = tmp_path / "judged.jsonl"
    args = ["judge", root / "bench" / "judge.jsonl", "--url", judge.url, "--model", "vlm", "--key-env",
            "VIVA_TEST_JUDGE_KEY", "--outputs", root / "run" / "outputs", "--frames", "2", "--out", out, "--no-progress"]
    code, stdout, err = viva(capsys, *args)
    assert code == 0, err
    assert len(judge.requests) == 2
    assert all(r["headers"]["Authorization"] == "Bearer sk-local" and r["body"]["model"] == "vlm" for r in judge.requests)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["add-0000", "ref_add-0000"]
    assert set(records[0]["scores"]) == set(CRITERIA) and set(records[1]["scores"]) == set(REFERENCE_CRITERIA)
    assert records[1]["meta"] == {"op_category": "ref_add", "held_out": False}
    summary = json.loads((tmp_path / "judged.summary.json").read_text())
    assert summary["overall"]["count"] == 2 and summary["by_category"]["ref_add"]["subject_similarity"] == 7.0
    assert "| ref_add | 1 | 7.00 | 7.00 | 7.00 | 7.00 | 7.00 | 0 |" in stdout and f"wrote {out}" in stdout
    # Run again: nothing is asked again; a lost line is asked again, alone.
    code, _, err = viva(capsys, *args)
    assert code == 0 and len(judge.requests) == 2, err
    out.write_text(out.read_text().splitlines()[0] + "\n")
    code, _, err = viva(capsys, *args)
    assert code == 0 and len(judge.requests) == 3, err
    assert "- subject_similarity:" in judge.requests[-1]["body"]["messages"][1]["content"][-1]["text"]  # ref_add's
    assert len(out.read_text().splitlines()) == 2


def test_judge_failures_are_one_line_exit_2(judge, bench_run, tmp_path, capsys, monkeypatch):
    root = bench_run
    base = ["judge", root / "bench" / "judge.jsonl", "--model", "vlm", "--outputs", root / "run" / "outputs",
            "--frames", "2", "--retries", "1", "--timeout", "5", "--no-progress"]
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.delenv("VIVA_TEST_NO_KEY", raising=False)
    cases = [
        (["--url", closed, "--out", tmp_path / "a.jsonl"], "cannot reach the judge"),
        (["--url", judge.url, "--out", tmp_path / "b.jsonl", "--key-env", "VIVA_TEST_NO_KEY"],
         "environment variable VIVA_TEST_NO_KEY"),
        (["--url", judge.url, "--out", tmp_path / "c.txt"], "give a name ending in .jsonl"),
        (["--url", judge.url, "--out", tmp_path / "d.jsonl", "--frames", "0"], "--frames must be at least 1"),
        (["--url", "localhost:8000", "--out", tmp_path / "e.jsonl"], "must start with http:// or https://"),
    ]
    for extra, message in cases:
        code, _, err = viva(capsys, *base, *extra)
        assert code == 2 and err.count("\n") == 1 and message in err, (message, err)
    assert judge.requests == []
    # Unreadable answers: the case is named; with --skip-errors it is recorded and the run goes on.
    judge.script = [(200, "I cannot judge this.", 0.0, {})] * 2
    code, _, err = viva(capsys, *base, "--url", judge.url, "--out", tmp_path / "f.jsonl")
    assert code == 2 and err.count("\n") == 1 and "case 'add-0000'" in err and "could not read scores" in err, err
    judge.script = [(200, "I cannot judge this.", 0.0, {})] * 2 + [(200, scores_answer, 0.0, {})]
    code, out, err = viva(capsys, *base, "--url", judge.url, "--out", tmp_path / "g.jsonl", "--skip-errors")
    assert code == 0 and "| **overall** | 1 |" in out and out.split("| **overall** |")[1].split("\n")[0].endswith("| 1 |"), out
    # Without the outputs folder, cases without "edited" are named.
    code, _, err = viva(capsys, "judge", root / "bench" / "judge.jsonl", "--url", judge.url, "--model", "vlm",
                        "--out", tmp_path / "h.jsonl")
    assert code == 2 and 'has no "edited" clip' in err, err


def test_save_outputs_is_part_of_the_run(bench_run, capsys):
    code, _, err = viva(capsys, "eval", "--baseline", "identity", "--out", bench_run / "run", "--cases", "1",
                        "--categories", CATEGORIES, "--no-progress")
    assert code == 2 and "differs in: save_outputs" in err, err
