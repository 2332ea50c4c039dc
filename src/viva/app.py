"""`viva app`: a Gradio page for editing videos in a browser.

    viva app [--host 127.0.0.1] [--port 7860] [--model DIR] [--share] [--device cpu]

    from viva.app import AppLimits, build_app
    demo, editor = build_app(VivaPipeline.from_pretrained("runs/sft/model"))   # a gr.Blocks and its handler
    demo.launch()

The page: a video (uploaded, or one of the bundled samples in `viva/assets/samples/`), an instruction, an
optional reference image, the sampler settings (steps, instruction guidance, video guidance, seed); Edit
shows a progress bar, then the source as the model saw it beside the result (both playable, the result
downloadable at the model's resolution together with a source | result preview grid) and the notes on how
the inputs were fitted (resized, cropped, sampled, padded).

Robustness: uploads are checked against `AppLimits` (file size, duration, resolution) before anything is
decoded; every problem with an input (corrupt or truncated file, empty instruction, bad setting) is
answered on the page with one line saying what is wrong, and the server keeps serving. Edits run one at a
time (the pipeline is not thread-safe, and one edit already uses every core); others wait in Gradio's
queue, which shows them their position.

Nothing is fetched from the internet: Gradio's analytics are switched off (GRADIO_ANALYTICS_ENABLED=False
is set before gradio is imported, and Blocks(analytics_enabled=False)), the theme uses the fonts that ship
inside the gradio package, server-side rendering (Node), MCP, the run history and PWA are off. Only
`--share` reaches out: it downloads Gradio's tunnel client (once) and opens a public *.gradio.live link.
"""

from __future__ import annotations

import errno
import html
import itertools
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viva.errors import VivaUserError
from viva.samples import SAMPLES_DIR, Sample, load_samples

if TYPE_CHECKING:
    import gradio as gr

    from viva.io import VideoInfo
    from viva.pipeline import VivaPipeline

MIB = 2**20
REFERENCE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
DISPLAY_MIN_SIDE = 256  # small model outputs are shown upscaled (nearest) to at least this many pixels
KEEP_RESULTS = 32  # result folders kept on disk (Gradio copies what it serves into its own cache)


@dataclass(frozen=True)
class AppLimits:
    """What the page accepts. Checked before any decoding, each with a message naming the limit.

    max_upload_bytes: largest video or image file (also Gradio's upload limit, so larger files are refused
    before they are stored). max_seconds: longest clip. max_long_side x max_short_side: largest frame, in
    either orientation (1920x1080 accepts portrait 1080x1920 too). max_reference_side: largest reference
    image side. max_steps: most denoising steps one edit may ask for. max_queue: edits waiting at most.
    """

    max_upload_bytes: int = 100 * MIB
    max_seconds: float = 120.0
    max_long_side: int = 1920
    max_short_side: int = 1080
    max_reference_side: int = 4096
    max_steps: int = 100
    max_guidance: float = 20.0
    max_instruction_chars: int = 500
    max_queue: int = 16

    def describe(self) -> str:
        return (
            f"Videos up to {_human(self.max_upload_bytes)}, {self.max_seconds:g} s and "
            f"{self.max_long_side}x{self.max_short_side} (either orientation); reference images "
            f"({', '.join(t.lstrip('.').upper() for t in REFERENCE_TYPES)}) up to "
            f"{self.max_reference_side} px a side; at most {self.max_steps} steps."
        )


def _human(num_bytes: float) -> str:
    from viva.io.limits import human_bytes

    return human_bytes(num_bytes)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------
# Checking inputs (no gradio needed: usable and testable on their own)
# ---------------------------------------------------------------------------------------------------------


def _renamed(error: VivaUserError, path: Path, name: str) -> VivaUserError:
    """The same error with the upload's temporary path replaced by the file's own name."""
    return VivaUserError(_one_line(str(error).replace(str(path), name)))


