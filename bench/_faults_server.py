"""A misbehaving OpenAI-compatible server on loopback for bench/faults.py (after
FakeVLLM in tests/test_serving_http.py): each chat request takes the next step of a
script; /v1/models can be made to answer with anything."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Script steps for /v1/chat/completions:
#   ("ok", text) · ("empty",) content "" · ("status", code, body, headers)
#   ("sleep", seconds) then nothing · ("trickle", seconds) a byte every 50 ms
#   ("malformed",) a 200 whose body is not JSON


class FaultServer:
    def __init__(self, model: str = "served/model", max_model_len: int = 4096) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.script: deque = deque()
        self.default: tuple = ("ok", "Mara kept the lighthouse on the northern cape for thirty years.")
        self.models_reply: tuple[int, str, bytes] | None = None  # status, content type, body
        self.chat_requests = 0
        self.first_seen: float | None = None  # time.monotonic() of the first request of any kind
        self.first_chat: float | None = None  # ... and of the first chat request
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _raw(self, code: int, kind: str, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, code: int, payload: Any, headers: dict | None = None) -> None:
                self._raw(code, "application/json", json.dumps(payload).encode(), headers)

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    if fake.first_seen is None:
                        fake.first_seen = time.monotonic()

            def do_GET(self) -> None:
                if self.path == "/v1/models" and fake.models_reply:
                    self._raw(*fake.models_reply)
                elif self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "max_model_len": fake.max_model_len}]})
                elif self.path == "/health":
                    self._json(200, {})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"detail": "Not Found"})
                with fake.lock:
                    fake.chat_requests += 1
                    fake.first_chat = fake.first_chat or time.monotonic()
                    step = fake.script.popleft() if fake.script else fake.default
                what = step[0]
                if what in ("ok", "empty"):
                    self._json(200, {
                        "id": "chatcmpl-1", "object": "chat.completion", "model": fake.model,
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": step[1] if what == "ok" else ""}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    })
                elif what == "status":
                    self._json(step[1], step[2], step[3])
                elif what == "malformed":
                    self._raw(200, "application/json", b'{"choices": [{"message": {"content": "tru')
                elif what == "sleep":  # then hang up without a reply
                    time.sleep(step[1])
                    self.close_connection = True
                elif what == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(int(step[1] / 0.05)):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
