"""`viva app`: the real server (a `viva app` subprocess serving a tiny model) driven by headless Chromium,
its input checks, and its one-line CLI errors.

The browser is Debian's Chromium (`chromium` package, /usr/bin/chromium), driven by Playwright's Python
package through `executable_path` (`viva.browser`; the `browser` fixture is in conftest.py): Playwright never
downloads a browser of its own here. `make test` installs chromium with apt when it is missing (see the
Makefile); VIVA_CHROMIUM names another binary. With no Chromium the browser tests fail under CI (CI=true) and
are skipped elsewhere, saying how to get one.

Nothing may leave the machine: the page's requests to any host but 127.0.0.1 are recorded (and refused),
and the server runs under an audit hook that reports every outbound connection and name lookup of a
non-loopback host; both lists must stay empty.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from viva.app import (
    SAMPLES_DIR,
    AppLimits,
    build_app,
    check_instruction_text,
    check_reference_upload,
    check_settings,
    check_video_upload,
    load_samples,
    resolve_model,
)
from viva.browser import OUTSIDE
from viva.errors import VivaUserError
from viva.io import read_image, read_video, write_image, write_video
from viva.models.tiny import save_tiny_editor
from viva.pipeline import VivaPipeline, default_model_path

pytestmark = pytest.mark.xdist_group("app")  # one server and one browser for the module (--dist loadgroup)

SAMPLE = SAMPLES_DIR / "recolor.mp4"
STARTUP_SECONDS = 180  # importing torch + gradio and loading MiniLM on a busy 2-core machine
EDIT_TIMEOUT_MS = 90_000

# Runs `python -m viva ...` under an audit hook that prints every connection / name lookup that is not to
# this machine (sys.addaudithook: CPython's own events, nothing of the app is replaced).
NET_AUDIT = r"""
import runpy, sys
LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", None}
def _audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1] and args[1][0] not in LOCAL:
        print(f"NET-AUDIT connect {args[1]!r}", file=sys.stderr, flush=True)
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host not in LOCAL:
            print(f"NET-AUDIT getaddrinfo {host!r}", file=sys.stderr, flush=True)
sys.addaudithook(_audit)
runpy.run_module("viva", run_name="__main__", alter_sys=True)
"""

def viva_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, url: str, proc: subprocess.Popen, log: Path):
        self.root, self.url, self.proc, self.log = root, url, proc, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_healthy(self) -> None:
        """Still serving, no traceback, nothing sent anywhere but this machine."""
        text = self.output()
        assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{text}"
        assert "Traceback" not in text, text
        assert "NET-AUDIT" not in text, text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`viva app --model TINY --port P` in a subprocess, ready to serve; stopped with SIGTERM afterwards."""
    root = tmp_path_factory.mktemp("app")
    save_tiny_editor(root / "model", seed=0, vlm=True)
    port = free_port()
    log = root / "server.log"
    env = {**viva_env(), "GRADIO_TEMP_DIR": str(root / "gradio")}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", NET_AUDIT, "app", "--model", str(root / "model"), "--port", str(port)],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    server = Server(root, f"http://127.0.0.1:{port}/", proc, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while "viva app: serving" not in server.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"viva app did not start (exit {proc.poll()}):\n{server.output()}")
        time.sleep(0.25)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = server.output()
    assert code == 143 and "terminated" in text, (code, text)  # a clean stop on SIGTERM
    assert "Traceback" not in text and "NET-AUDIT" not in text, text


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; `page.outside` collects requests to any other host (they are refused)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside: list[str] = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    context.route(OUTSIDE, refuse)
    page = context.new_page()
    page.outside = outside
    page.set_default_timeout(30_000)
    page.goto(server.url)
    page.wait_for_selector("#viva-run")
    yield page
    context.close()
    assert outside == [], f"the page asked hosts other than this machine: {outside}"


def upload_video(page, path: Path) -> None:
    page.locator("#viva-video input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#viva-video video")  # the upload has arrived and is shown


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def run_edit(page, outcome: str) -> str:
    """Press Edit, wait for the next status (an edit done, or an error); check that it is `outcome` ("done" or
    "error") and return its text."""
    page.locator("#viva-run").click()
    page.wait_for_function(
        """() => { const s = document.querySelector('#viva-status .viva-status');
                   return s && !s.dataset.seen && (s.classList.contains('viva-done') || s.classList.contains('viva-error')); }""",
        timeout=EDIT_TIMEOUT_MS,
    )
    status = page.locator("#viva-status .viva-status")
    status.evaluate("s => { s.dataset.seen = '1'; }")
    text = " ".join(status.inner_text().split())
    assert status.evaluate(f"s => s.classList.contains('viva-{outcome}')"), f"expected {outcome}, got: {text}"
    return text