def check_video_upload(path: str | os.PathLike, limits: AppLimits = AppLimits()) -> VideoInfo:
    """Check an uploaded video against `limits` from its header (nothing decoded); return its VideoInfo.
    VivaUserError (naming the file, not its temporary path) for a missing, empty, oversized, corrupt, too
    long or too large clip."""
    from viva.io import probe_video

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise VivaUserError(f"{name} was not received; upload it again")
    size = path.stat().st_size
    if size == 0:
        raise VivaUserError(f"{name} is empty (0 bytes); upload a video file")
    if size > limits.max_upload_bytes:
        raise VivaUserError(
            f"{name} is {_human(size)}, over the upload limit of {_human(limits.max_upload_bytes)}; "
            "trim or compress it first"
        )
    try:
        info = probe_video(path)
    except VivaUserError as e:
        raise _renamed(e, path, name) from None
    long_side, short_side = max(info.width, info.height), min(info.width, info.height)
    if long_side > limits.max_long_side or short_side > limits.max_short_side:
        raise VivaUserError(
            f"{name} is {info.width}x{info.height}, over the limit of {limits.max_long_side}x{limits.max_short_side} "
            "(either orientation); downscale it first"
        )
    if info.duration > limits.max_seconds + 1e-6:
        raise VivaUserError(
            f"{name} is {info.duration:.1f} s long, over the limit of {limits.max_seconds:g} s; trim it first"
        )
    return info


def check_reference_upload(path: str | os.PathLike, limits: AppLimits = AppLimits()) -> None:
    """Check an uploaded reference image (type, size, resolution) from its header; VivaUserError if bad."""
    from viva.io.image import image_size

    path = Path(path)
    name = path.name
    if path.suffix.lower() not in REFERENCE_TYPES:
        raise VivaUserError(
            f"reference {name}: not an image type the app takes; upload a {', '.join(REFERENCE_TYPES)} file"
        )
    if not path.is_file():
        raise VivaUserError(f"reference {name} was not received; upload it again")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise VivaUserError(
            f"reference {name} is {_human(size)}, over the upload limit of {_human(limits.max_upload_bytes)}"
        )
    try:
        width, height = image_size(path)
    except VivaUserError as e:
        raise VivaUserError(f"reference {_renamed(e, path, name)}") from None
    if max(width, height) > limits.max_reference_side:
        raise VivaUserError(
            f"reference {name} is {width}x{height}, over the limit of {limits.max_reference_side} px a side; "
            "downscale it first"
        )


def check_instruction_text(text: Any, limits: AppLimits = AppLimits()) -> str:
    """The instruction with its whitespace collapsed; VivaUserError when it is empty or too long."""
    text = " ".join(str(text or "").split())
    if not text:
        raise VivaUserError('the instruction is empty; type what to change, e.g. "make the red circle blue"')
    if len(text) > limits.max_instruction_chars:
        raise VivaUserError(
            f"the instruction is {len(text)} characters long, over the limit of {limits.max_instruction_chars}; "
            "say it in fewer words"
        )
    return text


def _number(name: str, value: Any, low: float, high: float, whole: bool) -> float | int:
    what = "a whole number" if whole else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high or (
        whole and number != int(number)
    ):
        shown = "nothing" if value is None or value == "" else repr(value)
        limit = f"from {low:g} to {high:g}" if high < 2**53 else f">= {low:g}"
        raise VivaUserError(f"{name} must be {what} {limit}, got {shown}")
    return int(number) if whole else number


def check_settings(
    steps: Any, guidance: Any, video_guidance: Any, seed: Any, limits: AppLimits = AppLimits()
) -> tuple[int, float, float, int]:
    """(steps, guidance, video guidance, seed) as numbers; VivaUserError naming the first bad one."""
    return (
        int(_number("steps", steps, 1, limits.max_steps, whole=True)),
        float(_number("instruction guidance", guidance, 0.0, limits.max_guidance, whole=False)),
        float(_number("video guidance", video_guidance, 0.0, limits.max_guidance, whole=False)),
        int(_number("seed", seed, 0, 2**63 - 1, whole=True)),
    )


# ---------------------------------------------------------------------------------------------------------
# The edit handler
# ---------------------------------------------------------------------------------------------------------


def _upscale(frames, scale: int):
    return frames if scale == 1 else frames.repeat(scale, axis=1).repeat(scale, axis=2)


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")[:60]
    return stem or "clip"


