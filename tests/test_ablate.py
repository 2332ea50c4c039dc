"""`viva ablate`: the Table 2 ladder end to end on tiny models (the tiny SFT / Edit-GRPO configs of the trainer
tests), equal SFT compute per rung, the table beside the paper's, resuming, and user errors."""

from __future__ import annotations

import json

import pytest
import yaml

from viva.cli import main
from viva.eval.ablate import LADDER, select_rungs
from viva.errors import VivaUserError

from test_train_grpo import TINY_CONFIG as GRPO_TINY  # tests/test_train_grpo.py
from test_train_sft import TINY_CONFIG as SFT_TINY  # tests/test_train_sft.py


def test_ladder_trains_with_equal_compute_and_writes_the_table(tmp_path, capsys):
    (tmp_path / "sft.yaml").write_text(SFT_TINY)
    (tmp_path / "grpo.yaml").write_text(GRPO_TINY)
    out = tmp_path / "ablate"
    args = ["ablate", "--budget", "6", "--out", str(out), "--sft-config", str(tmp_path / "sft.yaml"),
            "--grpo-config", str(tmp_path / "grpo.yaml"), "--grpo-steps", "1", "--cases", "1",
            "--categories", "add,replace,remove", "--eval-steps", "2", "--no-progress",
            "--grpo", "prompts.max_sprites=3"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    ablation = json.loads((out / "ablation.json").read_text())
    rows = {r["rung"]: r for r in ablation["rows"]}
    assert list(rows) == [r.name for r in LADDER]
    assert {rows[n]["sft_samples"] for n in rows} == {6} and rows["grpo"]["grpo_steps"] == 1  # batch 3 x 2 steps
    assert rows["vanilla"]["paper_vlm_average"]["remove"] == 2.62
    table = (out / "ablation.md").read_text()
    assert "| + Edit-GRPO (full) | 6 | 1 |" in table and table in stdout
    # The rungs differ in what the ladder says (resolved configs of the runs).
    config = {n: yaml.safe_load((out / n / "train" / "config.yaml").read_text()) for n in ("vanilla", "masked", "image_mix")}
    assert config["vanilla"]["model"]["instructor_kind"] == "text" and config["vanilla"]["editor"]["mask_weight"] == 0
    assert config["masked"]["model"]["instructor_kind"] == "vlm" and config["masked"]["data"]["image_prob"] == 0
    assert config["image_mix"]["data"]["image_prob"] == 0.6 and config["image_mix"]["editor"]["mask_weight"] == 2.0
    # Again: nothing is trained or scored again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/train/model")}
    assert main(args) == 0 and stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/train/model")}


def test_bad_input_is_one_line(tmp_path, capsys):
    for extra, message in [(["--rungs", "vanilla,nope"], "unknown rung(s) nope"),
                           (["--sft", "editor.nope=1"], "nope")]:
        code = main(["ablate", "--budget", "6", "--out", str(tmp_path / "a"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "a").exists()
    assert [r.name for r in select_rungs("grpo")] == ["image_mix", "grpo"]
    with pytest.raises(VivaUserError, match="--budget must be at least 1"):
        from viva.eval.ablate import run_ablation

        run_ablation(tmp_path / "b", 0)
