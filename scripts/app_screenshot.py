"""Start `viva app` (the bundled model unless --model), pick a bundled sample in headless Chromium, run the
edit and save a screenshot of the page, to look at or to put in docs.

    .venv/bin/python scripts/app_screenshot.py OUT.png [--sample hybrid] [--model DIR] [--port 7861]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

from viva.browser import launch


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"viva app exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"viva app did not answer at {url} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--sample", default="hybrid", help="the bundled sample's button label (default hybrid)")
    parser.add_argument("--model")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    command = [sys.executable, "-m", "viva", "app", "--port", str(port)] + (["--model", args.model] if args.model else [])
    proc = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, proc)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#viva-samples button", has_text=args.sample).click()
            page.wait_for_function("() => document.querySelector('#viva-instruction textarea').value.length > 0")
            page.wait_for_timeout(1000)
            page.locator("#viva-run").click()
            page.wait_for_function(
                """() => { const s = document.querySelector('#viva-status .viva-status');
                           return s && (s.classList.contains('viva-done') || s.classList.contains('viva-error')); }""",
                timeout=300_000,
            )
            page.wait_for_function(
                "() => { const v = document.querySelector('#viva-result video'); return v && v.readyState >= 2; }",
                timeout=30_000,
            )
            page.screenshot(path=args.output, full_page=True)
            print(f"wrote {args.output}: {' '.join(page.locator('#viva-status').inner_text().split())}")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
