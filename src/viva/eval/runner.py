"""The bench runner: edit every case, score it, write results; resumable.

    results = evaluate("identity", world_bench(cases=5), out="eval/identity")
    results = evaluate(VivaPipeline.from_pretrained(dir), bench, out="eval/mini", seed=0, batch_size=8)

Output folder (`out`; nothing is written when it is None):

    run.json          what the run is (bench identity, editor info and settings, seed); a run resumes only
                      into a folder whose run.json matches
    cases.jsonl       one line per scored case, appended (and fsynced) as cases finish: an interrupted run
                      continues where it stopped and never recomputes a case that has its line
    previews/<id>.png source / output / target rows at 4 frames (+ the reference), one per case
    charts/<metric>.png  a bar chart per metric, one bar per category (matplotlib)
    outputs/<id>/     (save_outputs) the editor's output frames, lossless PNGs: a `viva eval --outputs` folder
                      and the edits `viva judge --outputs` reads
    results.json      bench spec, editor, seed, per-case records, per-category and overall summaries
    results.md        the summary as a Markdown table (also returned by `markdown_table`)
    report.html       summary, per-category bar charts and per-case previews (a static page)

Each case gets the fixed noise seed `case_seed(seed, case id)`, so results do not depend on batching,
order, or resuming. results.json, results.md and report.html are written atomically.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from viva.errors import VivaUserError
from viva.io.atomic import atomic_write_bytes, replace_dir

from .bench import BenchCase, WorldBench, world_bench, write_frames
from .editors import as_editor
from .metrics import MIN_REGION_FRACTION, PRESERVE_DILATION, PSNR_CAP, QUALITY_NOISE_SCALE, aggregate, case_metrics

RUN_NAME = "run.json"
CASES_NAME = "cases.jsonl"
RESULTS_NAME = "results.json"
TABLE_NAME = "results.md"
REPORT_NAME = "report.html"
PREVIEWS_NAME = "previews"
OUTPUTS_NAME = "outputs"
PREVIEW_GAP = 2


def case_seed(seed: int, case_id: str) -> int:
    """The noise seed of one case: a pure function of the run seed and the case id."""
    return (int(seed) * 1_000_003 + zlib.crc32(case_id.encode())) % 2**31


def _bench_identity(bench: WorldBench) -> dict:
    spec = bench.spec()
    return {k: spec[k] for k in ("name", "version", "seed", "height", "width", "num_frames")}


# The output folder ----------------------------------------------------------------------------------


def read_records(path: Path) -> dict[str, dict]:
    """Records of a cases.jsonl by case id (a later line wins). A torn last line (the run was killed while
    writing it) is cut off the file, so that appending continues on a clean line."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    records = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise VivaUserError(f"{path} line {number} is not JSON; delete the file (or use --overwrite) to start again") from None
        records[record["id"]] = record
    return records


