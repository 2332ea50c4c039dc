"""The VLM judge client against a real local HTTP server (tests/fake_judge.py: http.server in a thread,
started per test by the `judge` fixture in conftest.py) playing an OpenAI-compatible endpoint: request shape, parsing, retries, timeouts, refused connections, manifests."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viva.errors import VivaUserError
from viva.io import write_image, write_video
from viva.rewards.judge import (
    CRITERIA,
    CRITERION_TEXT,
    REFERENCE_CRITERIA,
    SYSTEM_PROMPT,
    JudgeClient,
    JudgeConfig,
    JudgeError,
    load_manifest,
    judge_manifest,
    parse_scores,
    summarize,
    user_text,
)

from fake_judge import scores_answer  # tests/fake_judge.py

H, W, T = 48, 64, 10


def make_clip(shift: int = 0) -> np.ndarray:
    """uint8 [T,H,W,3]: a blue gradient with a red square moving right."""
    frames = np.zeros((T, H, W, 3), np.uint8)
    frames[..., 2] = np.linspace(40, 160, W, dtype=np.uint8)
    for t in range(T):
        x = (3 * t + shift) % (W - 12)
        frames[t, 10:22, x : x + 12] = (230, 30, 30)
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judge")
    (root / "src").mkdir()
    (root / "out").mkdir()
    paths = {
        "video": write_video(root / "src" / "clip.mp4", make_clip()),
        "edited": write_video(root / "src" / "clip_edit.mp4", make_clip(shift=5)),
        "reference": root / "src" / "ref.png",
        "root": root,
    }
    ref = np.full((40, 40, 3), 255, np.uint8)
    ref[10:30, 10:30] = (20, 200, 60)
    write_image(paths["reference"], ref)
    return paths


def config(url: str, **kwargs) -> JudgeConfig:
    base = dict(base_url=url, model="judge-vlm", num_frames=4, timeout=5.0, retries=2, backoff=0.01)
    return JudgeConfig(**{**base, **kwargs})


def image_parts(body: dict) -> list[dict]:
    return [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]


# ------------------------------------------------------------------------------------------- requests


def test_request_shape_and_parsed_scores(judge, files, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-local-test")
    client = JudgeClient(config(judge.url, api_key_env="JUDGE_TEST_KEY", max_side=32))
    result = client.judge_files(files["video"], files["edited"], "move the red square to the right")
    assert result.scores == {name: 7.0 for name in CRITERIA} and result.average == 7.0 and result.attempts == 1
    (request,) = judge.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-local-test"
    body = request["body"]
    assert body["model"] == "judge-vlm" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    system, user = body["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    assert user["role"] == "user"
    parts = image_parts(body)
    assert len(parts) == 2 * 4  # 4 source frames, 4 edited frames
    for part in parts:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.format == "PNG" and image.size == (32, 24)  # longer side downscaled to max_side
    text = user["content"][-1]["text"]
    assert '"move the red square to the right"' in text and "subject_similarity" not in text
    # Frames are sampled evenly, first and last included (0, 3, 6, 9 of 10): the red square starts at
    # x = 3 t in the source, so its centre is at (3 t + 6) / 2 in the 32-pixel-wide images.
    for part, t in zip(parts[:4], (0, 3, 6, 9)):
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))))
        red = (image[..., 0] > 150) & (image[..., 1] < 100)
        assert abs(np.nonzero(red)[1].mean() - (3 * t + 6) / 2) < 1.5, t


def test_reference_edit_adds_image_and_criterion(judge, files):
    client = JudgeClient(config(judge.url))
    result = client.judge_files(files["video"], files["edited"], "add the green square", reference=files["reference"])
    assert set(result.scores) == set(REFERENCE_CRITERIA)
    body = judge.requests[0]["body"]
    assert len(image_parts(body)) == 2 * 4 + 1
    assert "Authorization" not in judge.requests[0]["headers"]
    assert "REFERENCE" in body["messages"][1]["content"][-1]["text"]


def test_parse_scores_tolerates_common_answer_shapes():
    assert parse_scores('{"instruction_following": 7, "preservation": 9, "quality": 8}') == {
        "instruction_following": 7.0, "preservation": 9.0, "quality": 8.0}
    fenced = 'Sure!\n```json\n{"instruction_following": "7/10", "preservation": 12, "quality": -3}\n```\nThanks'
    assert parse_scores(fenced) == {"instruction_following": 7.0, "preservation": 10.0, "quality": 0.0}  # clamped
    lines = "The edit adds 2 cats.\nInstruction following: Score: 7/10\nPreservation - 8/10\n**Quality**: 4/5"
    assert parse_scores(lines) == {"instruction_following": 7.0, "preservation": 8.0, "quality": 8.0}
    table = (
        "| Criterion | Score |\n|---|---|\n| Instruction following | 6 |\n| Preservation | 9 |\n"
        "| Visual quality | 7 |"
    )
    assert parse_scores(table) == {"instruction_following": 6.0, "preservation": 9.0, "quality": 7.0}
    nested = '{"scores": {"Instruction Following": {"score": 5}, "Preservation Score": 6, "quality": 7.5}}'
    assert parse_scores(nested) == {"instruction_following": 5.0, "preservation": 6.0, "quality": 7.5}
    ranged = parse_scores("Instruction following (0-10): 3\nPreservation (0-10): 10\nQuality: 8", CRITERIA)
    assert ranged["instruction_following"] == 3.0  # "(0-10)" is not read as a score
    unreadable = (
        ("I cannot evaluate videos.", "instruction_following"),
        ('{"instruction_following": 7}', "preservation"),
        ("", "empty"),
    )
    for bad, missing in unreadable:
        with pytest.raises(ValueError, match=missing):
            parse_scores(bad)


def test_docs_show_the_prompts_verbatim():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "judge.md").read_text()
    assert SYSTEM_PROMPT in doc
    assert user_text("add a red star at the top left", 8, 8, False) in doc
    assert CRITERION_TEXT["subject_similarity"] in doc


# ---------------------------------------------------------------------------------------------- failures


def test_malformed_answers_are_retried_then_fail_clearly(judge, files):
    judge.script = [(200, "I think the edit is pretty good overall!", 0.0, {})] * 3
    client = JudgeClient(config(judge.url, retries=2))
    with pytest.raises(JudgeError) as info:
        client.judge_files(files["video"], files["edited"], "make it snow")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, VivaUserError)
    assert "could not read scores" in message and "3 attempts" in message
    assert "I think the edit is pretty good overall!" in message  # the raw answer is named
    assert len(judge.requests) == 3
    # A response that is not a chat completion at all is retried too; a good answer then wins.
    judge.requests.clear()
    judge.script = [
        (200, {"unexpected": True}, 0.0, {}),
        (200, "Instruction following: 9\nPreservation: 8\nQuality: 7", 0.0, {}),
    ]
    result = client.judge_files(files["video"], files["edited"], "make it snow")
    assert result.attempts == 2 and result.scores["instruction_following"] == 9.0


def test_timeout(judge, files):
    judge.script = [(200, scores_answer, 3.0, {})] * 2
    client = JudgeClient(config(judge.url, timeout=0.3, retries=1))
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"did not answer within 0.3 s \(2 attempts\)"):
        client.judge_files(files["video"], files["edited"], "make it snow")
    assert time.monotonic() - start < 2.5  # gave up long before the server's 3 s answer
    assert len(judge.requests) == 2


def test_refused_connection(files):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = JudgeClient(config(f"http://127.0.0.1:{port}/v1", retries=1))
    with pytest.raises(JudgeError) as info:
        client.judge_files(files["video"], files["edited"], "make it snow")
    message = str(info.value)
    assert f"cannot reach the judge at http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "refused" in message.lower() and "2 attempts" in message


def test_server_errors_are_retried_client_errors_are_not(judge, files):
    judge.script = [(500, {"error": "overloaded"}, 0.0, {}), (429, {"error": "slow down"}, 0.0, {"Retry-After": "0"}),
                    (200, scores_answer, 0.0, {})]
    client = JudgeClient(config(judge.url, retries=3))
    result = client.judge_files(files["video"], files["edited"], "make it snow")
    assert result.attempts == 3 and len(judge.requests) == 3
    assert result.scores == {name: 7.0 for name in CRITERIA}
    judge.requests.clear()
    judge.script = [(500, {"error": "down"}, 0.0, {})] * 2
    with pytest.raises(JudgeError, match=r"kept failing: HTTP 500 .*down.*\(2 attempts\)"):
        JudgeClient(config(judge.url, retries=1)).judge_files(files["video"], files["edited"], "x")
    judge.requests.clear()
    judge.script = [(404, {"error": "model not found"}, 0.0, {})]
    with pytest.raises(JudgeError, match=r"HTTP 404 .*model not found.*base URL"):
        client.judge_files(files["video"], files["edited"], "make it snow")
    assert len(judge.requests) == 1  # no retry for a request the server will never accept


def test_config_errors(monkeypatch):
    with pytest.raises(VivaUserError, match="must start with http"):
        JudgeConfig(base_url="localhost:8000", model="m")
    with pytest.raises(VivaUserError, match="num_frames"):
        JudgeConfig(base_url="http://x/v1", model="m", num_frames=0)
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(VivaUserError, match="NO_SUCH_JUDGE_KEY"):
        JudgeClient(JudgeConfig(base_url="http://x/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY"))
    assert JudgeConfig(base_url="http://x/v1/", model="m").endpoint == "http://x/v1/chat/completions"
    assert JudgeConfig(base_url="http://x/v1/chat/completions", model="m").endpoint == "http://x/v1/chat/completions"


# --------------------------------------------------------------------------------------------- manifests


def write_lines(path: Path, items: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return path


def test_manifest_errors_name_the_line(tmp_path, files):
    video = str(files["video"])
    good = {"video": video, "instruction": "make it snow"}
    cases = [
        (["{not json"], "line 1 is not valid JSON"),
        ([good, {"video": video}], 'line 2 needs a non-empty string "instruction"'),
        ([good, {**good, "id": "b", "referance": "x.png"}], "line 2 has unknown key(s) referance"),
        ([{**good, "video": "missing.mp4"}], "line 1: video 'missing.mp4' not found"),
        ([good, "", good], "line 3: id 'clip' is already used on line 1"),
        ([{**good, "meta": [1]}], 'line 1: "meta" must be a JSON object'),
        ([], "has no cases"),
    ]
    for i, (lines, fragment) in enumerate(cases):
        path = write_lines(tmp_path / f"m{i}.jsonl", lines)
        with pytest.raises(VivaUserError) as info:
            load_manifest(path)
        assert fragment in str(info.value) and "\n" not in str(info.value), (fragment, str(info.value))
    with pytest.raises(VivaUserError, match="does not exist"):
        load_manifest(tmp_path / "none.jsonl")


def test_judge_manifest_writes_and_resumes(judge, files, tmp_path):
    root = files["root"]
    # Relative paths resolve against the manifest's folder; case "b" finds its edit in the outputs folder.
    manifest = write_lines(root / "cases.jsonl", [
        {"id": "a", "video": "src/clip.mp4", "edited": "src/clip_edit.mp4", "instruction": "move it",
         "category": "replace"},
        {"id": "b", "video": "src/clip.mp4", "instruction": "add a green square", "reference": "src/ref.png",
         "category": "ref_add"},
        {"id": "c", "video": "src/clip.mp4", "instruction": "remove the square", "category": "remove",
         "meta": {"n": 1}},
    ])
    write_video(root / "out" / "b.mp4", make_clip(shift=2))
    write_video(root / "out" / "c.mp4", make_clip(shift=4))
    results = tmp_path / "judged.jsonl"
    cfg = config(judge.url, num_frames=2)
    records = judge_manifest(manifest, results, cfg, outputs_dir=root / "out", progress=False)
    assert [r["id"] for r in records] == ["a", "b", "c"] and len(judge.requests) == 3
    assert set(records[1]["scores"]) == set(REFERENCE_CRITERIA) and records[2]["meta"] == {"n": 1}
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == ["a", "b", "c"]
    # Run again: nothing is asked again.
    judge_manifest(manifest, results, cfg, outputs_dir=root / "out", progress=False)
    assert len(judge.requests) == 3
    # An interrupted run (one record, then a torn line) resumes with the two missing cases only.
    first = results.read_text().splitlines()[0]
    results.write_text(first + "\n" + '{"id": "b", "scor')
    judge.requests.clear()
    records = judge_manifest(manifest, results, cfg, outputs_dir=root / "out", workers=2, progress=False)
    assert len(judge.requests) == 2 and [r["id"] for r in records] == ["a", "b", "c"]
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == ["a", "b", "c"]
    # Another judge model means new judgements.
    judge.requests.clear()
    other = config(judge.url, num_frames=2, model="other")
    judge_manifest(manifest, results, other, outputs_dir=root / "out", progress=False)
    assert len(judge.requests) == 3
    summary = summarize(records)
    assert summary["overall"]["count"] == 3 and summary["overall"]["average"] == 7.0
    assert summary["by_category"]["ref_add"]["subject_similarity"] == 7.0
    # Failures: by default they stop the run with the case named; skip_errors records them instead.
    judge.script = [(200, "no idea", 0.0, {})] * 3
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(VivaUserError, match=r"case 'a' \(manifest line 1\): could not read scores"):
        judge_manifest(manifest, fresh, config(judge.url, num_frames=2, retries=2), outputs_dir=root / "out",
                       progress=False)
    judge.script = [(200, "no idea", 0.0, {})] * 3
    records = judge_manifest(manifest, fresh, config(judge.url, num_frames=2, retries=2), outputs_dir=root / "out",
                             skip_errors=True, progress=False)
    assert "error" in records[0] and "scores" in records[1]
    assert summarize(records)["overall"]["errors"] == 1
    # Missing outputs are named.
    with pytest.raises(VivaUserError, match="no \"edited\" clip"):
        judge_manifest(manifest, tmp_path / "x.jsonl", cfg, progress=False)
    (root / "out" / "c.mp4").unlink()
    with pytest.raises(VivaUserError, match="no edited clip for case 'c'"):
        judge_manifest(manifest, tmp_path / "x.jsonl", cfg, outputs_dir=root / "out", progress=False)
