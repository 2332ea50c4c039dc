"""VIE-Bench-style VLM judge: scores an edit 0-10 for instruction following, preservation and quality
(plus subject similarity when the edit uses a reference image) by asking a vision-language model behind any
OpenAI-compatible chat-completions endpoint (a local vLLM or SGLang server, or a hosted API).

    config = JudgeConfig(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-VL-72B-Instruct")
    client = JudgeClient(config)
    result = client.judge_files("source.mp4", "edited.mp4", "make it snow")   # JudgeResult
    records = judge_manifest("cases.jsonl", "judged.jsonl", config)            # a whole benchmark

Protocol (docs/judge.md has the prompts verbatim and the reasons):
1. `num_frames` frames are sampled evenly (first and last included) from the source and from the edited
   video, resized so the longer side is at most `max_side`, and sent as base64 PNG `image_url` parts in
   one user message: the source frames, the edited frames, the reference image (reference edits only),
   then the instruction and the rubric. The system prompt fixes the role and the answer format.
2. The answer should be one JSON object {"instruction_following": 7, ...}; `parse_scores` also reads
   fenced code, JSON inside prose, and "Instruction following: 7/10" lines; scores are clamped to 0-10.
3. Connection errors, timeouts, HTTP 429 and 5xx, malformed responses and unreadable answers are retried
   (`retries` times, exponential backoff from `backoff` seconds, Retry-After honoured); other HTTP errors
   fail at once. Every final failure is one `JudgeError` line naming the cause (and the raw answer).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VivaUserError

PROMPT_VERSION = "viva-judge-1"
CRITERIA: tuple[str, ...] = ("instruction_following", "preservation", "quality")
REFERENCE_CRITERIA: tuple[str, ...] = CRITERIA + ("subject_similarity",)

SYSTEM_PROMPT = (
    "You are a strict, impartial judge of instruction-based video editing. You are shown frames of a "
    "source video, frames of an edited video, and the editing instruction (and sometimes a reference "
    "image). You score the edit on fixed criteria with integers from 0 (worst) to 10 (best), judging only "
    "what the frames show. You answer with one JSON object and nothing else."
)

CRITERION_TEXT: dict[str, str] = {
    "instruction_following": (
        "instruction_following: does the edited video carry out every part of the instruction, on the "
        "right object(s), in the right place, with the requested attributes? 10 = fully and exactly; "
        "5 = partly, or on the wrong object; 0 = not at all, or the opposite."
    ),
    "preservation": (
        "preservation: is everything the instruction does not ask to change (other objects, background, "
        "layout, camera motion, identities, timing) the same as in the source video? 10 = identical apart "
        "from the requested edit; 5 = noticeable unrequested changes; 0 = an unrelated video."
    ),
    "quality": (
        "quality: does the edited video look clean and natural and stay coherent over time (no blur, "
        "noise, flicker, distorted shapes, color bleeding, or leftovers such as shadows of removed "
        "objects)? 10 = as clean as real footage; 0 = broken."
    ),
    "subject_similarity": (
        "subject_similarity: does the subject that the edit adds or substitutes look like the subject in "
        "the REFERENCE image (shape, colors, texture, identity)? 10 = the same subject; 0 = unrelated."
    ),
}

USER_TEMPLATE = """\
The images above are {num_source} frames sampled evenly (first to last) from the SOURCE video, then \
{num_edited} frames sampled the same way from the EDITED video{reference_note}.

Editing instruction: "{instruction}"

Score the edit on each criterion with an integer from 0 to 10:
{criteria}

