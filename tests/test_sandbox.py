"""The sandbox the recursive controller runs model-written code in.

Functional tests first (the REPL, handlers, FINAL, bounded output, restarts, no
orphans), then the red-team suite: each attack must be contained, hand a clear error
back, and leave the sandbox usable for the next block. Attacks whose containment is the
kernel's run twice: with the Python guards (the clear message) and without them
(``_disable={"guards"}``), so the kernel layers are shown to hold on their own; the
network attacks also run against one kernel layer at a time. The red-team suite runs
through both drivers: ``run`` (blocking) and ``arun`` (the pipe watched by an event
loop, handlers awaited there: how the recursive controller runs every block).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipelines._sandbox import Execution, Sandbox, SandboxError, SandboxLimits

ROOT = Path(__file__).resolve().parents[1]
FAST = SandboxLimits(cpu_seconds=1.0, wall_seconds=30.0, memory_mb=256, output_chars=2_000,
                     file_mb=8)
BOTH = pytest.mark.parametrize("guards", [True, False], ids=["guards", "kernel-only"])


class LoopDriven(Sandbox):
    """Every block through ``arun``, on an event loop of its own."""

    def run(self, code: str) -> Execution:
        return asyncio.run(self.arun(code))


def pytest_generate_tests(metafunc):
    if "make" in metafunc.fixturenames and (metafunc.function.__code__.co_firstlineno
                                            >= _RED_TEAM.__code__.co_firstlineno):
        metafunc.parametrize("driver", ["run", "arun"], indirect=True)


@pytest.fixture
def driver(request):
    return getattr(request, "param", "run")


@pytest.fixture
def make(driver):
    made: list[Sandbox] = []
    kind = LoopDriven if driver == "arun" else Sandbox

    def build(handlers=None, *, limits=FAST, variables=None, guards=True, disable=(), **kw):
        off = set(disable) | (set() if guards else {"guards"})
        sandbox = kind(handlers, limits=limits, variables=variables, _disable=off, **kw)
        made.append(sandbox)
        return sandbox

    yield build
    for sandbox in made:
        sandbox.close()


def still_works(sb: Sandbox, *, kept: bool = True) -> None:
    """The next block runs; with ``kept`` the variables the earlier block made survive."""
    ex = sb.run("print('alive', 6 * 7, 'marker' in globals())")
    assert ex.error is None, ex.error
    assert ex.stdout.startswith("alive 42")
    if kept:
        assert ex.stdout.strip() == "alive 42 True"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


# --- the REPL -----------------------------------------------------------------------

def test_variables_are_given_once_and_globals_persist(make):
    book = "It was a dark and stormy night. " * 40_000            # ~1.3 MB
    chunks = [{"id": i, "start": i * 100, "end": i * 100 + 100, "page": None}
              for i in range(500)]
    sb = make(variables={"context": book, "documents": [book[:10], "two"], "chunks": chunks})
    ex = sb.run("n = len(context)\nprint(n, len(chunks), chunks[3]['start'], documents[1])")
    assert ex.error is None, ex.error
    assert ex.stdout.split() == [str(len(book)), "500", "300", "two"]
    ex = sb.run("n += 1\nprint(n)")
    assert ex.stdout.strip() == str(len(book) + 1)
    assert not ex.restarted and ex.seconds > 0


def test_handlers_get_args_and_return_results(make):
    seen = []

    def llm_query(prompt, max_tokens=10):
        seen.append((prompt, max_tokens))
        return f"answer to {prompt}"

    def search(query, k=3):
        return [{"chunk": i, "score": 1.0 / (i + 1), "q": query} for i in range(k)]

    sb = make({"llm_query": llm_query, "search": search})
    ex = sb.run("r = llm_query('why?', max_tokens=5)\nhits = search('whale', k=2)\n"
                "print(r, [h['chunk'] for h in hits], hits[0]['q'])")
    assert ex.error is None, ex.error
    assert ex.stdout.strip() == "answer to why? [0, 1] whale"
    assert seen == [("why?", 5)]
    assert ex.calls == 2


def test_handler_exceptions_become_exceptions_in_the_child(make):
    class IndexMissing(Exception):
        pass

    def grep(pattern):
        if pattern == "(":
            raise ValueError("bad pattern '('")
        raise IndexMissing("no keyword index for this corpus")

    sb = make({"grep": grep})
    ex = sb.run(textwrap.dedent("""
        try:
            grep("(")
        except ValueError as exc:
            print("caught", exc)
        grep("x")
    """))
    assert "caught bad pattern '('" in ex.stdout
    assert "IndexMissing: no keyword index for this corpus" in ex.error
    ex = sb.run("grep(object())")
    assert "arguments must be JSON values" in ex.error
    still_works(sb, kept=False)


def test_a_handler_may_run_a_nested_sandbox_but_not_its_own(make):
    def rlm_query(prompt, context):
        with Sandbox(limits=FAST, variables={"context": context}) as inner:
            ex = inner.run(f"FINAL(context.count({prompt!r}))")
        return ex.final

    sb = make({"rlm_query": rlm_query, "again": lambda: sb.run("print(1)")})
    ex = sb.run("print(rlm_query('a', 'banana'))")
    assert ex.error is None, ex.error
    assert ex.stdout == "3\n"
    ex = sb.run("again()")
    assert "called from one of its own handlers" in ex.error
    still_works(sb, kept=False)
    with pytest.raises(ValueError, match="'chunks' is not JSON data"):
        Sandbox(variables={"chunks": [object()]})


def test_handler_time_is_not_the_blocks_wall_time(make):
    def llm_query(prompt):
        time.sleep(1.2)
        return "slow model"

    sb = make({"llm_query": llm_query},
              limits=SandboxLimits(cpu_seconds=1, wall_seconds=1, memory_mb=256))
    ex = sb.run("print(llm_query('a'), llm_query('b'))")
    assert ex.error is None, ex.error
    assert ex.stdout.strip() == "slow model slow model"
    assert ex.seconds >= 2.4


def test_arun_awaits_async_handlers_on_the_loop_in_the_callers_context(make):
    caller = contextvars.ContextVar("caller", default="nobody")
    seen = []

    async def llm_query(prompt):
        seen.append((threading.get_ident(), caller.get()))
        await asyncio.sleep(0)
        if prompt == "fail":
            raise LookupError("no such part")
        return prompt.upper()

    sb = make({"llm_query": llm_query, "plain": lambda x: x * 2})

    async def main():
        caller.set("iteration 3")
        ex = await sb.arun("print(llm_query('part'), plain(21))\n"
                           "try:\n    llm_query('fail')\nexcept LookupError as e:\n    print('caught', e)")
        return ex, threading.get_ident()

    ex, loop_thread = asyncio.run(main())
    assert ex.error is None, ex.error
    assert ex.stdout == "PART 42\ncaught no such part\n" and ex.calls == 3
    # On the loop's own thread and in the task's context: sub-calls nest under the caller.
    assert seen == [(loop_thread, "iteration 3")] * 2


def test_arun_leaves_the_loop_free_while_the_block_runs(make):
    sb = make()
    order = []

    async def block():
        await sb.arun("import time\ntime.sleep(1.5)")
        order.append("block done")

    async def other():
        await asyncio.sleep(0)
        order.append("other task ran")

    async def main():
        await asyncio.gather(block(), other())

    asyncio.run(main())
    assert order == ["other task ran", "block done"]
    still_works(sb, kept=False)


def test_arun_cancelled_in_a_handler_restarts_the_child_next_time(make):
    started = []

    async def llm_query(prompt):
        started.append(prompt)
        await asyncio.Event().wait()     # a model that never answers

    sb = make({"llm_query": llm_query})
    pid = sb.pid

    async def main():
        await sb.arun("marker = 1")
        task = asyncio.ensure_future(sb.arun("llm_query('slow')"))
        while not started:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await sb.arun("print('marker' in globals())")

    ex = asyncio.run(main())
    # The child was left waiting for a reply that will not come: it is replaced, and
    # the next block says the variables are gone.
    assert not alive(pid) and sb.pid != pid
    assert ex.restarted and "interrupted" in ex.stderr and ex.stdout == "False\n"
    still_works(sb, kept=False)


def test_final_and_final_var(make):
    sb = make()
    ex = sb.run("answer = {'who': 'Ahab', 'n': 3, 'tags': ('a', 'b')}\nFINAL_VAR('answer')")
    assert ex.final_set and ex.final == {"who": "Ahab", "n": 3, "tags": ["a", "b"]}
    ex = sb.run("FINAL(None)")
    assert ex.final_set and ex.final is None
    ex = sb.run("FINAL('')")
    assert ex.final_set and ex.final == ""
    ex = sb.run("class Thing:\n    def __str__(self): return 'a thing'\nFINAL([Thing(), 2])")
    assert ex.final == ["a thing", 2]
    ex = sb.run("x = 5\nFINAL_VAR(' \"x\" ')")                    # a quoted name still resolves
    assert ex.final == 5
    ex = sb.run("print('no answer yet')")
    assert not ex.final_set and ex.final is None
    ex = sb.run("FINAL_VAR('nope')")
    assert not ex.final_set and "no variable named 'nope'" in ex.error


def test_output_is_bounded_with_a_marker(make):
    sb = make()                                                      # output_chars=2000
    ex = sb.run("print('x' * 5000)")
    assert ex.stdout == "x" * 2000 + "\n[... 3001 more characters cut]"
    ex = sb.run("import sys\nsys.stderr.write('e' * 1500)\nprint('o' * 1000)")
    assert ex.stderr == "e" * 1500                                   # stdout and stderr share
    assert ex.stdout == "o" * 500 + "\n[... 501 more characters cut]"


def test_errors_carry_the_traceback_tail_of_the_models_code(make):
    sb = make()
    ex = sb.run("def f(n):\n    return 10 // n\n\nprint('before')\nf(0)")
    assert ex.stdout == "before\n"
    assert 'File "<block 1>", line 2, in f' in ex.error
    assert ex.error.rstrip().endswith("ZeroDivisionError: integer division or modulo by zero")
    assert "_sandbox_child" not in ex.error
    ex = sb.run("def broken(:\n  pass")
    assert "SyntaxError" in ex.error
    ex = sb.run("def r(): return r()\nr()")
    assert "RecursionError" in ex.error and len(ex.error) < 2000
    still_works(sb, kept=False)


def test_restart_after_a_kill_brings_the_given_variables_back(make):
    sb = make(variables={"context": "the text"},
              limits=SandboxLimits(cpu_seconds=1, wall_seconds=2, memory_mb=256))
    sb.run("marker = 1")
    first = sb.pid
    ex = sb.run("import time\ntime.sleep(30)")
    assert ex.restarted
    assert "wall time limit (2 s) exceeded" in ex.error and "variables you defined are lost" in ex.error
    assert ex.seconds >= 2
    assert sb.pid != first and not alive(first)
    ex = sb.run("print(context, 'marker' in globals())")
    assert ex.stdout.strip() == "the text False" and not ex.restarted
    assert sb.restarts == 1


def test_close_kills_the_child_and_removes_its_temp_dir(make):
    sb = make()
    pid, tmp = sb.pid, sb.tmp
    assert alive(pid) and os.path.isdir(tmp)
    sb.close()
    sb.close()
    assert not alive(pid) and not os.path.exists(tmp)
    ex = sb.run("print(1)")
    assert ex.error == "the sandbox is closed"
    with Sandbox(limits=FAST) as other:
        pid = other.pid
    assert not alive(pid)


def test_close_from_another_thread_stops_a_running_block(make):
    sb = make(limits=SandboxLimits(cpu_seconds=20, wall_seconds=20, memory_mb=256))
    pid = sb.pid
    threading.Timer(0.5, sb.close).start()
    started = time.monotonic()
    ex = sb.run("import time\ntime.sleep(15)")
    assert time.monotonic() - started < 12             # far short of the 15 s block
    assert "closed" in ex.error and not alive(pid)


def test_runs_from_worker_threads_and_a_thread_that_ends(make):
    box: list[Sandbox] = []
    worker = threading.Thread(target=lambda: box.append(make()))
    worker.start()
    worker.join()
    sb = box[0]
    time.sleep(0.2)                     # PR_SET_PDEATHSIG fires when the spawning thread ends
    assert alive(sb.pid)
    results: list[Execution] = []
    worker = threading.Thread(target=lambda: results.append(sb.run("marker = 2\nprint(marker)")))
    worker.start()
    worker.join()
    assert results[0].stdout == "2\n"
    still_works(sb)


ORPHAN_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from pipelines._sandbox import Sandbox, SandboxLimits
sb = Sandbox(limits=SandboxLimits(memory_mb=256))
print(sb.pid, sb.tmp, flush=True)
if sys.argv[1] == "hang":
    sb.run("open('started', 'w').close()\\nimport time\\ntime.sleep(60)")
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_orphans_when_the_host_ends(tmp_path, how):
    script = tmp_path / "host.py"
    script.write_text(ORPHAN_SCRIPT.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), "exit" if how == "exit" else "hang"],
                            stdout=subprocess.PIPE, text=True)
    pid, tmp = proc.stdout.readline().split()
    pid = int(pid)
    if how == "sigkill":
        # Killed mid-block: the child is not reading its pipe, so only PR_SET_PDEATHSIG
        # (not EOF, not atexit) can end it.
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(tmp, "started")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert alive(pid)
        proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    if how == "exit":
        assert not os.path.exists(tmp)               # atexit closed it
    else:
        # Nothing in a SIGKILLed host can clean up; the next host's first sandbox sweeps
        # the temp dirs of hosts that are gone.
        import pipelines._sandbox as module

        assert os.path.isdir(tmp)
        module._swept = False
        with Sandbox(limits=FAST):
            assert not os.path.exists(tmp)


def test_cannot_start_at_all_raises_sandbox_error(tmp_path):
    with pytest.raises(SandboxError, match="cannot start the sandbox's Python"):
        Sandbox(python=str(tmp_path / "no-python"))
    with pytest.raises(SandboxError, match="could not start"):
        Sandbox(python="/bin/false")


def test_layers_are_reported_and_missing_ones_warned_once(make):
    sb = make()
    expected = {"netns", "landlock", "landlock_net", "landlock_signals", "seccomp",
                "no_new_privs", "capabilities", "rlimits", "cpu_limit", "python_guards"}
    assert expected <= set(sb.layers)
    # These machines offer every layer (kernel 6.18, Landlock ABI >= 6).
    assert all(sb.layers[name] is True for name in expected), sb.layers
    assert sb.warnings == []
    sb.run("import os\nos._exit(1)")                 # a restart must not warn again
    assert sb.warnings == []
    off = make(disable={"netns"})
    assert off.layers["netns"] is False and off.warnings == []
    # A layer the kernel refuses is one clear line naming what still holds.
    off._record_layers({"layers": {"netns": "unavailable: unshare failed (EPERM)",
                                   "landlock": True}})
    assert len(off.warnings) == 1
    assert off.warnings[0].startswith("sandbox: netns unavailable: unshare failed (EPERM); ")
    assert "seccomp" in off.warnings[0]


def test_the_child_sees_a_scrubbed_environment_and_its_temp_dir(make, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    sb = make()
    ex = sb.run("import os, sys\nprint(sorted(os.environ), os.getcwd(), sys.path)")
    assert ex.error is None, ex.error
    assert "sk-secret" not in ex.stdout and "TOMES_HOME" not in ex.stdout
    assert "['HOME', 'LANG', 'LC_ALL', 'TMPDIR']" in ex.stdout
    assert sb.tmp in ex.stdout and "site-packages" not in ex.stdout
    ex = sb.run("open('notes.txt', 'w').write('scratch')\nprint(open('notes.txt').read())")
    assert ex.stdout == "scratch\n"
    ex = sb.run("import sqlalchemy")                 # tomes' dependencies are out of reach
    assert "ModuleNotFoundError" in ex.error


def test_garbage_on_the_control_pipe_restarts_the_child(make):  # the red team from here
    sb = make()
    ex = sb.run("import os, sys\nos.write(int(sys.argv[2]), b'\\xff' * 64)\nimport time\n"
                "time.sleep(5)")
    assert ex.restarted and "malformed message" in ex.error
    still_works(sb, kept=False)
    ex = sb.run("import os, sys, json, struct\nm = json.dumps({'type': 'hello'}).encode()\n"
                "os.write(int(sys.argv[2]), struct.pack('>I', len(m)) + m)\nimport time\n"
                "time.sleep(5)")
    assert ex.restarted and "malformed message" in ex.error
    # A forged "done" is ignored: the real end of the block is what counts.
    ex = sb.run("import os, sys, json, struct\n"
                "m = json.dumps({'type': 'done', 'seq': -1, 'stdout': 'forged'}).encode()\n"
                "os.write(int(sys.argv[2]), struct.pack('>I', len(m)) + m)\nprint('real')")
    assert ex.stdout == "real\n" and not ex.restarted
    still_works(sb, kept=False)


_RED_TEAM = test_garbage_on_the_control_pipe_restarts_the_child


# --- red team: processes ------------------------------------------------------------

@BOTH
def test_os_system(make, tmp_path, guards):
    target = tmp_path / "pwned"
    sb = make(guards=guards)
    ex = sb.run(f"marker = 1\nimport os\nrc = os.system('touch {target}')\nprint('rc', rc)")
    assert not target.exists()
    if guards:
        assert "blocked: starting processes or programs is not allowed" in ex.error
    else:
        # glibc's system() reports a spawn the kernel refused as "shell exit 127".
        assert ex.stdout.strip() == f"rc {127 << 8}" and children_of(sb.pid) == []
    still_works(sb)


@BOTH
def test_subprocess_run(make, tmp_path, guards):
    target = tmp_path / "pwned"
    sb = make(guards=guards)
    ex = sb.run(f"marker = 1\nimport subprocess\nsubprocess.run(['touch', '{target}'])")
    assert not target.exists()
    assert "blocked: starting processes or programs is not allowed" in ex.error
    still_works(sb)


@BOTH
def test_fork_bomb(make, guards):
    sb = make(guards=guards)
    ex = sb.run("marker = 1\nimport os\nwhile True:\n    os.fork()")
    assert children_of(sb.pid) == []
    assert ex.error.startswith("blocked:") and "PermissionError" in ex.error
    ex = sb.run("import os\npids = []\nfor _ in range(50):\n    try:\n        pids.append(os.fork())\n"
                "    except OSError:\n        pass\nprint(len(pids))")
    assert ex.stdout.strip() == "0" and children_of(sb.pid) == []
    ex = sb.run("import threading\nthreading.Thread(target=print).start()")
    assert "can't start new thread" in ex.error          # clone is refused outright
    still_works(sb)


def test_exec_is_refused_even_when_processes_are_allowed(make, tmp_path):
    target = tmp_path / "pwned"
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=30, memory_mb=256, max_processes=64)
    sb = make(limits=limits, disable={"guards", "landlock"})   # seccomp alone refuses exec
    ex = sb.run(f"import os\npid = os.fork()\nif pid == 0:\n    try:\n"
                f"        os.execv('/usr/bin/touch', ['touch', '{target}'])\n"
                f"    finally:\n        os._exit(7)\nprint(os.waitpid(pid, 0)[1] >> 8)")
    assert ex.error is None, ex.error
    assert ex.stdout.strip() == "7" and not target.exists()
    still_works(sb, kept=False)


# --- red team: network --------------------------------------------------------------

@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.3)
    yield server
    server.close()


def nobody_connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except socket.timeout:
        return True
    conn.close()
    return False


# Every kernel layer that guards the network, alone: the others (and the guards) off.
NETWORK_LAYERS = pytest.mark.parametrize("disable", [
    set(), {"guards"},
    {"guards", "seccomp", "landlock"},            # the network namespace alone
    {"guards", "seccomp", "netns"},               # Landlock's TCP rules alone
    {"guards", "netns", "landlock"},              # the seccomp socket filter alone
], ids=["all", "kernel", "netns-only", "landlock-only", "seccomp-only"])


@NETWORK_LAYERS
def test_connect_to_the_internet(make, disable):
    sb = make(disable=disable)
    ex = sb.run("marker = 1\nimport socket\n"
                "socket.create_connection(('1.1.1.1', 80), timeout=2).send(b'GET /')")
    assert ex.error and "blocked: network is not available in the sandbox" in ex.error
    still_works(sb)


@NETWORK_LAYERS
def test_connect_to_a_port_the_host_listens_on(make, listener, disable):
    port = listener.getsockname()[1]
    sb = make(disable=disable)
    ex = sb.run(f"marker = 1\nimport socket\n"
                f"socket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')")
    assert nobody_connected(listener)
    assert ex.error and "blocked: network is not available in the sandbox" in ex.error
    still_works(sb)


def test_udp_and_unix_sockets_are_refused(make, tmp_path):
    path = tmp_path / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(0.3)
    try:
        sb = make(guards=False)
        ex = sb.run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})")
        assert "blocked: network is not available in the sandbox" in ex.error
        assert nobody_connected(server)
        ex = sb.run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    ".sendto(b'x', ('1.1.1.1', 53))")
        assert "blocked: network is not available in the sandbox" in ex.error
        still_works(sb, kept=False)
    finally:
        server.close()


# --- red team: files ----------------------------------------------------------------

@BOTH
def test_write_outside_the_temp_dir(make, tmp_path, guards):
    target = tmp_path / "written.txt"
    sb = make(guards=guards)
    ex = sb.run(f"marker = 1\nopen({str(target)!r}, 'w').write('pwned')")
    assert not target.exists()
    assert f"blocked: {target} is outside what the sandbox may touch" in ex.error
    for code in (f"import os\nos.mkdir({str(tmp_path / 'dir')!r})",
                 f"import os\nos.symlink('/etc/passwd', {str(tmp_path / 'link')!r})",
                 "open('/dev/shm/x', 'w')", "open('/tmp/x-from-sandbox', 'w')"):
        ex = sb.run(code)
        assert ex.error and "blocked:" in ex.error, code
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not os.path.exists("/tmp/x-from-sandbox")
    still_works(sb)


def test_read_the_tomes_database(make, tomes_home, tmp_path):
    from app import settings
    from app.api import Tomes

    doc = tmp_path / "secret.txt"
    doc.write_text("The vault code is 4471. " * 50)
    Tomes().ingest([doc], "private", embed=False)
    db = settings.get_settings().db_path
    assert db.is_file() and str(db).startswith(str(tomes_home))
    sb = make()
    for code in (f"data = open({str(db)!r}, 'rb').read()",
                 f"import sqlite3\nprint(sqlite3.connect('file:{db}?mode=ro', uri=True)"
                 ".execute('select count(*) from sqlite_master').fetchone())",
                 f"import os\nprint(os.listdir({str(tomes_home)!r}))",
                 f"print(open({str(doc)!r}).read())"):
        ex = sb.run(code)
        assert ex.error, code
        assert "4471" not in ex.stdout + ex.error and "SQLite format" not in ex.stdout
    ex = sb.run(f"open({str(db)!r}, 'rb')")
    assert f"blocked: {db} is outside what the sandbox may touch" in ex.error
    still_works(sb, kept=False)


def test_reads_reach_the_stdlib_only(make):
    sb = make()
    for path in ("/etc/passwd", f"/proc/{os.getpid()}/environ", f"/proc/{os.getpid()}/mem",
                 str(ROOT / "pyproject.toml"), os.path.expanduser("~/.bashrc"), "/work"):
        ex = sb.run(f"import os\np = {path!r}\n"
                    "print(os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(10))")
        assert ex.error and "blocked:" in ex.error, (path, ex)
    ex = sb.run("import json, re, collections, textwrap\nprint(json.__file__.endswith('.py'))")
    assert ex.stdout == "True\n"


def test_links_and_renames_do_not_reach_outside(make, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    sb = make(guards=False)
    for code in (f"import os\nos.link({str(outside)!r}, 'here')\nopen('here', 'w').write('pwned')",
                 f"import os\nos.rename({str(outside)!r}, 'here')",
                 f"import os\nos.symlink({str(outside)!r}, 'here2')\nopen('here2', 'w').write('x')"):
        ex = sb.run(code)
        assert ex.error and "blocked:" in ex.error, (code, ex)
    assert outside.read_text() == "original"
    still_works(sb, kept=False)


@BOTH
def test_delete_files_outside(make, tmp_path, guards):
    victim = tmp_path / "keep" / "important.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    sb = make(guards=guards)
    ex = sb.run(f"marker = 1\nimport os\nos.remove({str(victim)!r})")
    assert "blocked:" in ex.error
    ex = sb.run(f"import shutil\nshutil.rmtree({str(victim.parent)!r})")
    assert "blocked:" in ex.error
    ex = sb.run(f"import os\nos.truncate({str(victim)!r}, 0)")
    assert "blocked:" in ex.error
    assert victim.read_text() == "keep me"
    still_works(sb)


def test_a_file_in_the_temp_dir_is_capped(make):
    sb = make()                                                        # file_mb=8
    ex = sb.run("marker = 1\nwith open('big', 'wb') as fh:\n"
                "    for _ in range(64):\n        fh.write(b'x' * (1 << 20))")
    assert "file size limit exceeded" in ex.error
    assert os.path.getsize(os.path.join(sb.tmp, "big")) <= 8 << 20
    still_works(sb)


# --- red team: limits ---------------------------------------------------------------

def test_busy_loop(make):
    sb = make()
    sb.run("marker = 1")
    ex = sb.run("while True:\n    pass")
    assert ex.error.startswith("CPU time limit (1 s) exceeded") and not ex.restarted
    still_works(sb)


def test_cpu_limit_in_a_loop_of_handler_calls_keeps_the_pipe_in_step(make):
    # The timer firing mid-frame would leave half a message in the pipe (seen as an
    # intermittent failure with the signal mask removed).
    sb = make({"f": lambda x: x * 2}, limits=SandboxLimits(cpu_seconds=0.5, wall_seconds=60,
                                                          memory_mb=256))
    for _ in range(2):
        ex = sb.run("marker = 1\nn = 0\nwhile True:\n    n += f(1)\n    sum(range(5000))")
        assert ex.error.startswith("CPU time limit (0.5 s) exceeded") and not ex.restarted
        assert ex.calls > 100
    still_works(sb)


def test_busy_loop_that_swallows_the_stop_is_killed(make):
    # The wall limit is far off: this must be the host's CPU check, even on a busy machine.
    sb = make(limits=SandboxLimits(cpu_seconds=1, wall_seconds=60, memory_mb=256))
    ex = sb.run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                "signal.signal(signal.SIGPROF, signal.SIG_IGN)\n"
                "while True:\n    try:\n        while True:\n            pass\n"
                "    except BaseException:\n        pass")
    assert ex.restarted
    assert ex.error.startswith("CPU time limit (1 s) exceeded: the block did not stop")
    still_works(sb, kept=False)


@pytest.mark.parametrize("code", [
    "x = bytearray(10 * 1024 ** 3)",
    "x = 'a' * (10 * 1024 ** 3)",
    "x = [bytes(1 << 20) for _ in range(10 * 1024)]",
], ids=["bytearray", "str", "many"])
def test_ten_gigabyte_allocation(make, code):
    sb = make()
    sb.run("marker = 1")
    ex = sb.run(code)
    assert ex.error.startswith("memory limit (256 MB) exceeded"), ex.error
    assert not ex.restarted
    still_works(sb)


def test_printing_a_gigabyte(make):
    sb = make()
    sb.run("marker = 1")
    ex = sb.run("s = 'x' * (1 << 20)\nfor _ in range(1024):\n    print(s)")
    assert ex.error is None and len(ex.stdout) < 2100
    assert ex.stdout.endswith(f"[... {1024 * ((1 << 20) + 1) - 2000} more characters cut]")
    # Below print: straight to the file descriptors, which lead to a capped log file.
    ex = sb.run("import os\nfor _ in range(1024):\n    os.write(1, b'x' * (1 << 20))")
    assert "file size limit exceeded" in ex.error
    assert os.path.getsize(os.path.join(sb.tmp, ".sandbox-child.log")) <= 8 << 20
    still_works(sb)


# --- red team: the process itself ---------------------------------------------------

def test_sys_exit(make):
    sb = make()
    ex = sb.run("marker = 1\nimport sys\nsys.exit(3)")
    assert ex.error.startswith("SystemExit(3): sys.exit() does not end the sandbox")
    assert not ex.restarted
    ex = sb.run("raise SystemExit")
    assert "SystemExit" in ex.error
    still_works(sb)


@pytest.mark.parametrize("code,says", [
    ("import os\nos._exit(3)", "exited with status 3"),
    ("import os\nos.abort()", "killed by SIGABRT"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
    ("import signal, time\nsignal.alarm(1)\ntime.sleep(5)", "killed by SIGALRM"),
    ("import ctypes\nctypes.string_at(0)", "killed by SIGSEGV"),
], ids=["os._exit", "abort", "self-kill", "alarm", "segfault"])
def test_the_child_dying_restarts_it(make, code, says):
    sb = make(guards=False)
    sb.run("marker = 1")
    ex = sb.run(code)
    assert ex.restarted and says in ex.error and "variables you defined are lost" in ex.error
    still_works(sb, kept=False)


def test_stopping_itself_is_ended_by_the_wall_clock(make):
    sb = make(limits=SandboxLimits(cpu_seconds=1, wall_seconds=1, memory_mb=256))
    ex = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)")
    assert ex.restarted and "wall time limit (1 s) exceeded" in ex.error
    still_works(sb, kept=False)


@pytest.fixture
def usr1_flag():
    hits = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    yield hits
    signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def victim():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("disable", [
    set(), {"guards"}, {"guards", "landlock"}, {"guards", "seccomp"},
], ids=["all", "kernel", "seccomp-only", "landlock-only"])
def test_kill_the_parent(make, usr1_flag, victim, disable):
    sb = make(disable=disable)
    # SIGUSR1 to the host is harmless if it got through: the flag shows whether it did.
    for code in ("import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)",
                 f"import os\nos.kill({victim.pid}, 9)",
                 "import os, signal\nos.killpg(os.getpgid(0), signal.SIGUSR1)",
                 "import os, signal\nos.kill(0, signal.SIGUSR1)",
                 "import signal, os\nsignal.pthread_kill(os.getppid(), signal.SIGUSR1)"):
        ex = sb.run("marker = 1\n" + code)
        assert ex.error and "blocked" in ex.error or ex.restarted, (code, ex)
    time.sleep(0.1)
    assert usr1_flag == [] and victim.poll() is None
    still_works(sb, kept=False)


@pytest.mark.parametrize("code", [
    "libc.kill(os.getppid(), 10)",                          # SIGUSR1 to the host
    "libc.syscall(62, os.getppid(), 10)",                   # raw kill
    "libc.syscall(234, os.getppid(), os.getppid(), 10)",    # tgkill
    "libc.syscall(57)",                                     # fork
    "libc.syscall(41, 2, 1, 0)",                            # socket(AF_INET, SOCK_STREAM)
    "libc.syscall(160, 0, 0)",                              # setrlimit
    "libc.syscall(272, 0x40000000)",                        # unshare(CLONE_NEWNET)
    "libc.syscall(101, 16, os.getppid(), 0, 0)",            # ptrace(PTRACE_ATTACH, host)
], ids=["kill", "raw-kill", "tgkill", "fork", "socket", "setrlimit", "unshare", "ptrace"])
def test_ctypes_kernel_only(make, usr1_flag, code):
    sb = make(guards=False)
    ex = sb.run(f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                f"print({code}, ctypes.get_errno())")
    assert ex.error is None, ex.error
    assert ex.stdout.strip() == "-1 1"                      # EPERM from the seccomp filter
    assert usr1_flag == [] and children_of(sb.pid) == []
    still_works(sb, kept=False)


def test_ctypes_with_guards(make, usr1_flag):
    sb = make()
    ex = sb.run("marker = 1\nimport ctypes, os\nctypes.CDLL(None).kill(os.getppid(), 10)")
    assert "blocked: ctypes (calling C code directly) is not available" in ex.error
    assert usr1_flag == []
    still_works(sb)


@BOTH
def test_limits_cannot_be_changed(make, guards):
    sb = make(guards=guards)
    for code in ("resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
                 "resource.setrlimit(resource.RLIMIT_AS, (128 << 20, 256 << 20))",
                 "resource.prlimit(0, resource.RLIMIT_CPU, (-1, -1))",
                 "resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))"):
        ex = sb.run("marker = 1\nimport os, resource\n" + code)
        if guards:
            assert ex.error.startswith("blocked: the sandbox's limits cannot be changed"), code
        else:
            # CPython words setrlimit's EPERM as a ValueError of its own.
            assert ex.error.startswith("blocked: operation not permitted") or (
                "ValueError: not allowed to raise maximum limit" in ex.error), code
    ex = sb.run("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20, "
                "resource.getrlimit(resource.RLIMIT_CPU)[0] > 0)")
    assert ex.stdout.strip() == "256 True"
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 3
    still_works(sb)


# --- the same, as a user who is not root --------------------------------------------

NOBODY_SCRIPT = """
import importlib.util, json, os, socket, sys
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location("sandbox", {module!r})
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
port = server.getsockname()[1]
out = {{"uid": os.getuid()}}
limits = sandbox.SandboxLimits(cpu_seconds=1, wall_seconds=30, memory_mb=256)
for guards in (True, False):
    with sandbox.Sandbox(limits=limits, _disable=set() if guards else {{"guards"}}) as sb:
        runs = {{
            "net": sb.run(f"import socket\\nsocket.create_connection(('127.0.0.1', {{port}}), 1)").error,
            "write": sb.run("open({outside!r}, 'w')").error,
            "fork": sb.run("import os\\nos.fork()").error,
            "kill": sb.run("import os\\nos.kill(os.getppid(), 9)").error,
            "cpu": sb.run("while True: pass").error,
            "memory": sb.run("x = bytearray(10 << 30)").error,
            "ok": sb.run("print(1 + 1)").stdout,
        }}
        out[str(guards)] = {{"layers": sb.layers, "runs": runs}}
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK)
                    or not os.access("/usr/bin/setpriv", os.X_OK),
                    reason="needs root to become nobody, and a system python3 nobody can run")
