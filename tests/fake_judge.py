"""A fake OpenAI-compatible chat-completions endpoint: a real local HTTP server (http.server in a thread)
playing a VLM judge, for tests/test_judge.py and tests/test_judge_cli.py (the `judge` fixture in conftest.py
starts one per test)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from viva.rewards.judge import REFERENCE_CRITERIA


def completion(content: str) -> dict:
    return {"id": "cmpl-1", "object": "chat.completion", "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def scores_answer(body: dict, value: int = 7) -> str:
    """A well-formed answer naming exactly the criteria the prompt asks for."""
    prompt = body["messages"][1]["content"][-1]["text"]
    names = [n for n in REFERENCE_CRITERIA if f"- {n}:" in prompt]
    return "Here you go:\n```json\n" + json.dumps({**{n: value for n in names}, "reason": "fine"}) + "\n```"


class FakeJudge:
    """A local endpoint. `script`: per request, in order, (status, content or payload dict, delay s, headers);
    `content` may be a callable(body) -> str. When the script runs out, answers with 7s."""

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, content, delay, headers = fake.script.pop(0) if fake.script else (200, scores_answer, 0.0, {})
                if delay:
                    time.sleep(delay)
                if callable(content):
                    content = content(body)
                payload = json.dumps(completion(content) if isinstance(content, str) and status == 200 else content)
                data = payload.encode() if not isinstance(content, bytes) else content
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
