"""Evaluation: the world bench, per-case metrics, the runner and its reports.

    from viva.eval import world_bench, evaluate
    results = evaluate("identity", world_bench(cases=10), out="eval/identity")
    results["categories"]["add"]["passed"]   # verifier pass rate of the category

See `bench` (the fixed, versioned cases), `metrics` (definitions; also docs/metrics.md), `editors` (what
can be scored: baselines, a VivaPipeline, another system's output files), `runner` (output folder,
resuming), `report` (Markdown, HTML with matplotlib charts), `ablate` (the Table 2 ladder, `viva ablate`).
"""

from .bench import (
    BENCH_CATEGORIES,
    BENCH_VERSION,
    BenchCase,
    WorldBench,
    export_bench,
    load_bench,
    make_case,
    world_bench,
)
from .editors import FunctionEditor, GroundTruthEditor, IdentityEditor, OutputsEditor, PipelineEditor, as_editor
from .metrics import aggregate, case_metrics, psnr, ssim, ssim_map
from .report import markdown_table
from .runner import case_seed, evaluate

__all__ = [
    "BENCH_CATEGORIES",
    "BENCH_VERSION",
    "BenchCase",
    "FunctionEditor",
    "GroundTruthEditor",
    "IdentityEditor",
    "OutputsEditor",
    "PipelineEditor",
    "WorldBench",
    "aggregate",
    "as_editor",
    "case_metrics",
    "case_seed",
    "evaluate",
    "export_bench",
    "load_bench",
    "make_case",
    "markdown_table",
    "psnr",
    "ssim",
    "ssim_map",
    "world_bench",
]
