"""Reports of a results dict (see `viva.eval.runner`): a Markdown table and a static HTML page.

The HTML page needs nothing but a browser: the summary table, one bar chart per metric (inline SVG, one
bar per category) and a row per case with its preview PNG (previews/<id>.png, linked, not embedded).
"""

from __future__ import annotations

import html

from .metrics import METRICS

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


def _bar_chart(title: str, values: dict[str, float | None], fmt: str, top: float | None) -> str:
    """An inline SVG bar chart, one horizontal bar per category (scaled to `top` or the largest |value|)."""
    width, label_w, bar_w, row_h = 460, 130, 250, 18
    finite = [abs(v) for v in values.values() if v is not None]
    scale = top if top is not None else (max(finite) if finite else 1.0) or 1.0
    parts = [f'<svg width="{width}" height="{row_h * len(values) + 26}" role="img">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for k, (name, v) in enumerate(values.items()):
        y = 22 + k * row_h
        parts.append(f'<text x="0" y="{y + 12}" font-size="12">{html.escape(name)}</text>')
        if v is not None:
            w = max(0.0, min(1.0, abs(v) / scale)) * bar_w
            color = "#4a7bd0" if v >= 0 else "#d06a4a"
            parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 12}" font-size="12">{_cell(v, fmt)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CHART_TOPS = {"passed": 1.0, "clause_score": 1.0, "pres_ssim": 1.0, "fid_ssim": 1.0, "quality": 1.0,
               "pres_psnr": 100.0, "fid_psnr": 100.0, "temporal": None}

_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}th{background:#f0f0f0}td.num{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:18px}.fail{color:#b00}.pass{color:#070}img{image-rendering:pixelated;zoom:2}"""


def html_report(results: dict, previews: str | None = "previews") -> str:
    """A static HTML page of `results`; `previews`: the folder (relative to the page) of case PNGs, or None."""
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
    out.append("<h2>Per category</h2><div class='charts'>")
    for key, label, fmt in METRICS:
        values = {c: s.get(key) for c, s in results["categories"].items()}
        out.append(_bar_chart(label, values, fmt, _CHART_TOPS.get(key)))
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
        image = (f"<img loading='lazy' src='{esc(previews)}/{esc(r['id'])}.png' alt='{esc(r['id'])}' "
                 ">") if previews else ""
        out.append(f"<tr><td>{esc(r['id'])}<br>{esc(r['op_category'])}</td><td>{esc(r['instruction'])}</td>"
                   f"<td>{verdict} {r['clause_score']:.2f}<br>{clauses}</td><td>{scores}</td><td>{image}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)
