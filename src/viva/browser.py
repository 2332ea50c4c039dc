"""Headless Chromium through Playwright's Python package, on a Chromium already installed on the machine
(Debian's `chromium` package, or the binary named by VIVA_CHROMIUM): Playwright never downloads a browser
of its own here, and pages may not reach any host.

    from viva.browser import screenshot
    screenshot("eval/identity/report.html", "report.png")   # the whole page, images loaded

Used by `viva eval --report-png` and by the browser tests (tests/conftest.py's `browser` fixture).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from viva.errors import VivaUserError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [  # as root in a container, with no network: no sandbox, no background traffic
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--autoplay-policy=no-user-gesture-required",
]
NO_CHROMIUM = "no Chromium found: apt-get install chromium, or set VIVA_CHROMIUM to a Chromium binary"
# Web requests to any host but this machine (pages' routes refuse them).
OUTSIDE = re.compile(r"^(https?|wss?)://(?!(127\.0\.0\.1|localhost)[:/])")


def find_chromium() -> str | None:
    """The Chromium binary to drive: $VIVA_CHROMIUM, else the first of CHROMIUM_NAMES on PATH; None if none."""
    names = [os.environ.get("VIVA_CHROMIUM")] + [shutil.which(n) for n in CHROMIUM_NAMES]
    return next((n for n in names if n and Path(n).is_file()), None)


def launch(playwright, headless: bool = True):
    """A Chromium browser from a started `sync_playwright()`; VivaUserError when there is no Chromium."""
    executable = find_chromium()
    if executable is None:
        raise VivaUserError(NO_CHROMIUM)
    return playwright.chromium.launch(executable_path=executable, headless=headless, args=CHROMIUM_ARGS)


# Every <img> loaded (lazy ones made eager first); resolves to [number of images, sources that failed].
_LOAD_IMAGES = """async () => {
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
  return [images.length, images.filter(img => !img.naturalWidth).map(img => img.getAttribute("src"))];
}"""


def screenshot(page_path: str | os.PathLike, png_path: str | os.PathLike, width: int = 1280,
               timeout: float = 60.0, max_height: int | None = None) -> dict:
    """Render the local HTML file `page_path` in headless Chromium and write a full-page PNG to `png_path`
    (atomically); `max_height`: at most the top that many CSS pixels of a longer page. Returns {"width",
    "height", "shot_height", "images", "broken_images"}: the page size in CSS pixels, the height of the PNG,
    the number of <img> elements and the sources of those that did not load. Requests to other hosts are
    refused. Playwright's sync API: not from inside a running asyncio loop or another sync_playwright()."""
    from viva.io.atomic import atomic_output

    page_path, png_path = Path(page_path), Path(png_path)
    if not page_path.is_file():
        raise VivaUserError(f"cannot render {page_path}: no such file")
    if png_path.suffix.lower() != ".png":
        raise VivaUserError(f"cannot write {png_path}: the screenshot is a PNG; give a name ending in .png")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise VivaUserError("rendering a page needs Playwright's Python package: pip install playwright "
                            "(it drives the system Chromium; no browser download)") from None
    with atomic_output(png_path) as tmp, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.set_default_timeout(timeout * 1000)
            page.route(OUTSIDE, lambda route: route.abort())
            page.goto(page_path.resolve().as_uri())
            images, broken = page.evaluate(_LOAD_IMAGES)
            size = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            shot_height = size[1] if max_height is None else min(size[1], max_height)
            clip = None if shot_height == size[1] else {"x": 0, "y": 0, "width": size[0], "height": shot_height}
            page.screenshot(path=str(tmp), full_page=True, type="png", clip=clip)
        finally:
            browser.close()
    return {"width": size[0], "height": size[1], "shot_height": shot_height, "images": images,
            "broken_images": broken}
