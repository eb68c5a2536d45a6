"""The OpenAI-compatible backend against a real HTTP server on loopback that speaks
chat completions the way vLLM does: usage, /v1/models with max_model_len, /tokenize,
errors, 429/500, slow replies."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import settings
from serving import BackendError, ContextOverflowError, get_lm, registry
from serving.backends.openai_http import OpenAIBackend

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


class FakeVLLM:
    """Scripted replies for /v1/chat/completions; every request is recorded."""

    def __init__(self, model: str = "served/model", max_model_len: int = 4096) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.script: deque = deque()  # ("ok", text) | ("status", code, body, headers) | ("sleep", s, next)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.tokenize_count: int | None = None
        self.tokenize_calls = 0
        self.models_reply: tuple[int, str, bytes] | None = None  # status, content type, body
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: without TCP_NODELAY (which real
            # servers set: uvicorn, vLLM) the body waits ~40 ms on the client's delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code, payload, headers=None):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path == "/v1/models" and fake.models_reply:
                    code, kind, body = fake.models_reply
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "max_model_len": fake.max_model_len}]})
                elif self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/tokenize":
                    fake.tokenize_calls += 1
                    if fake.tokenize_count is None:
                        return self._send(404, {"detail": "Not Found"})
                    return self._send(200, {"count": fake.tokenize_count, "max_model_len": fake.max_model_len,
                                            "tokens": list(range(fake.tokenize_count))})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    step = fake.script.popleft() if fake.script else ("ok", "default reply")
                if step[0] == "trickle":  # headers, then a byte now and then: never a read timeout
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
                    with fake.lock:
                        fake.in_flight -= 1
                    return
                try:
                    while step[0] == "sleep":
                        time.sleep(step[1])
                        step = step[2]
                    if step[0] == "ok":
                        self._send(200, {
                            "id": "chatcmpl-1", "object": "chat.completion", "model": fake.model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": step[1]}}],
                            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                        })
                    else:
                        _, code, payload, headers = step
                        self._send(code, payload, headers)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def chat_requests(self) -> int:
        return len(self.requests)


@pytest.fixture
def vllm():
    fake = FakeVLLM()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def backend(fake: FakeVLLM, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    return OpenAIBackend(base_url=fake.base_url, **kw)


def test_reply_usage_model_and_window_come_from_the_server(vllm):
    vllm.script.append(("ok", "Paris."))
    lm = get_lm(backend(vllm))
    r = lm.chat("Capital of France?", max_tokens=20, node="q")
    assert r.text == "Paris." and r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7
    assert lm.model == "served/model" and lm.context_window == 4096
    sent = vllm.requests[0]
    assert sent["model"] == "served/model" and sent["max_tokens"] == 20 and sent["temperature"] == 0.0
    assert sent["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert r.call_id is not None


def test_structured_output_is_sent_both_ways_and_never_as_guided_json(vllm):
    vllm.script.append(("ok", '{"answer": "42"}'))
    r = get_lm(backend(vllm)).chat("?", json_schema=SCHEMA, stop=["\n\n"])
    sent = vllm.requests[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent["structured_outputs"] == {"json": SCHEMA}
    assert "guided_json" not in sent and sent["stop"] == ["\n\n"]
    assert r.parse_json() == {"answer": "42"}


def test_hosted_openai_gets_only_standard_fields(vllm):
    vllm.script.append(("ok", "{}"))
    get_lm(backend(vllm, strict_openai=True)).chat("?", json_schema=SCHEMA, repeat_penalty=1.3)
    sent = vllm.requests[0]
    assert "structured_outputs" not in sent and "repetition_penalty" not in sent
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    vllm.script.append(("ok", "x"))
    get_lm(backend(vllm)).chat("!", repeat_penalty=1.3)
    assert vllm.requests[1]["repetition_penalty"] == 1.3  # vLLM's extra sampling field


def test_429_and_500_are_retried_with_backoff(vllm):
    vllm.script.extend([
        ("status", 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
        ("status", 500, {"object": "error", "message": "boom", "code": 500}, {}),
        ("status", 503, {"error": {"message": "loading"}}, {}),
        ("ok", "finally"),
    ])
    b = backend(vllm, retries=3)
    r = get_lm(b).chat("persist")
    assert r.text == "finally" and vllm.chat_requests() == 4 and b.retried == 3


def test_retries_run_out_with_a_clear_error(vllm):
    vllm.script.extend([("status", 500, {"message": "boom"}, {})] * 3)
    b = backend(vllm, retries=2)
    with pytest.raises(BackendError) as info:
        get_lm(b).chat("doomed")
    assert vllm.chat_requests() == 3
    assert "answered 500: boom" in info.value.cause and "after 2 retries" in info.value.cause


def test_slow_replies_time_out_and_are_retried(vllm):
    vllm.script.extend([("sleep", 1.0, ("ok", "too late")), ("ok", "in time")])
    b = backend(vllm, timeout=0.3, retries=1)
    started = time.perf_counter()
    r = get_lm(b).chat("hurry")
    assert r.text == "in time" and vllm.chat_requests() == 2 and b.retried == 1
    assert time.perf_counter() - started < 1.5


def test_a_timeout_that_persists_names_the_setting(vllm):
    vllm.script.extend([("sleep", 1.0, ("ok", "late"))] * 2)
    with pytest.raises(BackendError) as info:
        get_lm(backend(vllm, timeout=0.2, retries=1)).chat("hurry")
    assert "did not answer within 0.2 s" in info.value.cause
    assert "TOMES_REQUEST_TIMEOUT" in info.value.fix


def test_a_server_that_trickles_bytes_is_cut_off_at_the_calls_bound(vllm):
    # Each read gets a byte in time, so httpx's read timeout never fires; the old code
    # waited out every trickle (4 x 6 s here; 4 x 600 s with the defaults).
    vllm.script.extend([("trickle", 6.0)] * 4)
    b = backend(vllm, timeout=0.6, call_timeout=1.5, retries=3)
    started = time.perf_counter()
    with pytest.raises(BackendError) as info:
        get_lm(b).chat("are you there?")
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, elapsed
    assert "did not answer within" in info.value.cause
    assert "1.5 s bound (TOMES_CALL_TIMEOUT) ran out" in info.value.cause
    assert "TOMES_REQUEST_TIMEOUT" in info.value.fix and vllm.chat_requests() >= 2


def test_context_errors_from_the_server_become_overflow_errors_without_retries(vllm):
    vllm.script.append(("status", 400, {
        "object": "error", "type": "BadRequestError", "code": 400,
        "message": "This model's maximum context length is 4096 tokens. However, you requested "
                   "5000 tokens (4900 in the messages, 100 in the completion).",
    }, {}))
    with pytest.raises(ContextOverflowError) as info:
        get_lm(backend(vllm, retries=3)).chat("short enough for our estimate", max_tokens=100)
    assert vllm.chat_requests() == 1
    assert "4,096-token window" in info.value.cause and "longer-context model" in info.value.fix


def test_other_client_errors_are_not_retried(vllm):
    vllm.script.append(("status", 401, {"error": {"message": "bad key"}}, {}))
    with pytest.raises(BackendError) as info:
        get_lm(backend(vllm, retries=3)).chat("x")
    assert vllm.chat_requests() == 1 and "OPENAI_API_KEY" in info.value.fix


def test_api_key_comes_from_the_named_environment_variable(vllm, monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "sekrit")
    with settings.override(api_key_env="MY_SERVER_KEY"):
        b = backend(vllm)
    get_lm(b).chat("x")
    assert vllm.headers[0].get("Authorization") == "Bearer sekrit"


def test_unreachable_server_names_the_url_and_how_to_start_one():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    b = OpenAIBackend(base_url=url, model="m", retries=2, backoff=0.01)
    with pytest.raises(BackendError) as info:
        get_lm(b).chat("anyone?")
    assert url in info.value.cause and "cannot reach" in info.value.cause
    assert "tomes serve vllm --preset" in info.value.fix
    assert b.retried == 2


@pytest.mark.parametrize("reply, expected", [
    ((200, "text/html", b"<html><body>Welcome to nginx!</body></html>"), "not an OpenAI model list"),
    ((200, "application/json", b'{"models": ["m"]}'), "not an OpenAI model list"),
    ((500, "text/plain", b"Internal Server Error"), "HTTP 500"),
])
def test_a_models_listing_that_is_not_one_is_named_not_guessed_around(vllm, reply, expected):
    vllm.models_reply = reply
    with pytest.raises(BackendError) as info:  # no model named: nothing to call without it
        get_lm(backend(vllm, retries=0)).chat("anyone?")
    assert expected in info.value.cause and vllm.base_url in info.value.cause
    assert "/v1" in info.value.fix or "log" in info.value.fix
    assert vllm.chat_requests() == 0
    with pytest.raises(BackendError, match=expected):  # what a resume checks first
        backend(vllm, model="served/model").check()


def test_concurrency_is_capped_at_the_backend_capacity(vllm):
    vllm.script.extend([("sleep", 0.15, ("ok", f"r{i}")) for i in range(6)])
    lm = get_lm(backend(vllm, capacity=2))
    out = lm.batch([f"p{i}" for i in range(6)])
    assert len(out) == 6 and vllm.max_in_flight == 2


def test_exact_prompt_size_from_tokenize_near_the_window(vllm):
    vllm.max_model_len = 200
    lm = get_lm(backend(vllm))
    prompt = "word " * 150  # ~150 approximate tokens + 40 reply > 80% of 200
    vllm.tokenize_count = 60  # the server says it is small: the call goes ahead
    assert lm.chat(prompt, max_tokens=40).text == "default reply"
    assert vllm.tokenize_calls == 1
    vllm.tokenize_count = 190  # the server says it is too big: caught before the call
    with pytest.raises(ContextOverflowError):
        lm.chat(prompt + "more", max_tokens=40)
    assert vllm.chat_requests() == 1


def test_servers_without_tokenize_fall_back_to_the_estimate(vllm):
    vllm.max_model_len = 200
    lm = get_lm(backend(vllm))
    with pytest.raises(ContextOverflowError):
        lm.chat("word " * 190, max_tokens=40)
    assert vllm.tokenize_calls == 1 and vllm.chat_requests() == 0


def test_settings_choose_the_openai_backend_and_its_url(vllm):
    vllm.script.append(("ok", "via settings"))
    with settings.override(backend="openai", base_url=vllm.base_url, model=None):
        lm = get_lm()
        assert lm.backend.name == "openai" and lm.chat("hi").text == "via settings"
        assert registry.get("openai") is lm.backend
