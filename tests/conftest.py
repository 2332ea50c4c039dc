"""Test-session settings and shared fixtures.

One torch thread per pytest-xdist worker (`make test` runs 2 workers on 2 cores; more threads than cores makes
every torch op slower), unless VIVA_TEST_THREADS says otherwise.

`judge`: a fake VLM judge endpoint (a real local HTTP server, tests/fake_judge.py).
`browser`: headless Chromium (`viva.browser.launch`: the system's Chromium driven by Playwright's Python
package, never a downloaded one), one per test module; `chromium`: its binary, for tests that start their own
(e.g. `viva.browser.screenshot`). With no Chromium the browser tests fail under CI (CI=true) and are skipped
elsewhere, saying how to get one (`make test` installs it with apt).
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("VIVA_TEST_THREADS", "1")))


@pytest.fixture
def judge():
    """A fake OpenAI-compatible VLM judge on 127.0.0.1 (tests/fake_judge.py), stopped after the test."""
    from fake_judge import FakeJudge

    server = FakeJudge()
    yield server
    server.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary (`viva.browser.find_chromium`); fails under CI and skips elsewhere when none."""
    from viva.browser import NO_CHROMIUM, find_chromium

    executable = find_chromium()
    if executable is None:
        message = f"{NO_CHROMIUM} (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


@pytest.fixture(scope="module")
def browser(chromium):
    """A headless Chromium browser (one Playwright session per module: do not start another meanwhile)."""
    from playwright.sync_api import sync_playwright

    from viva.browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()