Answer with exactly one JSON object on one line, with these keys and a short reason, in this form:
{example}"""

REFERENCE_NOTE = ", then the REFERENCE image showing the subject to add or substitute"


class JudgeError(VivaUserError):
    """The judge could not be reached, failed, or answered nothing readable (after retries)."""


# Configuration -----------------------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """How to reach and use the judge.

    base_url: the OpenAI-compatible API root (".../v1"; a full ".../chat/completions" URL also works).
    model: the model name the server expects. api_key_env: name of the environment variable holding the
    API key (sent as "Authorization: Bearer KEY"); None sends no key. num_frames: frames sampled from
    each video. max_side: frames larger than this (pixels, longer side) are downscaled. timeout: seconds
    per socket operation (connect, each read). retries: extra attempts after a retryable failure.
    backoff, max_backoff: seconds before retry k is min(max_backoff, backoff * 2**(k-1)).
    temperature, max_tokens: sampling of the answer. extra_body: more request fields (e.g. {"seed": 0}).
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    num_frames: int = 8
    max_side: int = 512
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 512
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", str(self.base_url)):
            raise VivaUserError(
                f"judge base URL {self.base_url!r} must start with http:// or https://, e.g. http://localhost:8000/v1"
            )
        if not str(self.model).strip():
            raise VivaUserError("judge model name is empty; give the name the server serves (e.g. from GET /v1/models)")
        checks = {
            "num_frames": self.num_frames >= 1,
            "max_side": self.max_side >= 16,
            "timeout": self.timeout > 0,
            "retries": self.retries >= 0,
            "backoff": self.backoff >= 0 and self.max_backoff >= 0,
            "max_tokens": self.max_tokens >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            value = getattr(self, bad[0])
            raise VivaUserError(f"judge setting {bad[0]} is out of range ({value!r}); see docs/judge.md")

    @property
    def endpoint(self) -> str:
        url = str(self.base_url).rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise VivaUserError(
                f"environment variable {self.api_key_env} (the judge's API key) is not set; "
                "export it or drop the key setting"
            )
        return key

    def fingerprint(self) -> dict:
        """What a judged result depends on (besides the case): resumed results must match it."""
        return {"model": self.model, "prompt": PROMPT_VERSION, "num_frames": self.num_frames, "max_side": self.max_side}


# Prompt and images -------------------------------------------------------------------------------------


def encode_png(image: np.ndarray, max_side: int) -> str:
    """A data URL (base64 PNG) of a uint8 image [H,W,3], downscaled (Lanczos) so its longer side is at
    most `max_side`."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def criteria_for(reference: bool) -> tuple[str, ...]:
    return REFERENCE_CRITERIA if reference else CRITERIA


def user_text(instruction: str, num_source: int, num_edited: int, reference: bool) -> str:
    """The text part that follows the images (USER_TEMPLATE filled in)."""
    names = criteria_for(reference)
    fields = ", ".join(f'"{name}": <0-10>' for name in names)
    example = "{" + fields + ', "reason": "<one short sentence>"}'
    return USER_TEMPLATE.format(
        num_source=num_source,
        num_edited=num_edited,
        reference_note=REFERENCE_NOTE if reference else "",
        instruction=instruction.strip(),
        criteria="\n".join(f"- {CRITERION_TEXT[name]}" for name in names),
        example=example,
    )


def build_messages(
    source: np.ndarray, edited: np.ndarray, instruction: str, reference: np.ndarray | None, max_side: int
) -> list[dict]:
    """Chat messages for one case. source, edited: uint8 frames [T,H,W,3] (already sampled); reference:
    uint8 [H,W,3] or None. The user message holds a label, the source frames, a label, the edited frames,
    (a label and the reference), then the instruction and rubric."""
    content: list[dict] = [{"type": "text", "text": f"SOURCE video, {len(source)} frames in order:"}]
    content += [{"type": "image_url", "image_url": {"url": encode_png(f, max_side)}} for f in source]
    content.append({"type": "text", "text": f"EDITED video, {len(edited)} frames in order:"})
    content += [{"type": "image_url", "image_url": {"url": encode_png(f, max_side)}} for f in edited]
    if reference is not None:
        content.append({"type": "text", "text": "REFERENCE image:"})
        content.append({"type": "image_url", "image_url": {"url": encode_png(reference, max_side)}})
    content.append({"type": "text", "text": user_text(instruction, len(source), len(edited), reference is not None)})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


# Parsing -----------------------------------------------------------------------------------------------

_ALIASES: dict[str, tuple[str, ...]] = {
    "instruction_following": (
        "instruction_following", "instruction", "following", "instruction_adherence", "adherence",
    ),
    "preservation": (
        "preservation", "source_preservation", "content_preservation", "preservation_of_source", "fidelity",
    ),
    "quality": ("quality", "visual_quality", "video_quality", "edit_quality", "overall_quality"),
    "subject_similarity": ("subject_similarity", "similarity", "reference_similarity", "subject_consistency"),
}
# Labels in prose: "Instruction following", "instruction-following", "Subject similarity", ...
_LABELS: dict[str, str] = {
    "instruction_following": r"instruction[\s_-]*(?:following|adherence)",
    "preservation": r"(?:source[\s_-]*|content[\s_-]*)?preservation",
    "quality": r"(?:visual[\s_-]*|video[\s_-]*|overall[\s_-]*)?quality",
    "subject_similarity": r"(?:subject|reference)[\s_-]*similarity",
}
_FILLER = r"""(?:\s|\*\*|[:=|"'#*_\-–—]|score|rating|\(\s*0\s*(?:-|–|to)\s*10\s*\)|\(\s*out\s+of\s+10\s*\))*"""
_NUMBER = r"(-?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)


def _norm_key(key: str) -> str:
    key = re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_")
    return key[: -len("_score")] if key.endswith("_score") else key


def _to_score(value) -> float | None:
    """A 0-10 score from a JSON value: a number, "7", "7/10", "4 out of 5", or {"score": 7}."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        m = re.search(_NUMBER, value)
        if not m:
            return None
        number = float(m.group(1))
        if m.group(2) and float(m.group(2)) > 0:
            number = number * 10.0 / float(m.group(2))
    elif isinstance(value, dict):
        for key in ("score", "value", "rating"):
            if key in value:
                return _to_score(value[key])
        return None
    else:
        return None
    return None if math.isnan(number) else min(10.0, max(0.0, number))


def _json_objects(text: str) -> list[dict]:
    """Every JSON object in `text` (inside code fences first), outermost first."""
    decoder = json.JSONDecoder()
    found: list[dict] = []
    for chunk in [*_FENCE.findall(text), text]:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(chunk, i)
            except ValueError:
                i = chunk.find("{", i + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
                found.extend(v for v in obj.values() if isinstance(v, dict))
            i = chunk.find("{", end)
    return found


def _from_json(obj: dict, names: tuple[str, ...]) -> dict[str, float]:
    keyed = {_norm_key(k): v for k, v in obj.items()}
    out = {}
    for name in names:
        for alias in _ALIASES[name]:
            if alias in keyed:
                score = _to_score(keyed[alias])
                if score is not None:
                    out[name] = score
                    break
    return out


def _from_text(text: str, names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        for m in re.finditer(_LABELS[name] + _FILLER + _NUMBER, text, re.I):
            number = float(m.group(1))
            if m.group(2) and float(m.group(2)) > 0:
                number = number * 10.0 / float(m.group(2))
            out[name] = min(10.0, max(0.0, number))
            break
    return out


def parse_scores(text: str, criteria: tuple[str, ...] = CRITERIA) -> dict[str, float]:
    """Scores 0-10 for `criteria` from a judge's answer: the JSON object that names most of them (code
    fences and surrounding prose tolerated; values may be numbers, "7/10" strings or {"score": 7}), the
    rest from labelled lines ("Instruction following: 7/10", "**Quality** - score 8"). Out-of-range values
    are clamped; "x/5" and "x out of 100" are rescaled. Raises ValueError naming what is missing."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the answer is empty")
    best: dict[str, float] = {}
    for obj in _json_objects(text):
        scores = _from_json(obj, criteria)
        if len(scores) > len(best):
            best = scores
        if len(best) == len(criteria):
            break
    if len(best) < len(criteria):
        best = {**_from_text(text, criteria), **best}
    missing = [name for name in criteria if name not in best]
    if missing:
        raise ValueError(f"no score for {', '.join(missing)}")
    return {name: best[name] for name in criteria}


# Client ------------------------------------------------------------------------------------------------


@dataclass
class JudgeResult:
    """scores: criterion -> 0..10; average: their mean; answer: the judge's raw text; attempts: requests made."""

    scores: dict[str, float]
    average: float
    answer: str
    attempts: int


class _Retry(Exception):
    """A failure worth another attempt; `kind` picks the final message."""

    def __init__(self, kind: str, detail: str, wait: float | None = None, answer: str | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.wait, self.answer = kind, detail, wait, answer


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JudgeClient:
    """Sends cases to the judge (thread-safe: one client may serve many threads)."""

    def __init__(self, config: JudgeConfig, sleep=time.sleep) -> None:
        self.config = config
        self._key = config.api_key()
        self._sleep = sleep

    # Requests --------------------------------------------------------------------------------------
    def request_body(self, messages: list[dict]) -> dict:
        c = self.config
        return {
            "model": c.model,
            "messages": messages,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            **c.extra_body,
        }

    def _post(self, payload: bytes) -> str:
        """One request; returns the answer text or raises _Retry / JudgeError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.config.endpoint, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            try:
                body = _one_line(e.read().decode("utf-8", "replace"), 200)
            except Exception:  # noqa: BLE001 - the status says enough
                body = ""
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and re.fullmatch(r"\d+(\.\d+)?", retry_after.strip()) else None
                raise _Retry("http", f"HTTP {e.code} {body}".strip(), wait) from None
            hint = {
                401: "check the API key variable",
                403: "check the API key variable",
                404: "check the base URL (it should end in /v1) and the model name",
            }.get(e.code, "check the judge settings")
            url = self.config.endpoint
            raise JudgeError(f"the judge at {url} refused the request: HTTP {e.code} {body}; {hint}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry("timeout", "timed out") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Retry("timeout", "timed out") from None
            raise _Retry("connection", _one_line(getattr(e.reason, "strerror", None) or e.reason)) from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retry("connection", _one_line(f"{type(e).__name__}: {e}")) from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError):
            text = raw.decode("utf-8", "replace")
            raise _Retry("answer", "the response is not a chat completion", answer=text) from None
        return content

    def judge_frames(
        self, source: np.ndarray, edited: np.ndarray, instruction: str, reference: np.ndarray | None = None
    ) -> JudgeResult:
        """Score one edit. source, edited: uint8 frames [T,H,W,3] as they will be shown (see
        `sample_clip`); reference: uint8 [H,W,3] or None. Retries, then raises JudgeError."""
        if not instruction or not instruction.strip():
            raise VivaUserError("the instruction is empty; give the edit's instruction text")
        criteria = criteria_for(reference is not None)
        messages = build_messages(source, edited, instruction, reference, self.config.max_side)
        payload = json.dumps(self.request_body(messages)).encode()
        attempts = self.config.retries + 1
        last: _Retry | None = None
        last_answer = ""
        for attempt in range(1, attempts + 1):
            try:
                answer = self._post(payload)
                try:
                    scores = parse_scores(answer, criteria)
                except ValueError as e:
                    raise _Retry("parse", str(e), answer=answer) from None
                return JudgeResult(scores, float(np.mean(list(scores.values()))), answer, attempt)
            except _Retry as e:
                last = e
                if e.answer is not None:
                    last_answer = e.answer
                if attempt < attempts:
                    delay = min(self.config.max_backoff, self.config.backoff * 2 ** (attempt - 1))
                    if e.wait is not None:
                        delay = max(delay, min(e.wait, self.config.max_backoff))
                    self._sleep(delay)
        raise self._final_error(last, attempts, last_answer)

    def _final_error(self, e: _Retry | None, attempts: int, answer: str) -> JudgeError:
        url, n = self.config.endpoint, f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if e is None:  # pragma: no cover - attempts >= 1
            return JudgeError(f"the judge at {url} gave no answer")
        if e.kind == "timeout":
            return JudgeError(
                f"the judge at {url} did not answer within {self.config.timeout:g} s ({n}); "
                "raise the timeout or check the server"
            )
        if e.kind == "connection":
            return JudgeError(
                f"cannot reach the judge at {url}: {e.detail} ({n}); is the server running and the base URL right?"
            )
        if e.kind == "http":
            return JudgeError(f"the judge at {url} kept failing: {e.detail} ({n}); check the server's log")
        what = "a chat completion" if e.kind == "answer" else "scores"
        return JudgeError(
            f"could not read {what} from the judge's answer ({e.detail}; {n}); last answer: {_one_line(answer)!r}"
        )

    def judge_files(
        self,
        video: str | os.PathLike,
        edited: str | os.PathLike,
        instruction: str,
        reference: str | os.PathLike | None = None,
    ) -> JudgeResult:
        """Score one edit given as files (videos, frame folders or images; see viva.io)."""
        from ..io import read_image

        ref = read_image(reference) if reference is not None else None
        n = self.config.num_frames
        return self.judge_frames(sample_clip(video, n), sample_clip(edited, n), instruction, ref)


def sample_clip(path: str | os.PathLike, num_frames: int) -> np.ndarray:
    """`num_frames` frames evenly spaced over a clip (first and last included): uint8 [N,H,W,3]; an image
    or a 1-frame clip gives [1,H,W,3]."""
    from ..io import probe_video, read_video

    info = probe_video(path)
    frames, _ = read_video(path, num_frames=min(num_frames, max(1, info.num_frames)))
    return frames


# Manifests ---------------------------------------------------------------------------------------------

MANIFEST_KEYS = ("id", "video", "edited", "instruction", "reference", "category", "meta")


@dataclass
class JudgeCase:
    """One line of a manifest. Paths are resolved against the manifest's folder. `edited` None: the edit is
    looked up in the outputs folder by id. `line`: the manifest line (1-based)."""

    id: str
    video: Path
    instruction: str
    edited: Path | None = None
    reference: Path | None = None
    category: str | None = None
    meta: dict = field(default_factory=dict)
    line: int = 0


def load_manifest(path: str | os.PathLike) -> list[JudgeCase]:
    """Read a JSONL manifest: one JSON object per line with "video" (source clip) and "instruction"
    (required), "edited" (the edited clip; else found in an outputs folder by id), "reference" (image for
    reference-based edits), "category", "id" (default: the video's file stem) and "meta" (anything, kept
    in the results). Blank lines are skipped. Problems raise VivaUserError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise VivaUserError(f"manifest {path} does not exist; give a JSONL file with one case per line")
    base = path.parent
    cases: list[JudgeCase] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VivaUserError(f"cannot read manifest {path}: {e}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"manifest {path} line {number}"
        try:
            item = json.loads(text)
        except ValueError as e:
            raise VivaUserError(f"{where} is not valid JSON ({e}); each line must be one JSON object") from None
        if not isinstance(item, dict):
            raise VivaUserError(
                f"{where} is not a JSON object; each line must look like {{\"video\": ..., \"instruction\": ...}}"
            )
        unknown = sorted(set(item) - set(MANIFEST_KEYS))
        if unknown:
            raise VivaUserError(
                f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(MANIFEST_KEYS)} "
                "(put extras under \"meta\")"
            )
        for key in ("video", "instruction"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise VivaUserError(f"{where} needs a non-empty string \"{key}\"")
        for key in ("edited", "reference", "category"):
            if item.get(key) is not None and (not isinstance(item[key], str) or not item[key].strip()):
                raise VivaUserError(f"{where}: \"{key}\" must be a non-empty string or absent")
        if item.get("meta") is not None and not isinstance(item["meta"], dict):
            raise VivaUserError(f"{where}: \"meta\" must be a JSON object")
        files = {}
        for key in ("video", "edited", "reference"):
            if item.get(key) is not None:
                p = Path(item[key]).expanduser()
                p = p if p.is_absolute() else base / p
                if not p.exists():
                    raise VivaUserError(f"{where}: {key} {item[key]!r} not found (looked at {p})")
                files[key] = p
        raw_id = item.get("id", files["video"].stem)
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
            raise VivaUserError(f"{where}: \"id\" must be a non-empty string or a number")
        case_id = str(raw_id)
        if case_id in seen:
            raise VivaUserError(
                f"{where}: id {case_id!r} is already used on line {seen[case_id]}; give each line a unique \"id\""
            )
        seen[case_id] = number
        cases.append(JudgeCase(
            id=case_id, video=files["video"], instruction=item["instruction"].strip(), edited=files.get("edited"),
            reference=files.get("reference"), category=item.get("category"), meta=item.get("meta") or {}, line=number,
        ))
    if not cases:
        raise VivaUserError(f"manifest {path} has no cases; add one JSON object per line")
    return cases


def find_output(outputs_dir: Path, case_id: str) -> Path:
    """The edited clip of a case in an outputs folder: OUTPUTS/ID.EXT (a video or image extension) or a
    frame folder OUTPUTS/ID/; exactly one must exist."""
    from ..io.image import IMAGE_FORMATS
    from ..io.writer import VIDEO_FORMATS

    found = [outputs_dir / f"{case_id}{ext}" for ext in (*VIDEO_FORMATS, *IMAGE_FORMATS)]
    found = [p for p in found if p.is_file()]
    if (outputs_dir / case_id).is_dir():
        found.append(outputs_dir / case_id)
    if not found:
        raise VivaUserError(
            f"no edited clip for case {case_id!r} in {outputs_dir} (expected {case_id}.mp4, another video or "
            f"image extension, or a folder {case_id}/)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise VivaUserError(f"case {case_id!r} has several edited clips in {outputs_dir}: {names}; keep one")
    return found[0]


def _case_fingerprint(case: JudgeCase, edited: Path, config: JudgeConfig) -> dict:
    return {
        **config.fingerprint(),
        "instruction": case.instruction,
        "video": str(case.video),
        "edited": str(edited),
        "reference": str(case.reference) if case.reference else None,
    }


def _read_results(path: Path, ids: set[str]) -> dict[str, dict]:
    """Records of an earlier (maybe interrupted) run, by id; a torn last line is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    records: dict[str, dict] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            case_id = record["id"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # an interrupted write
            raise VivaUserError(
                f"results file {path} line {number} is not a result record; delete the file to start over"
            ) from None
        if case_id not in ids:
            raise VivaUserError(
                f"results file {path} holds case {case_id!r}, which is not in the manifest; use another results file"
            )
        records[case_id] = record
    return records


def _write_records(path: Path, records: list[dict]) -> None:
    from ..io.atomic import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))


def judge_manifest(
    manifest: str | os.PathLike,
    results: str | os.PathLike,
    config: JudgeConfig,
    outputs_dir: str | os.PathLike | None = None,
    workers: int = 1,
    skip_errors: bool = False,
    progress: bool = True,
    client: JudgeClient | None = None,
) -> list[dict]:
    """Judge every case of a manifest; write one JSON record per case to `results` (JSONL, in manifest
    order) and return the records.

    Resumable: records already in `results` for the same case, judge model, prompt version and frame
    sampling are kept and not asked again; each new record is appended (flushed and fsynced) as soon as it
    arrives, and the file is finally rewritten atomically in manifest order. outputs_dir: where edits of
    cases without "edited" are found (`find_output`). workers: concurrent requests. skip_errors: a case
    whose judging fails gets a record with "error" (asked again on the next run) instead of stopping."""
    from tqdm import tqdm

    cases = load_manifest(manifest)
    results = Path(results)
    if workers < 1:
        raise VivaUserError(f"workers must be at least 1, got {workers}")
    outputs = Path(outputs_dir) if outputs_dir is not None else None
    if outputs is not None and not outputs.is_dir():
        raise VivaUserError(f"outputs folder {outputs} does not exist; give the folder holding the edited clips")
    edited: dict[str, Path] = {}
    for case in cases:
        if case.edited is not None:
            edited[case.id] = case.edited
        elif outputs is None:
            raise VivaUserError(
                f"manifest line {case.line} (case {case.id!r}) has no \"edited\" clip; "
                "add one or give an outputs folder"
            )
        else:
            edited[case.id] = find_output(outputs, case.id)
    client = client or JudgeClient(config)
    by_id = {c.id: c for c in cases}
    done = {
        cid: r for cid, r in _read_results(results, set(by_id)).items()
        if "error" not in r and r.get("fingerprint") == _case_fingerprint(by_id[cid], edited[cid], config)
    }
    _write_records(results, [done[c.id] for c in cases if c.id in done])  # drop torn or stale lines first
    todo = [c for c in cases if c.id not in done]
    lock = threading.Lock()

    def run(case: JudgeCase) -> dict:
        record = {
            "id": case.id, "category": case.category, "instruction": case.instruction, "video": str(case.video),
            "edited": str(edited[case.id]), "reference": str(case.reference) if case.reference else None,
            "meta": case.meta, "fingerprint": _case_fingerprint(case, edited[case.id], config),
        }
        try:
            result = client.judge_files(case.video, edited[case.id], case.instruction, case.reference)
        except VivaUserError as e:
            if not skip_errors:
                raise VivaUserError(f"case {case.id!r} (manifest line {case.line}): {e}") from None
            return {**record, "error": str(e)}
        return {
            **record,
            "scores": result.scores,
            "average": result.average,
            "answer": result.answer,
            "attempts": result.attempts,
        }

    bar = tqdm(total=len(cases), initial=len(done), desc="judge", disable=not progress)
    with open(results, "a", encoding="utf-8") as sink, bar:
        def keep(record: dict) -> None:
            with lock:
                done[record["id"]] = record
                sink.write(json.dumps(record, sort_keys=True) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)

        if workers == 1:
            for case in todo:
                keep(run(case))
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(run, case) for case in todo]
                try:
                    for future in as_completed(futures):
                        keep(future.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    records = [done[c.id] for c in cases]
    _write_records(results, records)
    return records


def summarize(records: list[dict]) -> dict:
    """Mean scores overall and per category: {"overall": {criterion: mean, "average": mean, "count": n,
    "errors": k}, "by_category": {category: {...}}}. Criteria missing from a record (subject_similarity
    of non-reference cases) are averaged over the records that have them."""

    def block(rs: list[dict]) -> dict:
        ok = [r for r in rs if "scores" in r]
        out: dict = {"count": len(ok), "errors": len(rs) - len(ok)}
        for name in REFERENCE_CRITERIA:
            values = [r["scores"][name] for r in ok if name in r["scores"]]
            if values:
                out[name] = float(np.mean(values))
        if ok:
            out["average"] = float(np.mean([r["average"] for r in ok]))
        return out

    categories: dict[str, list[dict]] = {}
    for r in records:
        categories.setdefault(r.get("category") or "uncategorized", []).append(r)
    return {"overall": block(records), "by_category": {k: block(v) for k, v in sorted(categories.items())}}