def pick_sample(page, label: str, video: str, reference: str | None = None) -> None:
    """Click a bundled sample; wait until its video, instruction and reference (the file's stem: the page shows
    the extension apart) have all arrived in the inputs."""
    page.locator("#viva-samples button", has_text=label).click()
    page.wait_for_function(
        """([video, reference]) => {
             const v = document.querySelector('#viva-video video');
             const text = document.querySelector('#viva-instruction textarea').value;
             const files = document.querySelector('#viva-reference').innerText;
             return v && v.src.includes(video) && text.length > 0 && (!reference || files.includes(reference)); }""",
        arg=[video, reference],
    )


def wait_playable(page, elem_id: str) -> dict:
    """Wait until the <video> in `elem_id` has decoded its first frame; return its size."""
    page.wait_for_function(
        f"""() => {{ const v = document.querySelector('#{elem_id} video');
                     return v && v.readyState >= 2 && v.videoWidth > 0; }}""",
        timeout=30_000,
    )
    return page.evaluate(
        f"() => {{ const v = document.querySelector('#{elem_id} video'); return {{w: v.videoWidth, h: v.videoHeight, src: v.src}}; }}"
    )


# ---------------------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------------------


def test_upload_edit_and_download_in_browser(server, page, tmp_path):
    assert page.title() == "VIVA video editing"
    config = page.request.get(server.url + "config").json()  # Gradio refuses larger uploads before storing them
    assert config["max_file_size"] == AppLimits().max_upload_bytes and config["analytics_enabled"] is False
    upload_video(page, SAMPLE)
    page.locator("#viva-instruction textarea").fill("make the green shape red")
    set_number(page, "viva-steps", 8)
    set_number(page, "viva-seed", 3)
    page.evaluate("""() => { window.progressSeen = []; new MutationObserver(() => {
        for (const e of document.querySelectorAll('#viva-result .progress-level')) window.progressSeen.push(e.textContent.trim());
      }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")

    status = run_edit(page, "done")
    assert "Edited recolor.mp4" in status and "steps 8" in status and "seed 3" in status, status
    progress = page.evaluate("() => window.progressSeen")  # the bar followed the denoising steps
    assert any(re.match(r"denoising - \d+(\.\d)?%", text) for text in progress), progress
    assert "nothing was resized" in status, status  # the note: the sample already fits the model

    # Source and result are shown side by side, and Chromium can play both (upscaled 4x for display).
    for elem_id in ("viva-source", "viva-result"):
        assert wait_playable(page, elem_id)["w"] == 256
    # The downloads are the result at the model's size and the source | result grid.
    links = page.locator("#viva-downloads a[download], #viva-downloads a[href]").evaluate_all(
        "els => [...new Set(els.map(e => e.href))]"
    )
    names = {Path(link.split("/")[-1]).name: link for link in links}
    assert {"recolor_edited.mp4", "recolor_preview.png"} <= set(names), links
    for name, link in names.items():
        response = page.request.get(link)
        assert response.ok, (link, response.status)
        (tmp_path / name).write_bytes(response.body())
    frames, info = read_video(tmp_path / "recolor_edited.mp4")
    assert frames.shape == (8, 64, 64, 3) and info.fps == pytest.approx(8.0)
    assert read_image(tmp_path / "recolor_preview.png").ndim == 3

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("VIVA_APP_SCREENSHOT"):  # e.g. outputs/app_screenshot.png, to look at
        shutil.copy(shot, os.environ["VIVA_APP_SCREENSHOT"])
    server.check_healthy()


def test_corrupt_upload_shows_error_and_server_keeps_serving(server, page, tmp_path):
    rng = np.random.default_rng(0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + rng.bytes(4000))
    upload_video(page, broken)
    page.locator("#viva-instruction textarea").fill("make the green shape red")
    status = run_edit(page, "error")
    assert "broken.mp4" in status and "corrupt" in status, status
    assert str(server.root) not in status and "/tmp" not in status, status  # the name, not the server's path
    server.check_healthy()

    # A bundled sample (clicked, as a user would) with an empty instruction: told what is missing.
    pick_sample(page, "add from reference", "add_from_reference.mp4", "add_from_reference_reference")
    page.locator("#viva-instruction textarea").fill("   ")
    status = run_edit(page, "error")
    assert "the instruction is empty" in status, status

    # The same server, the same page: a normal edit, with the sample's reference image, still works.
    page.locator("#viva-instruction textarea").fill("add the thing from the reference image")
    set_number(page, "viva-steps", 2)
    status = run_edit(page, "done")
    assert "Edited add_from_reference.mp4" in status and "steps 2" in status, status
    assert wait_playable(page, "viva-result")["w"] == 256
    assert page.locator("#viva-reference-out img").count() == 1  # the reference as the model saw it
    server.check_healthy()


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------


def viva_app(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viva", "app", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=viva_env())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_cli")
    save_tiny_editor(root / "model", seed=0)
    shutil.copytree(root / "model", root / "no_weights")
    (root / "no_weights" / "vae" / "model.safetensors").unlink()
    return root


def test_cli_errors_are_one_line_exit_2(folders):
    with socket.socket() as busy:  # a port some other program listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = {
            "missing model folder": (["--model", "nowhere"], "model folder nowhere does not exist"),
            "incomplete model": (["--model", "no_weights"], "vae/model.safetensors is missing"),
            "port out of range": (["--model", "model", "--port", "70000"], "--port must be from 1 to 65535"),
            "port in use": (["--model", "model", "--port", port], f"port {port} on 127.0.0.1 is already in use"),
            "port not a number": (["--port", "http"], "invalid whole number"),
        }
        if default_model_path() is None:
            cases["no model at all"] = ([], "no --model given and no bundled model")
        for case, (args, expected) in cases.items():
            out = viva_app(*args, cwd=folders)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 2, (case, out.stdout, out.stderr)
            assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (case, out.stderr)
    with pytest.raises(VivaUserError, match="no bundled model"):  # the same rule, whatever ships
        resolve_model(None, bundled=None)
    assert resolve_model(None, bundled=folders / "model") == folders / "model"


def test_cli_help_documents_the_options():
    out = subprocess.run([sys.executable, "-m", "viva", "app", "--help"], capture_output=True, text=True,
                         timeout=60, env=viva_env())
    assert out.returncode == 0, out.stderr
    for option in ("--host", "--port", "--model", "--share", "127.0.0.1", "7860"):
        assert option in out.stdout


# ---------------------------------------------------------------------------------------------------------
# Checks and the handler, in process (real files, the real tiny pipeline)
# ---------------------------------------------------------------------------------------------------------


def test_upload_limits_name_the_file_and_the_limit(tmp_path):
    assert check_video_upload(SAMPLE).num_frames == 8
    limits = AppLimits(max_upload_bytes=1000)
    with pytest.raises(VivaUserError, match=r"recolor.mp4 is .* over the upload limit of 1000 bytes"):
        check_video_upload(SAMPLE, limits)
    wide = tmp_path / "wide.mp4"
    write_video(wide, np.zeros((2, 80, 96, 3), np.uint8), fps=8)
    with pytest.raises(VivaUserError, match=r"wide.mp4 is 96x80, over the limit of 64x48"):
        check_video_upload(wide, AppLimits(max_long_side=64, max_short_side=48))
    tall = tmp_path / "tall.mp4"  # portrait within 96x80 "either orientation"
    write_video(tall, np.zeros((2, 96, 80, 3), np.uint8), fps=8)
    assert check_video_upload(tall, AppLimits(max_long_side=96, max_short_side=80)).height == 96
    long = tmp_path / "long.mp4"
    write_video(long, np.zeros((24, 16, 16, 3), np.uint8), fps=8)
    with pytest.raises(VivaUserError, match=r"long.mp4 is 3.0 s long, over the limit of 2 s"):
        check_video_upload(long, AppLimits(max_seconds=2))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VivaUserError, match="empty.mp4 is empty"):
        check_video_upload(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(VivaUserError, match="notes.mp4") as error:
        check_video_upload(text)
    assert str(tmp_path) not in str(error.value)  # the file's name, never the server's temporary path


def test_reference_instruction_and_setting_checks(tmp_path):
    write_image(tmp_path / "ok.png", np.zeros((40, 30, 3), np.uint8))
    check_reference_upload(tmp_path / "ok.png")
    with pytest.raises(VivaUserError, match=r"reference big.png is 50x20, over the limit of 32 px"):
        write_image(tmp_path / "big.png", np.zeros((20, 50, 3), np.uint8))
        check_reference_upload(tmp_path / "big.png", AppLimits(max_reference_side=32))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VivaUserError, match="reference bad.png"):
        check_reference_upload(tmp_path / "bad.png")
    with pytest.raises(VivaUserError, match="reference doc.pdf: not an image type"):
        check_reference_upload(tmp_path / "doc.pdf")

    assert check_instruction_text("  make   it red ") == "make it red"
    for empty in ("", "   ", None):
        with pytest.raises(VivaUserError, match="the instruction is empty"):
            check_instruction_text(empty)
    with pytest.raises(VivaUserError, match="over the limit of 10"):
        check_instruction_text("make the circle red", AppLimits(max_instruction_chars=10))

    assert check_settings(4.0, 3, "1.5", 7) == (4, 3.0, 1.5, 7)
    bad = {
        (0, 3, 1.5, 0): "steps must be a whole number from 1 to 100, got 0",
        (2.5, 3, 1.5, 0): "steps must be a whole number",
        (4, -1, 1.5, 0): "instruction guidance must be a number from 0 to 20",
        (4, 3, float("nan"), 0): "video guidance must be a number",
        (4, 3, 1.5, -1): "seed must be a whole number >= 0, got -1",
        (4, 3, 1.5, None): "seed must be a whole number >= 0, got nothing",
    }
    for settings, expected in bad.items():
        with pytest.raises(VivaUserError, match=re.escape(expected)):
            check_settings(*settings)


def test_handler_fits_inputs_and_reports_errors_without_raising(tmp_path):
    save_tiny_editor(tmp_path / "model", seed=0, vlm=True)
    pipe = VivaPipeline.from_pretrained(tmp_path / "model")
    demo, editor = build_app(pipe, samples=load_samples())
    try:
        # One edit at a time: the edit event's concurrency limit, and a bounded queue.
        (edit_fn,) = [fn for fn in demo.fns.values() if fn.api_name == "edit"]
        assert edit_fn.concurrency_limit == 1 and demo._queue.max_size == AppLimits().max_queue

        clip = tmp_path / "wide clip.mp4"
        rng = np.random.default_rng(1)
        write_video(clip, rng.integers(0, 256, (12, 80, 96, 3), dtype=np.uint8), fps=12)
        write_image(tmp_path / "ref.png", rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))
        class Progress(list):  # falsy while empty, like gr.Progress (a length of 0 until it tracks something)
            def __call__(self, value, desc=None, unit=None):
                self.append((value, desc))

        steps_seen = Progress()
        source, result, reference, status, downloads = editor.edit(
            str(clip), "make the square red", str(tmp_path / "ref.png"), 3, 3.0, 1.5, 5, progress=steps_seen,
        )
        assert "viva-done" in status
        for note in ("sampled 8 of 12 frames evenly", "resized 96x80 -&gt; 64x64 (center crop)",
                     "reference resized 40x50 -&gt; 64x64 (center crop)"):
            assert note in status, status
        assert [v for v, d in steps_seen if d == "denoising"] == [(1, 3), (2, 3), (3, 3)]
        assert read_video(result)[0].shape == (8, 256, 256, 3) and read_video(source)[0].shape == (8, 256, 256, 3)
        assert read_image(reference).shape == (256, 256, 3)
        assert [Path(d).name for d in downloads] == ["wide_clip_edited.mp4", "wide_clip_preview.png"]
        assert read_video(downloads[0])[0].shape == (8, 64, 64, 3)

        errors = []
        outputs = editor.edit(None, "x", None, 3, 3.0, 1.5, 0, on_error=errors.append)
        assert outputs[:3] == (None, None, None) and outputs[4] is None
        assert "viva-error" in outputs[3] and errors == ["no video to edit; upload one (or click a sample below), then press Edit"]
        outputs = editor.edit(str(clip), "x <b>bold</b>", None, 0, 3.0, 1.5, 0, on_error=errors.append)
        assert "steps must be a whole number from 1 to 100" in outputs[3]
        named = tmp_path / "<script>.mp4"
        named.write_bytes(b"junk" * 100)
        outputs = editor.edit(str(named), "x", None, 3, 3.0, 1.5, 0, on_error=errors.append)
        assert "&lt;script&gt;.mp4" in outputs[3] and "<script>" not in outputs[3]  # user text is escaped
    finally:
        editor.close()
    assert not editor.work.exists()
