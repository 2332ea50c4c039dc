"""Reports of a results dict (see `viva.eval.runner`): a Markdown table and a static HTML page.

The HTML page needs nothing but a browser: the summary table, one bar chart per metric (a matplotlib PNG,
charts/<metric>.png, one bar per category) and a row per case with its preview PNG (previews/<id>.png); the
images are files next to the page, linked by relative paths.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

from viva.io.atomic import atomic_write_bytes

from .metrics import METRICS, PSNR_CAP

_DASH = "–"


def _cell(value, fmt: str) -> str:
    return _DASH if value is None else fmt.format(value)


def markdown_table(results: dict) -> str:
    """| category | n | pass | clause | pres PSNR | ... | with one row per category and an overall row."""
    header = ["category", "n"] + [label for _, label, _ in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    rows = list(results["categories"].items()) + [("**overall**", results["overall"])]
    for name, summary in rows:
        cells = [name, str(summary["n"])] + [_cell(summary.get(key), fmt) for key, _, fmt in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _describe(results: dict) -> str:
    bench, editor = results["bench"], results["editor"]
    settings = ", ".join(f"{k} {v}" for k, v in editor.items() if k not in ("kind", "name"))
    return (
        f"bench {bench['name']} v{bench['version']} ({bench['cases_per_category']} cases per category, "
        f"{bench['num_cases']} in all, {bench['width']}x{bench['height']}x{bench['num_frames']}); "
        f"editor {editor['name']} ({editor['kind']}{', ' + settings if settings else ''}); seed {results['seed']}"
    )


def markdown_report(results: dict) -> str:
    """A short Markdown document: what was run, the table, where the metrics are defined."""
    return (
        f"# viva eval: {results['editor']['name']}\n\n{_describe(results)}\n\n{markdown_table(results)}\n"
        f"pass: verifier pass rate; clause: mean clause score; pres: output vs source outside the dilated edit "
        f"mask; fid: output vs ground-truth target; temporal: frame-to-frame change minus the source's (levels); "
        f"quality: sharpness/cleanliness proxy. {_DASH}: does not apply. Definitions: docs/metrics.md.\n"
    )


# Top of each chart's axis (None: the largest value); PSNR is capped at metrics.PSNR_CAP.
_CHART_TOPS = {"passed": 1.0, "clause_score": 1.0, "pres_ssim": 1.0, "fid_ssim": 1.0, "quality": 1.0,
               "pres_psnr": PSNR_CAP, "fid_psnr": PSNR_CAP, "temporal": None}
CHARTS_NAME = "charts"


def bar_chart_png(title: str, values: dict[str, float | None], fmt: str, top: float | None = None) -> bytes:
    """A PNG (bytes) of one horizontal bar per category, labelled with its value ("–" where the metric does
    not apply); the axis runs from 0 to `top` (default: the largest |value|), negative values to the left.

    matplotlib is imported here (not at module import, so that `viva --help` stays fast) and drawn with the
    Agg canvas directly: no pyplot, no global backend, safe in threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(values)
    nums = [0.0 if v is None else float(v) for v in values.values()]
    fig = Figure(figsize=(4.6, 0.32 * len(names) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), nums, color=["#4a7bd0" if v >= 0 else "#d06a4a" for v in nums], height=0.7)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.invert_yaxis()  # first category on top, as in the table
    hi = top if top is not None else (max(abs(v) for v in nums) if nums else 0.0) or 1.0
    lo = min(nums + [0.0])
    left = min(lo * 1.3, -0.3 * hi) if lo < 0 else 0.0
    ax.set_xlim(left, hi * 1.3)  # room for the value labels; ticks only up to `hi`
    ax.set_xticks([t for t in ax.get_xticks() if left - 1e-9 <= t <= hi * (1 + 1e-9)])
    ax.axvline(0.0, color="#888", lw=0.6)
    for k, (v, raw) in enumerate(zip(nums, values.values())):
        ax.text(max(v, 0.0) + 0.02 * hi, k, _cell(raw, fmt), va="center", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def chart_name(key: str) -> str:
    """The file name of a metric's chart in CHARTS_NAME/."""
    return f"{key}.png"


def write_charts(results: dict, folder: str | os.PathLike) -> Path:
    """One bar chart PNG per metric (a bar per category) into `folder`/charts/ (each written atomically)."""
    charts = Path(folder) / CHARTS_NAME
    charts.mkdir(parents=True, exist_ok=True)
    for key, label, fmt in METRICS:
        values = {c: s.get(key) for c, s in results["categories"].items()}
        title = f"{label} (dB)" if key.endswith("_psnr") else label
        atomic_write_bytes(charts / chart_name(key), bar_chart_png(title, values, fmt, _CHART_TOPS.get(key)))
    return charts


_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}th{background:#f0f0f0}td.num{text-align:right}td.scores{white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:18px}.fail{color:#b00}.pass{color:#070}img.preview{image-rendering:pixelated;zoom:2}"""


def html_report(results: dict, previews: str | None = "previews", charts: str | None = CHARTS_NAME) -> str:
    """A static HTML page of `results`. previews, charts: the folders (relative to the page) of the case
    PNGs and of the chart PNGs (`write_charts`), or None to leave them out."""
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>viva eval: {esc(results['editor']['name'])}"
           f"</title><style>{_STYLE}</style></head><body>",
           f"<h1>viva eval: {esc(results['editor']['name'])}</h1><p>{esc(_describe(results))}</p>"]
    # 1. Summary table.
    head = "".join(f"<th>{esc(label)}</th>" for _, label, _ in METRICS)
    out.append(f"<table><tr><th>category</th><th>n</th>{head}</tr>")
    rows = list(results["categories"].items()) + [("overall", results["overall"])]
    for name, s in rows:
        cells = "".join(f"<td class='num'>{_cell(s.get(k), f)}</td>" for k, _, f in METRICS)
        out.append(f"<tr><td>{esc(name)}</td><td class='num'>{s['n']}</td>{cells}</tr>")
    out.append("</table><p>Definitions of every metric: docs/metrics.md.</p>")
    # 2. Bar charts, one per metric.
    if charts:
        out.append("<h2>Per category</h2><div class='charts'>")
        for key, label, _ in METRICS:
            out.append(f"<img class='chart' src='{esc(charts)}/{esc(chart_name(key))}' alt='{esc(label)} per category'>")
        out.append("</div>")
    # 3. Cases.
    out.append("<h2>Cases</h2><p>Preview rows: source, output, target; the reference image right of the source."
               "</p><table><tr><th>case</th><th>instruction</th><th>verdict</th><th>scores</th><th>preview</th></tr>")
    for r in results["cases"]:
        verdict = "<span class='pass'>pass</span>" if r["passed"] else "<span class='fail'>fail</span>"
        clauses = "<br>".join(f"{esc(n)} {v:.2f}" for n, v in r.get("clauses", {}).items())
        scores = (f"pres {_cell(r.get('pres_psnr'), '{:.1f}')} dB / {_cell(r.get('pres_ssim'), '{:.3f}')}<br>"
                  f"fid {_cell(r.get('fid_psnr'), '{:.1f}')} dB / {_cell(r.get('fid_ssim'), '{:.3f}')}<br>"
                  f"quality {_cell(r.get('quality'), '{:.3f}')}")
        image = (f"<img class='preview' loading='lazy' src='{esc(previews)}/{esc(r['id'])}.png' alt='{esc(r['id'])}' "
                 ">") if previews else ""
        out.append(f"<tr><td>{esc(r['id'])}<br>{esc(r['op_category'])}</td><td>{esc(r['instruction'])}</td>"
                   f"<td>{verdict} {r['clause_score']:.2f}<br>{clauses}</td><td class='scores'>{scores}</td><td>{image}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)
