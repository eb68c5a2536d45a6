"""Several OpenAI-compatible servers of one model behind one backend: two real loopback
HTTP servers (tests/test_serving_http.py's FakeVLLM), one of them killed mid-batch, then
back after its cool-down."""

from __future__ import annotations

import socket
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from sqlalchemy import select

from app import settings
from app.store import Call, session_scope
from serving import BackendError, get_lm
from serving.backends.openai_http import OpenAIBackend
from tests.test_serving_http import FakeVLLM


class Server(FakeVLLM):
    """A FakeVLLM that can be killed the way a crashed server goes: the port closes and
    every open connection drops, mid-reply or not; and started again on its port."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.connections: list[socket.socket] = []
        if port:  # the same address as a server that was killed
            handler = self.server.RequestHandlerClass
            self.server.server_close()
            self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
            self.server.daemon_threads = True
            self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        serve = self.server.process_request

        def process_request(request, address):
            self.connections.append(request)
            serve(request, address)

        self.server.process_request = process_request
        self.server.handle_error = lambda *a: None  # a killed server's broken pipes
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def slow(self, n: int, seconds: float) -> None:
        self.script.extend(("sleep", seconds, ("ok", f"from {self.port}")) for _ in range(n))

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(port: int = 0) -> Server:
        started.append(Server(port))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def backend(*fakes: Server, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    return OpenAIBackend(base_url=[f.base_url for f in fakes], **kw)


def test_requests_spread_by_load_over_both_and_capacity_is_the_sum(servers):
    a, b = servers(), servers()
    a.slow(8, 0.15)
    b.slow(8, 0.15)
    lm = get_lm(backend(a, b, capacity=2))
    assert lm.capacity == 4 and lm.backend.capacity == 4
    out = lm.batch([f"p{i}" for i in range(8)])
    assert len(out) == 8
    assert a.chat_requests() + b.chat_requests() == 8
    # Least in flight: neither server ever holds more than its share while the other idles.
    assert a.max_in_flight == 2 and b.max_in_flight == 2
    assert {r.endpoint for r in out} == {a.base_url, b.base_url}
    assert {r.text for r in out} == {f"from {a.port}", f"from {b.port}"}
    # The call log says which server answered each call.
    from app.store import Call, session_scope

    with session_scope() as s:
        served = {s.get(Call, r.call_id).params["endpoint"] for r in out}
    assert served == {a.base_url, b.base_url}


def test_a_server_killed_mid_batch_loses_no_call(servers):
    a, b = servers(), servers()
    a.slow(40, 0.1)
    b.slow(40, 0.4)  # b is slow: it is still holding requests when it dies
    be = backend(a, b, capacity=3, retries=1)
    lm = get_lm(be)
    prompts = [f"question {i}" for i in range(12)]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=lm.batch(prompts)))
    thread.start()
    deadline = time.monotonic() + 10
    while b.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.in_flight >= 2
    b.kill()
    thread.join(30)
    out = result["out"]  # no exception: the batch finished on a
    assert len(out) == 12
    assert all(r.text in (f"from {a.port}", f"from {b.port}") for r in out)
    assert be.failovers >= 2  # b's requests in flight went on to a
    state = {e["url"]: e["state"] for e in be.describe()["endpoints"]}
    assert state[a.base_url] == "up" and state[b.base_url].startswith("cooling down")
    with session_scope() as s:  # every call logged once, none as an error
        calls = s.scalars(select(Call)).all()
    assert len(calls) == 12 and not [c for c in calls if c.error]
    assert sorted(c.messages[-1]["content"] for c in calls) == sorted(prompts)


def test_a_dead_server_cools_down_and_is_used_again_when_back(servers):
    a, b = servers(), servers()
    port = b.port
    now = [1000.0]
    be = backend(a, b, cooldown=30.0)
    be.endpoints.clock = lambda: now[0]
    lm = get_lm(be)
    b.kill()
    first = [lm.chat(f"before {i}", cache=False) for i in range(4)]
    assert all(r.endpoint == a.base_url for r in first)
    down = be.endpoints.items[1]
    assert down.failures == 1  # tried once, then left alone while it cools down
    back = servers(port)  # b restarts on its port
    assert back.base_url == b.base_url
    during = [lm.chat(f"during {i}", cache=False) for i in range(4)]
    assert back.chat_requests() == 0 and all(r.endpoint == a.base_url for r in during)
    now[0] += 31  # the cool-down is over: b is tried again, and answers
    after = [lm.chat(f"after {i}", cache=False) for i in range(4)]
    assert back.chat_requests() >= 1 and b.base_url in {r.endpoint for r in after}
    assert down.failures == 1 and be.describe()["endpoints"][1]["state"] == "up"


def test_all_servers_down_is_one_clear_error_naming_them(servers):
    a, b = servers(), servers()
    be = backend(a, b, model="m", retries=1)
    a.kill()
    b.kill()
    with pytest.raises(BackendError) as info:
        get_lm(be).chat("anyone?")
    assert "cannot reach the model server" in info.value.cause
    assert "all 2 endpoints were tried" in info.value.cause
    assert be.endpoints.items[0].failures == 2 and be.endpoints.items[1].failures == 2


def test_the_cache_key_does_not_depend_on_which_server_answered(servers):
    a, b = servers(), servers()
    be = backend(a, b)
    lm = get_lm(be)
    a.kill()
    first = lm.chat("same question")
    assert first.endpoint == b.base_url and not first.cache_hit
    again = get_lm(backend(servers(a.port), b))  # a is back; same model, same endpoints
    b.kill()
    second = again.chat("same question")
    assert second.cache_hit and second.text == first.text


def test_settings_take_a_comma_separated_list(servers):
    a, b = servers(), servers()
    a.script.append(("ok", "via a"))
    b.script.append(("ok", "via b"))
    with settings.override(backend="openai", base_url=f"{a.base_url}, {b.base_url}/", model=None):
        lm = get_lm()
        assert lm.backend.base_urls == [a.base_url, b.base_url]
        info = lm.describe()
        assert [e["url"] for e in info["endpoints"]] == [a.base_url, b.base_url]
        assert {lm.chat("one").text, lm.chat("two").text} == {"via a", "via b"}


@pytest.mark.parametrize("bad", [" , ", "ftp://host/v1", "localhost:8000"])
def test_bad_base_urls_are_named_with_the_fix(bad):
    with pytest.raises(BackendError) as info:
        OpenAIBackend(base_url=bad, model="m")
    assert "TOMES_BASE_URL=http://" in info.value.fix


def test_a_server_error_goes_on_to_the_other_server_at_once(servers):
    a, b = servers(), servers()
    b.script.append(("status", 500, {"error": {"message": "boom"}}, {}))
    a.script.append(("ok", "from a"))
    be = backend(b, a, retries=0)  # no backoff rounds: only the failover can save it
    r = get_lm(be).chat("x")
    assert r.text == "from a" and r.endpoint == a.base_url
    assert be.failovers == 1 and be.retried == 0 and b.chat_requests() == 1
    assert be.endpoints.items[0].last_error.startswith(f"the model server at {b.base_url} answered 500")
    assert be.describe()["endpoints"][0]["state"] == "up"  # a 500 is no reason to cool off