def _prepare_folder(out: Path, run: dict, overwrite: bool) -> dict[str, dict]:
    """Create or check the output folder; return the records already there."""
    if out.exists() and not out.is_dir():
        raise VivaUserError(f"cannot write results to {out}: it is a file; give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    run_path, cases_path = out / RUN_NAME, out / CASES_NAME
    if overwrite:
        for name in (CASES_NAME, RESULTS_NAME, TABLE_NAME, REPORT_NAME, RUN_NAME):
            (out / name).unlink(missing_ok=True)
    if run_path.is_file():
        try:
            previous = json.loads(run_path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != run:
            diff = "unreadable run.json" if not isinstance(previous, dict) else ", ".join(
                k for k in sorted(set(run) | set(previous)) if run.get(k) != previous.get(k)
            )
            raise VivaUserError(
                f"{out} holds results of another run (differs in: {diff}); pass another --out, or --overwrite to start again"
            )
    elif cases_path.exists():
        raise VivaUserError(f"{out} has {CASES_NAME} but no {RUN_NAME}; pass another --out, or --overwrite to start again")
    else:
        atomic_write_bytes(run_path, (json.dumps(run, indent=2, sort_keys=True) + "\n").encode())
    return read_records(cases_path)


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def preview_grid(case: BenchCase, output: np.ndarray, frames: int = 4) -> np.ndarray:
    """uint8 [H',W',3]: rows source / output / target (when there is one) at `frames` evenly spaced
    frames, plus the reference image right of the first row; PREVIEW_GAP px of gray between cells."""
    T, H, W = case.source.shape[:3]
    idx = sorted({round(k * (T - 1) / max(1, frames - 1)) for k in range(frames)})
    rows = [case.source, output] + ([case.target] if case.target is not None else [])
    cols = len(idx) + (case.reference is not None)
    g = PREVIEW_GAP
    grid = np.full((len(rows) * (H + g) + g, cols * (W + g) + g, 3), 40, np.uint8)
    for r, clip in enumerate(rows):
        for c, t in enumerate(idx):
            grid[g + r * (H + g) : g + r * (H + g) + H, g + c * (W + g) : g + c * (W + g) + W] = clip[t]
    if case.reference is not None:
        from viva.io import resize_center_crop

        ref = resize_center_crop(case.reference[None], H, W)[0]
        c = len(idx)
        grid[g : g + H, g + c * (W + g) : g + c * (W + g) + W] = ref
    return grid


# The run ----------------------------------------------------------------------------------------------


def evaluate(
    editor,
    bench: WorldBench | None = None,
    out: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    previews: bool = True,
    save_outputs: bool = False,
    overwrite: bool = False,
) -> dict:
    """Score `editor` on `bench` (default: the full world bench) and return the results dict (see the
    module docstring; written to `out` when given, resuming what is there).

    editor: an editor object (`viva.eval.editors`), a VivaPipeline, "identity" / "ground_truth", or
    `fn(case, seed) -> frames`. batch_size: cases handed to the editor at once. previews: write one PNG
    per case (only with `out`). save_outputs: keep each output clip in out/outputs/<id>/ (part of the run's
    identity: a run resumes only with the same setting)."""
    bench = world_bench() if bench is None else bench
    editor = as_editor(editor)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise VivaUserError(f"--seed must be a whole number >= 0, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VivaUserError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    if hasattr(editor, "check"):
        editor.check(bench.ids)
    run = {"bench": _bench_identity(bench), "editor": editor.info(), "seed": int(seed)}
    folder = None if out is None else Path(out)
    if save_outputs:
        if folder is None:
            raise VivaUserError("saving outputs needs an output folder (--out DIR)")
        run["save_outputs"] = True
    done: dict[str, dict] = {}
    if folder is not None:
        done = _prepare_folder(folder, run, overwrite)
        for name, wanted in ((PREVIEWS_NAME, previews), (OUTPUTS_NAME, save_outputs)):
            if wanted:
                (folder / name).mkdir(exist_ok=True)
    wanted = set(bench.ids)
    have = {i for i in done if i in wanted}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(bench), initial=len(have), desc=f"eval {editor.name}", unit="case", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        chunk: list[BenchCase] = []
        todo = bench.iter_cases(skip=have)
        while True:
            case = next(todo, None)
            if case is not None:
                chunk.append(case)
            if chunk and (case is None or len(chunk) == batch_size):
                new = _score_chunk(editor, chunk, seed, folder, previews, save_outputs)
                if folder is not None:
                    _append(folder / CASES_NAME, new)
                done.update({r["id"]: r for r in new})
                if bar is not None:
                    bar.update(len(new))
                chunk = []
            if case is None:
                break
    finally:
        if bar is not None:
            bar.close()

    records = [done[i] for i in bench.ids]
    results = build_results(bench, editor.info(), seed, records)
    if folder is not None:
        write_reports(results, folder)
    return results


def _score_chunk(editor, chunk: list[BenchCase], seed: int, folder: Path | None, previews: bool,
                 save_outputs: bool) -> list[dict]:
    seeds = [case_seed(seed, c.id) for c in chunk]
    start = time.perf_counter()
    outputs = editor.edit(chunk, seeds)
    seconds = (time.perf_counter() - start) / len(chunk)
    if len(outputs) != len(chunk):
        raise RuntimeError(f"editor {editor.name} returned {len(outputs)} clips for {len(chunk)} cases")
    records = []
    for case, s, output in zip(chunk, seeds, outputs):
        record = {
            "id": case.id,
            "category": case.category,
            "op_category": case.op_category,
            "clause_categories": case.clause_categories,
            "held_out": case.held_out,
            "instruction": case.instruction,
            "seed": s,
            "seconds": round(seconds, 6),
            **case_metrics(case, output),
        }
        if folder is not None and previews:
            from viva.io import write_image

            write_image(folder / PREVIEWS_NAME / f"{case.id}.png", preview_grid(case, output))
        if folder is not None and save_outputs:
            _save_output(folder / OUTPUTS_NAME, case.id, output)
        records.append(record)
    return records


def _save_output(outputs: Path, case_id: str, frames: np.ndarray) -> None:
    """outputs/<id>/NNNN.png, written into a temporary folder and swapped in (a rerun replaces it whole)."""
    tmp = outputs / f".{case_id}.{secrets.token_hex(4)}.tmp"
    try:
        write_frames(tmp, frames)
        replace_dir(tmp, outputs / case_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_results(bench: WorldBench, editor_info: dict, seed: int, records: list[dict]) -> dict:
    """The results dict: bench spec, editor, seed, metric constants, summaries and per-case records."""
    from viva import __version__

    per, overall = aggregate(records, bench.categories)
    return {
        "viva_version": __version__,
        "bench": bench.spec(),
        "editor": editor_info,
        "seed": int(seed),
        "metrics": {
            "definitions": "docs/metrics.md",
            "psnr_cap_db": PSNR_CAP,
            "preserve_dilation_px": PRESERVE_DILATION,
            "min_region_fraction": MIN_REGION_FRACTION,
            "quality_noise_scale": QUALITY_NOISE_SCALE,
        },
        "categories": per,
        "overall": overall,
        "cases": records,
    }


def write_reports(results: dict, folder: str | os.PathLike) -> None:
    """results.json, results.md, the chart PNGs (charts/) and report.html into `folder` (each atomically)."""
    from .report import html_report, markdown_report, write_charts

    folder = Path(folder)
    atomic_write_bytes(folder / RESULTS_NAME, (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(folder / TABLE_NAME, markdown_report(results).encode())
    previews = PREVIEWS_NAME if (folder / PREVIEWS_NAME).is_dir() else None
    charts = write_charts(results, folder).name
    atomic_write_bytes(folder / REPORT_NAME, html_report(results, previews=previews, charts=charts).encode())
