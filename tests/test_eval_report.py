"""viva eval's reports: matplotlib chart PNGs linked from report.html, and the page rendered in headless
Chromium (the system's chromium driven by Playwright; `chromium` fixture in conftest.py) to a PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from viva.browser import screenshot
from viva.cli import main
from viva.errors import VivaUserError
from viva.eval import evaluate, world_bench
from viva.eval.metrics import METRICS
from viva.eval.report import bar_chart_png


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An identity run on 2 categories (one with reference images) with its report folder."""
    out = tmp_path_factory.mktemp("report") / "run"
    evaluate("identity", world_bench(cases=1, categories="add,ref_add"), out)
    return out


def test_one_chart_png_per_metric_linked_from_the_page(report):
    page = (report / "report.html").read_text()
    assert "<svg" not in page
    for key, _, _ in METRICS:
        chart = report / "charts" / f"{key}.png"
        with Image.open(chart) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 100
        assert f"src='charts/{key}.png'" in page
    # Bars are drawn where values exist, nothing where a metric does not apply; negatives go left.
    values = {"a": 1.0, "b": None, "c": -0.5}
    image = np.asarray(Image.open(io.BytesIO(bar_chart_png("t", values, "{:.2f}"))).convert("RGB"))
    blue = (np.abs(image.astype(int) - (0x4A, 0x7B, 0xD0)).sum(-1) < 30).sum()
    red = (np.abs(image.astype(int) - (0xD0, 0x6A, 0x4A)).sum(-1) < 30).sum()
    assert blue > 500 and red > 200


def test_screenshot_loads_every_image(chromium, report, tmp_path):
    shot = screenshot(report / "report.html", tmp_path / "page.png", width=1000)
    assert shot["images"] == len(METRICS) + 2 and shot["broken_images"] == []  # the charts and two previews
    assert shot["width"] >= 1000 and Image.open(tmp_path / "page.png").size == (shot["width"], shot["height"])
    assert [p.name for p in tmp_path.iterdir()] == ["page.png"]  # written atomically: no temporary left
    with pytest.raises(VivaUserError, match="no such file"):
        screenshot(tmp_path / "none.html", tmp_path / "x.png")
    # A long report is cut to its top max_height pixels (a 450-case page is ~190k px tall).
    short = screenshot(report / "report.html", tmp_path / "top.png", width=1000, max_height=300)
    assert short["height"] == shot["height"] > 300 and short["shot_height"] == 300
    assert Image.open(tmp_path / "top.png").size == (shot["width"], 300)
    full, top = np.asarray(Image.open(tmp_path / "page.png")), np.asarray(Image.open(tmp_path / "top.png"))
    assert np.array_equal(full[:300], top)


def test_cli_renders_the_report_to_png(chromium, tmp_path, capsys):
    shot = tmp_path / "report.png"
    code = main(["eval", "--baseline", "identity", "--cases", "1", "--categories", "add,ref_add", "--out",
                 str(tmp_path / "run"), "--no-progress", "--report-png", str(shot)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"rendered the report to {shot}" in out and "did not load" not in out
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[1] == 1280 and pixels.shape[0] > 1000  # the whole page, not one viewport
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, charts and previews, not a blank page


@pytest.mark.parametrize("name, message", [("report.jpg", "give a file name ending in .png"),
                                           ("missing/report.png", "does not exist; create it first")])
def test_cli_report_png_errors_before_the_run(tmp_path, capsys, name, message):
    code = main(["eval", "--baseline", "identity", "--cases", "1", "--out", str(tmp_path / "run"),
                 "--report-png", str(tmp_path / name)])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()