def test_the_layers_hold_for_a_user_who_is_not_root():
    """pytest runs as root here; the same sandbox as uid 65534, with the system Python
    (root's pyenv is not readable by others), in a user namespace of its own."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="tomes-sandbox-test-"))  # pytest's tmp is root-only
    request_cleanup = lambda: shutil.rmtree(work, ignore_errors=True)  # noqa: E731
    os.chmod(work, 0o777)
    script = work / "nobody.py"
    outside = work / "outside.txt"
    script.write_text(NOBODY_SCRIPT.format(root=str(ROOT), module=str(ROOT / "pipelines/_sandbox.py"),
                                           outside=str(outside)))
    os.chmod(script, 0o644)
    result = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                             "--clear-groups", "/usr/bin/python3", "-I", str(script)],
                            capture_output=True, text=True, timeout=120, cwd="/tmp",
                            env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["uid"] == 65534
    for guards in ("True", "False"):
        layers, runs = out[guards]["layers"], out[guards]["runs"]
        assert all(v is True for k, v in layers.items() if k != "python_guards"), layers
        assert "blocked: network" in runs["net"]
        assert "blocked:" in runs["write"] and "blocked:" in runs["fork"]
        assert "blocked" in runs["kill"]
        assert runs["cpu"].startswith("CPU time limit (1 s) exceeded")
        assert runs["memory"].startswith("memory limit (256 MB) exceeded")
        assert runs["ok"] == "2\n"
    assert not outside.exists()
    request_cleanup()