def _status(kind: str, title: str, lines: list[str] = ()) -> str:
    """The status panel's HTML; every piece of text is escaped (file names come from users)."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    body = f"<ul>{items}</ul>" if items else ""
    return f'<div class="viva-status viva-{kind}"><strong>{html.escape(title)}</strong>{body}</div>'


class EditorApp:
    """The page's edit handler: checks the inputs, runs the pipeline, writes the videos the page shows.

    `edit(...)` never raises for a bad input: it returns the outputs with an error in the status panel
    (and `on_error(message)` is called, e.g. to show a toast). Results go to a private temporary folder
    (the newest KEEP_RESULTS edits are kept; `close()` removes it).
    """

    def __init__(self, pipe: VivaPipeline, limits: AppLimits = AppLimits()):
        self.pipe = pipe
        self.limits = limits
        self.work = Path(tempfile.mkdtemp(prefix="viva-app-"))
        self._count = itertools.count()
        self._lock = threading.Lock()  # the queue runs one edit at a time; this makes sure of it

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def ready_message(self) -> str:
        cfg = self.pipe.config
        frames = f"{cfg.num_frames} frames" if cfg.num_frames > 1 else "1 frame"
        return _status(
            "ready",
            "Ready.",
            [
                f"The model edits {cfg.width}x{cfg.height} clips of {frames}; other sizes and lengths are fitted to "
                "it, and the notes here will say how.",
                "Upload a video (or click a sample below), type an instruction and press Edit.",
            ],
        )

    def edit(
        self,
        video: str | None,
        instruction: str | None,
        reference: str | None,
        steps: Any,
        guidance: Any,
        video_guidance: Any,
        seed: Any,
        progress: Callable[..., Any] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> tuple[str | None, str | None, str | None, str, list[str] | None]:
        """-> (source video, result video, fitted reference image or None, status HTML, download files)."""
        try:
            with self._lock:
                return self._edit(video, instruction, reference, steps, guidance, video_guidance, seed, progress)
        except VivaUserError as e:
            message = _one_line(e)
        except Exception as e:  # a bug or a decoder failure nobody foresaw: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            message = (
                f"the edit failed unexpectedly ({type(e).__name__}: {_one_line(e)}); the server is still "
                "running: try another clip, and please report this"
            )
        if on_error is not None:
            on_error(message)
        return None, None, None, _status("error", "Error: " + message), None

    def _edit(self, video, instruction, reference, steps, guidance, video_guidance, seed, progress):
        from viva.io import write_image, write_video
        from viva.pipeline import load_reference_input, load_video_input

        if progress is None:  # (not `progress or ...`: a gr.Progress has a length, 0 until it tracks an iterable)
            progress = lambda *args, **kwargs: None  # noqa: E731
        limits, cfg = self.limits, self.pipe.config
        # 1. Everything a user can get wrong, cheapest first, before decoding anything.
        if not video:
            raise VivaUserError("no video to edit; upload one (or click a sample below), then press Edit")
        text = check_instruction_text(instruction, limits)
        steps, guidance, video_guidance, seed = check_settings(steps, guidance, video_guidance, seed, limits)
        source = Path(video)
        check_video_upload(source, limits)
        if reference:
            check_reference_upload(reference, limits)

        # 2. Decode and fit the inputs to the model.
        progress(0.0, desc="reading the clip")
        try:
            frames, fps, notes = load_video_input(source, cfg.height, cfg.width, cfg.num_frames)
        except VivaUserError as e:
            raise _renamed(e, source, source.name) from None
        fitted_reference = None
        if reference:
            try:
                fitted_reference, ref_notes = load_reference_input(reference, cfg.height, cfg.width)
            except VivaUserError as e:
                raise VivaUserError(f"reference {_renamed(e, Path(reference), Path(reference).name)}") from None
            notes += ref_notes

        # 3. Edit, with the denoising steps on the progress bar.
        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        result = self.pipe(
            frames,
            text,
            reference_image=fitted_reference,
            num_inference_steps=steps,
            guidance_scale=guidance,
            video_guidance_scale=video_guidance,
            seed=seed,
            source_fps=fps,
            callback=on_step,
        )

        # 4. Write what the page shows (upscaled when small) and what it offers for download (as edited).
        progress(1.0, desc="writing the result")
        out = self.work / f"{next(self._count):06d}"
        out.mkdir()
        T, H, W = result.frames.shape[:3]
        scale = max(1, math.ceil(DISPLAY_MIN_SIDE / min(H, W)))
        shown_source = write_video(out / "source.mp4", _upscale(result.source, scale), fps=result.fps)
        shown_result = write_video(out / "result.mp4", _upscale(result.frames, scale), fps=result.fps)
        stem = _safe_stem(source.name)
        download = write_video(out / f"{stem}_edited.mp4", result.frames, fps=result.fps)
        preview = write_image(out / f"{stem}_preview.png", result.preview())
        shown_reference = None
        if result.reference is not None:
            shown_reference = str(write_image(out / "reference.png", _upscale(result.reference[None], scale)[0]))
        self._prune()

        lines = list(dict.fromkeys(notes + result.notes)) or [
            f"the clip already matched the model ({W}x{H}, {T} frames): nothing was resized, sampled or padded"
        ]
        summary = (
            f"Edited {source.name} in {result.seconds:.1f} s: {T} frame{'s' if T != 1 else ''} at {result.fps:.3g} fps, "
            f"{W}x{H}; steps {result.num_inference_steps}, guidance {result.guidance_scale:g}, "
            f"video guidance {result.video_guidance_scale:g}, seed {result.seed}."
        )
        return (str(shown_source), str(shown_result), shown_reference, _status("done", summary, lines),
                [str(download), str(preview)])

    def _prune(self) -> None:
        folders = sorted(p for p in self.work.iterdir() if p.is_dir())
        for old in folders[:-KEEP_RESULTS]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------

CSS = """
.viva-status { padding: 0.6em 0.9em; border-radius: 6px; border: 1px solid var(--border-color-primary); }
.viva-status ul { margin: 0.3em 0 0 1.2em; }
.viva-error { border-color: #d33; background: rgba(221, 51, 51, 0.08); }
.viva-done { border-color: #2a2; background: rgba(34, 170, 34, 0.06); }
#viva-source video, #viva-result video { image-rendering: pixelated; }
"""


def import_gradio():
    """gradio, imported with its analytics off (nothing may be sent or fetched at run time)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    try:
        import gradio as gr
    except ImportError as e:
        raise VivaUserError(
            f"viva app needs gradio ({_one_line(e)}); install it with: pip install 'viva[app]'"
        ) from None
    return gr


def build_app(
    pipe: VivaPipeline, limits: AppLimits = AppLimits(), model_name: str = "", samples: list[Sample] | None = None
) -> tuple[gr.Blocks, EditorApp]:
    """The page (a gr.Blocks, its queue set to one edit at a time) and its EditorApp."""
    gr = import_gradio()
    editor = EditorApp(pipe, limits)
    samples = load_samples() if samples is None else samples
    defaults = pipe.defaults()

    def run_edit(video, instruction, reference, steps, guidance, video_guidance, seed, progress=gr.Progress()):
        source, result, reference_image, status, downloads = editor.edit(
            video, instruction, reference, steps, guidance, video_guidance, seed, progress=progress,
            on_error=lambda message: gr.Warning(html.escape(message), duration=10),
        )
        return source, result, gr.update(value=reference_image, visible=reference_image is not None), status, downloads

    with gr.Blocks(title="VIVA video editing", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## VIVA: edit a video from an instruction\n"
            + (f"Model: `{model_name}`. " if model_name else "")
            + "Edits run one at a time; while one runs, others wait in a queue that shows their place."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                video = gr.Video(label="Video to edit", sources=["upload"], height=280, elem_id="viva-video")
                instruction = gr.Textbox(
                    label="Instruction", placeholder="e.g. make the red circle blue", lines=2,
                    max_length=limits.max_instruction_chars, elem_id="viva-instruction",
                )
                reference = gr.File(
                    label="Reference image (optional): the look of what to add or swap in",
                    file_types=list(REFERENCE_TYPES), elem_id="viva-reference",
                )
                with gr.Accordion("Settings", open=True):
                    steps = gr.Slider(1, limits.max_steps, value=defaults["num_inference_steps"], step=1,
                                      label="Steps", elem_id="viva-steps")
                    guidance = gr.Slider(0, limits.max_guidance, value=defaults["guidance_scale"], step=0.1,
                                         label="Instruction guidance", elem_id="viva-guidance")
                    video_guidance = gr.Slider(0, limits.max_guidance, value=defaults["video_guidance_scale"],
                                               step=0.1, label="Video guidance", elem_id="viva-video-guidance")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="viva-seed")
                run = gr.Button("Edit", variant="primary", elem_id="viva-run")
            with gr.Column(scale=3, min_width=320):
                with gr.Row():
                    source_out = gr.Video(label="Source (as the model sees it)", interactive=False, loop=True,
                                          autoplay=True, height=280, elem_id="viva-source")
                    result_out = gr.Video(label="Result", interactive=False, loop=True, autoplay=True, height=280,
                                          buttons=["download"], elem_id="viva-result")
                    reference_out = gr.Image(label="Reference (as the model sees it)", interactive=False,
                                             visible=False, height=280, elem_id="viva-reference-out")
                status = gr.HTML(editor.ready_message(), elem_id="viva-status")
                downloads = gr.File(label="Download (the model's resolution): result and source | result grid",
                                    file_count="multiple", interactive=False, elem_id="viva-downloads")
        if samples:
            gr.Examples(
                examples=[[str(s.video), s.instruction, str(s.reference) if s.reference else None] for s in samples],
                inputs=[video, instruction, reference],
                label="Samples (click one to load it)",
                example_labels=[s.name.replace("_", " ") for s in samples],
                elem_id="viva-samples",
            )
        gr.Markdown(f"<small>{html.escape(limits.describe())}</small>")
        run.click(
            run_edit,
            inputs=[video, instruction, reference, steps, guidance, video_guidance, seed],
            outputs=[source_out, result_out, reference_out, status, downloads],
            show_progress_on=[result_out],  # the bar (steps done, time) where the result will appear
            concurrency_limit=1,
            concurrency_id="edit",
            api_name="edit",
        )
    demo.queue(default_concurrency_limit=1, max_size=limits.max_queue)
    return demo, editor


# ---------------------------------------------------------------------------------------------------------
# `viva app`
# ---------------------------------------------------------------------------------------------------------


def check_listen_address(host: str, port: int) -> None:
    """VivaUserError when HOST:PORT cannot be listened on (bad port, unknown host, port in use)."""
    if not 1 <= port <= 65535:
        raise VivaUserError(f"--port must be from 1 to 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise VivaUserError(f"--host {host!r} is not an address here ({_one_line(e)}); use e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (TIME_WAIT is fine)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise VivaUserError(
                    f"port {port} on {host} is already in use; stop the program using it or pass another --port"
                ) from None
            raise VivaUserError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port") from None


def resolve_model(model: str | None, bundled: Path | None) -> Path:
    """The model folder to serve: --model, else the bundled one; VivaUserError when there is neither."""
    if model is not None:
        return Path(model)
    if bundled is None:
        raise VivaUserError(
            "no --model given and no bundled model ships with this install; pass --model DIR "
            "(a model folder from `viva train sft` or save_pretrained)"
        )
    return bundled


def run_app_command(args) -> int:
    """`viva app`: check the arguments and the model (one-line errors), load it, serve until Ctrl-C."""
    from viva.pipeline import VivaPipeline, check_model_folder, default_model_path, parse_device

    # 1. Everything a user can get wrong, before the slow imports.
    model = resolve_model(args.model, default_model_path())
    check_model_folder(model)
    check_listen_address(args.host, args.port)
    device = parse_device(args.device)
    gr = import_gradio()

    # 2. Load the model and build the page.
    pipe = VivaPipeline.from_pretrained(model, device=device)
    limits = AppLimits()
    demo, editor = build_app(pipe, limits, model_name=str(model))
    try:
        try:
            demo.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                prevent_thread_lock=True,
                quiet=True,
                show_error=True,
                max_file_size=limits.max_upload_bytes,
                allowed_paths=[str(SAMPLES_DIR)],
                ssr_mode=False,
                mcp_server=False,
                enable_monitoring=False,
                run_history=False,
                pwa=False,
                footer_links=["api"],
                theme=gr.themes.Default(),  # fonts from the gradio package, none from the internet
                css=CSS,
            )
        except OSError as e:
            raise VivaUserError(f"cannot serve on {args.host}:{args.port} ({_one_line(e)}); pass another --port") from None
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{demo.server_port}"
        print(f"viva app: serving {model} at {url} (Ctrl-C to stop)", flush=True)
        if args.share:
            if demo.share_url:
                print(f"viva app: public link {demo.share_url} (anyone with it can use this app)", flush=True)
            else:
                print("warning: could not create a share link (no internet, or Gradio's tunnel is unreachable); "
                      "serving locally only", file=sys.stderr, flush=True)
        while True:  # Ctrl-C / SIGTERM end this (see viva.cli.main); the finally below stops the server
            time.sleep(1.0)
    finally:
        demo.close()
        editor.close()
