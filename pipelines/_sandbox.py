"""Model-written code runs here: in a separate, locked-down Python process, never in tomes.

``Sandbox(handlers, limits=..., variables=...)`` starts ``_sandbox_child.py`` as a script
(``python -I -S -B``: no site-packages, no tomes, no environment), sends it the variables
once, and then ``run(code)`` executes blocks in it like a REPL: globals persist between
blocks. The child calls back into the host over a pipe for the handlers it was given
(``llm_query``, ``search``, ...); the host runs them and replies.

Containment is layered, each layer on its own sufficient for what it covers (the tests
check them one at a time): a network namespace with no interfaces, Landlock (filesystem
reads limited to Python's stdlib and system libraries, writes to the child's temp dir,
no TCP, no signals out), a seccomp filter (no fork/exec, no sockets, no signals to other
processes, no raising limits), no capabilities, no_new_privs, rlimits (address space,
file size, processes, open files; CPU set per block from outside), and, for a clear
message to the model only, Python audit-hook guards. The host enforces wall time and
backs the CPU limit with a kill. Whatever the child does (crash, exit, garbage on the
pipe, ignore signals) comes back as ``Execution.error`` and the child is restarted;
only "cannot start at all" raises ``SandboxError``.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from app.errors import TomesError

__all__ = ["Sandbox", "SandboxLimits", "Execution", "SandboxError"]

log = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 << 20          # one message either way; a whole book is a few MB
_START_SECONDS = 30.0          # a loaded 2-core laptop decoding a large book
_REPLY_SECONDS = 30.0          # a child that stops reading a reply is broken
_CPU_GRACE = 2.5               # past the child's own timer and RLIMIT_CPU (whole seconds)
_LOG_NAME = ".sandbox-child.log"
_LOST = ("the sandbox was restarted, so variables you defined are lost (the given "
         "variables are back)")


class SandboxError(TomesError):
    """The sandbox cannot start at all (no usable Python, a broken child program)."""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 10.0    # per block, CPU time
    wall_seconds: float = 30.0   # per block, wall time spent in the block's own code
    memory_mb: int = 1024        # address space of the child
    output_chars: int = 20_000   # stdout+stderr kept per block; the rest is counted
    max_processes: int = 0       # 0: no fork at all (seccomp); >0: RLIMIT_NPROC, no exec
    file_mb: int = 64            # largest file the child may write in its temp dir

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.memory_mb < 64:
            raise ValueError("SandboxLimits.memory_mb must be at least 64 (Python itself "
                             "needs about 30 MB of address space)")
        for name in ("output_chars", "max_processes", "file_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"SandboxLimits.{name} must not be negative")


@dataclass
class Execution:
    stdout: str = ""
    stderr: str = ""
    error: str | None = None     # a short message for the model, or None
    final: Any = None            # the value given to FINAL / FINAL_VAR
    final_set: bool = False      # FINAL(None) and FINAL("") count as set
    restarted: bool = False      # the child was killed and restarted: variables lost
    seconds: float = 0.0         # wall time of the whole run, handler calls included
    calls: int = 0               # handler calls the block made


# What a missing layer means, for the warning that says so.
_CONSEQUENCES = {
    "netns": "the network is still refused by the seccomp socket filter and Landlock's TCP "
             "rules where those hold",
    "landlock": "the code can read and write every file this user can (the rlimits and "
                "the seccomp filter still hold)",
    "landlock_net": "TCP is still refused by the network namespace and the seccomp filter",
    "landlock_signals": "the seccomp filter still refuses signals to other processes",
    "seccomp": "fork/exec, sockets and signals to other processes are not refused by the "
               "kernel's syscall filter (the other layers still hold)",
    "no_new_privs": "Landlock and seccomp need it, so they are probably missing too",
    "capabilities": "the child keeps the capabilities it was started with",
    "rlimits": "some resource limits are missing",
    "cpu_limit": "a block that uses too much CPU is killed instead of stopped (its "
                 "variables are lost)",
}
_warned: set[str] = set()


class _Broken(Exception):
    """The child cannot go on: killed, crashed, too slow, or it broke the protocol."""


def _encode(message: dict, *, strict: bool = False) -> bytes:
    # ASCII with escapes: twice as fast as UTF-8 output for a whole book, and a lone
    # surrogate in a model's string cannot fail the encoding.
    data = json.dumps(message, default=None if strict else str).encode("ascii")
    return _HEADER.pack(len(data)) + data


class _Reader:
    """Frames from the child's message pipe, never blocking past a timeout and never
    trusting a length the child announces."""

    def __init__(self, fd: int, max_frame: int) -> None:
        self.fd = fd
        self.max_frame = max_frame
        self.buf = bytearray()
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)

    def frame(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            message = self._parse()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.poll.poll(max(1, math.ceil(remaining * 1000))):
                self.fill()

    def take(self) -> dict | None:
        """The next whole frame in the buffer, if there is one (never reads)."""
        return self._parse()

    def fill(self) -> None:
        """One read of what the pipe holds (the loop saw it readable)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise _Broken("eof")
        self.buf += chunk

    def _parse(self) -> dict | None:
        if len(self.buf) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self.buf)
        if length > self.max_frame:
            raise _Broken(f"the sandbox sent a malformed message (it announced {length} "
                          "bytes; the code may have written to the sandbox's control pipe)")
        end = _HEADER.size + length
        if len(self.buf) < end:
            return None
        data = bytes(self.buf[_HEADER.size:end])
        del self.buf[:end]
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise _Broken("the sandbox sent a malformed message (not a JSON object; the "
                          "code may have written to the sandbox's control pipe)")
        return message


@dataclass
class _Value:
    value: Any


@dataclass
class _Failed:
    error: Exception


@dataclass
class _Pending:
    awaitable: Any


async def _wait_for(future: Any, timeout: float) -> None:
    import asyncio

    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        pass


class _Watch:
    """The child's message pipe watched by an event loop for one block: registered once
    (not once a frame: two epoll_ctl calls saved per frame), read only while a frame is
    awaited, so a child that writes when nobody waits fills the pipe, not this process."""

    def __init__(self, loop: Any, reader: _Reader) -> None:
        self.loop, self.reader = loop, reader
        self.waiter: Any = None
        self.watching = False

    def frame(self, timeout: float) -> Any:
        """A future of the next frame, or of None after ``timeout``."""
        future = self.loop.create_future()
        message = self.reader.take()
        if message is not None:
            future.set_result(message)
            return future
        self.waiter = future
        timer = self.loop.call_later(max(0.0, timeout), self._settle, future, None)
        future.add_done_callback(lambda _f: timer.cancel())
        if not self.watching:
            self.loop.add_reader(self.reader.fd, self._readable)
            self.watching = True
        return future

    def _readable(self) -> None:
        future = self.waiter
        if future is None or future.done():
            self._pause()                    # nobody waits: leave the bytes in the pipe
            return
        try:
            self.reader.fill()
            message = self.reader.take()
        except _Broken as exc:
            self._settle(future, exc)
            return
        if message is not None:
            self._settle(future, message)

    def _settle(self, future: Any, value: Any) -> None:
        if future is self.waiter:
            self.waiter = None
        if not future.done():
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

    def _pause(self) -> None:
        if self.watching:
            self.loop.remove_reader(self.reader.fd)
            self.watching = False

    def close(self) -> None:
        self.waiter = None
        self._pause()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _popen(argv: list[str], **options) -> subprocess.Popen:
    """The child asks to die with the thread that started it (PR_SET_PDEATHSIG follows
    the thread, not the process), so a child started from a short-lived worker thread is
    started from one long-lived thread instead."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(argv, **options)
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="tomes-sandbox-spawn")
    return _spawner.submit(subprocess.Popen, argv, **options).result()


_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()
_PREFIX = "tomes-sandbox-"
_swept = False


def _sweep_stale() -> None:
    """Temp dirs of hosts that were SIGKILLed (nothing could clean up after them); the
    host's pid is in the name, and only this user's dirs of dead hosts are removed."""
    global _swept
    if _swept:
        return
    _swept = True
    root = tempfile.gettempdir()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        parts = entry.name[len(_PREFIX):].split("-", 1)
        if not entry.name.startswith(_PREFIX) or not parts[0].isdigit():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


@atexit.register
def _close_all() -> None:
    for sandbox in list(_live):
        sandbox.close()


def _builtin_kind(exc: BaseException) -> str:
    """The nearest built-in exception class, so the child can raise the same kind."""
    import builtins

    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls and cls is not Exception:
            return cls.__name__
    return "RuntimeError"


class Sandbox:
    """One child process with persistent globals. Not for concurrent ``run`` calls from
    several threads (they are serialized); ``close`` may come from any thread."""

    def __init__(self, handlers: dict[str, Callable[..., Any]] | None = None, *,
                 limits: SandboxLimits | None = None,
                 variables: dict[str, Any] | None = None,
                 python: str | None = None,
                 _disable: frozenset[str] | set[str] = frozenset()) -> None:
        """``_disable`` turns layers off ("netns", "landlock", "seccomp", "guards") so
        tests can show that each remaining layer holds on its own; never in production."""
        self.limits = limits or SandboxLimits()
        self._handlers = dict(handlers or {})
        reserved = {"FINAL", "FINAL_VAR"} & (set(self._handlers) | set(variables or {}))
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))} is defined by the sandbox itself")
        self._python = python or sys.executable
        self._disable = frozenset(_disable)
        self._lock = threading.Lock()
        self._closed = False
        self._cleaned = False
        self._proc: subprocess.Popen | None = None
        self._cmd: int | None = None
        self._reader: _Reader | None = None
        self._out_poll: select.poll | None = None
        self._stat: int | None = None            # /proc/<child>/stat, read at every block
        self._seq = 0
        self._pending: str | None = None
        self.restarts = 0
        self.layers: dict[str, bool | str] = {}
        self.details: dict[str, str] = {}
        self.warnings: list[str] = []
        self._owner: int | None = None
        _sweep_stale()
        self.tmp = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        try:
            variables = dict(variables or {})
            # Encoded once: a restart resends the same bytes.
            try:
                self._init = _encode({
                    "type": "init", "tmp": self.tmp, "limits": asdict(self.limits),
                    "handlers": sorted(self._handlers), "disable": sorted(self._disable),
                    "max_frame": _MAX_FRAME, "variables": variables,
                }, strict=True)
            except (TypeError, ValueError):
                for name, value in variables.items():
                    try:
                        json.dumps(value)
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"sandbox variable {name!r} is not JSON data (str, "
                                         f"number, bool, None, list, dict): {exc}") from None
                raise
            if len(self._init) > _MAX_FRAME * 4:
                raise SandboxError(f"the sandbox's variables are {len(self._init) >> 20} MB",
                                   f"pass at most {_MAX_FRAME >> 18} MB")
            _live.add(self)
            self._start()
        except BaseException:
            self.close()
            raise

    # --- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Kill the child and remove its temp dir; safe to call twice, from any thread."""
        self._closed = True
        self._kill_process()
        if self._lock.acquire(timeout=10):
            try:
                self._cleanup()
            finally:
                self._lock.release()
        # Otherwise a run() is inside a handler call; it cleans up when it returns.

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._release()
        shutil.rmtree(self.tmp, ignore_errors=True)
        _live.discard(self)

    def _kill_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                # The child leads its own process group, which it cannot leave (setsid and
                # setpgid are refused), so this reaches anything it forked too.
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("sandbox child %s did not die after SIGKILL", proc.pid)

    def _release(self) -> None:
        self._kill_process()
        for fd in (self._cmd, self._reader.fd if self._reader else None, self._stat):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._proc, self._cmd, self._reader, self._out_poll = None, None, None, None
        self._stat = None

    def _clean_tmp(self) -> None:
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        for entry in os.scandir(self.tmp):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass

    def _start(self) -> None:
        self._clean_tmp()
        cmd_r, cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        for fd in (cmd_w, msg_r):
            os.set_inheritable(fd, False)
        logfile = os.open(os.path.join(self.tmp, _LOG_NAME),
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        argv = [self._python, "-I", "-S", "-B", str(_CHILD), str(cmd_r), str(msg_w),
                str(os.getpid())]
        env = {"HOME": self.tmp, "TMPDIR": self.tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        try:
            proc = _popen(argv, pass_fds=(cmd_r, msg_w), stdin=subprocess.DEVNULL,
                          stdout=logfile, stderr=logfile, cwd=self.tmp, env=env,
                          start_new_session=True)
        except OSError as exc:
            os.close(cmd_w)
            os.close(msg_r)
            raise SandboxError(f"cannot start the sandbox's Python ({self._python}): {exc}",
                               "run tomes with a working CPython 3.11+ "
                               "(the sandbox uses sys.executable)") from exc
        finally:
            for fd in (cmd_r, msg_w, logfile):
                os.close(fd)
        os.set_blocking(cmd_w, False)
        os.set_blocking(msg_r, False)
        self._proc, self._cmd = proc, cmd_w
        self._reader = _Reader(msg_r, _MAX_FRAME)
        self._out_poll = select.poll()
        self._out_poll.register(cmd_w, select.POLLOUT)
        try:
            self._write(self._init, _START_SECONDS)
            hello = self._reader.frame(_START_SECONDS)
        except _Broken as exc:
            hello = None
            why = str(exc)
        else:
            why = "it did not answer" if hello is None else "it answered with something else"
        if hello is None or hello.get("type") != "hello":
            tail = self._log_tail()
            self._release()
            raise SandboxError(f"the sandbox process could not start ({why}"
                               f"{'; it said: ' + tail if tail else ''})",
                               "check that the Python tomes runs on can start "
                               f"'{self._python} -I -S {_CHILD}'")
        if not self.layers:
            self._record_layers(hello)

    def _record_layers(self, hello: dict) -> None:
        layers = hello.get("layers") or {}
        self.layers = {str(k): v for k, v in layers.items()}
        self.details = {str(k): str(v) for k, v in (hello.get("details") or {}).items()}
        for name, state in self.layers.items():
            if isinstance(state, str):
                self._warn(name, state)
        try:
            self._set_cpu_limit()
            self.layers["cpu_limit"] = True
        except OSError as exc:
            self.layers["cpu_limit"] = f"unavailable: prlimit on the child failed ({exc})"
            self._warn("cpu_limit", self.layers["cpu_limit"])

    def _warn(self, name: str, state: str) -> None:
        line = f"sandbox: {name} {state}; {_CONSEQUENCES.get(name, 'that layer is missing')}"
        self.warnings.append(line)
        if line not in _warned:
            _warned.add(line)
            log.warning(line)

    def _log_tail(self, chars: int = 400) -> str:
        try:
            with open(os.path.join(self.tmp, _LOG_NAME), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - chars))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    # --- limits -------------------------------------------------------------------

    def _cpu_used(self) -> float:
        # Opened once per child and re-read from offset 0 (the kernel renders it afresh);
        # the descriptor names this process, so a reused pid cannot answer for it.
        if self._stat is None:
            self._stat = os.open(f"/proc/{self._proc.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._stat, 4096, 0)
        fields = data[data.rindex(b")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def _set_cpu_limit(self) -> float:
        """From outside, so the child can never raise it: a soft limit one block's worth
        above what it has used, plus a second for the child's own precise timer to fire
        first (SIGXCPU stops the block, variables kept); hard unchanged."""
        used = self._cpu_used()
        _, hard = resource.prlimit(self._proc.pid, resource.RLIMIT_CPU)
        soft = math.ceil(used + self.limits.cpu_seconds) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.prlimit(self._proc.pid, resource.RLIMIT_CPU, (soft, hard))
        return used

    # --- running ------------------------------------------------------------------

    def _write(self, data: bytes, timeout: float) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self._cmd, view):]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Broken("the sandbox stopped reading its input") from None
                self._out_poll.poll(max(1, math.ceil(min(remaining, 1.0) * 1000)))
            except (BrokenPipeError, OSError):
                raise _Broken("eof") from None

    def run(self, code: str) -> Execution:
        """Run one block; blocking (from async code use ``arun``)."""
        started = time.monotonic()
        if self._owner == threading.get_ident():
            # The child is waiting for this handler's reply; a nested block cannot run.
            raise RuntimeError("Sandbox.run() was called from one of its own handlers; "
                               "give a nested controller a Sandbox of its own")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                if self._closed:
                    return Execution(error="the sandbox is closed", seconds=0.0)
                if self._proc is None:
                    self._start()            # SandboxError: it cannot start at all
                pending, self._pending = self._pending, None
                try:
                    result = self._drive(self._exchange(str(code)))
                except _Broken as broken:
                    result = self._recover(str(broken))
                return self._finish(result, pending, started)
            finally:
                self._owner = None
                if self._closed:
                    self._cleanup()

    async def arun(self, code: str) -> Execution:
        """``run`` for an event loop, on the loop itself: the pipe is watched by the loop
        instead of a worker thread, and handlers that are coroutine functions are awaited
        there (no thread switch per block or per call; a plain handler is called
        inline, so it must not block). The same limits, checks and recovery as ``run``."""
        import asyncio

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if not self._lock.acquire(blocking=False):
            await loop.run_in_executor(None, self._lock.acquire)
        try:
            if self._closed:
                return Execution(error="the sandbox is closed", seconds=0.0)
            if self._proc is None:
                await loop.run_in_executor(None, self._start)
            pending, self._pending = self._pending, None
            try:
                result = await self._adrive(self._exchange(str(code)))
            except _Broken as broken:
                result = await loop.run_in_executor(None, self._recover, str(broken))
            return self._finish(result, pending, started)
        finally:
            try:
                if self._closed:
                    self._cleanup()
            finally:
                self._lock.release()

    def _finish(self, result: Execution, pending: str | None, started: float) -> Execution:
        if pending:
            result.restarted = True
            result.stderr = f"[{pending}]\n" + result.stderr
        result.seconds = time.monotonic() - started
        return result

    # The exchange of one block is a generator, so the blocking and the async driver
    # share every rule: it yields ("write", bytes, timeout), ("frame", timeout) (sent
    # back: the next frame or None) and ("call", message) (sent back: the handler's
    # value or the exception it raised), and returns the Execution.

    def _drive(self, steps: Any) -> Execution:
        sent: Any = None
        while True:
            try:
                step = steps.send(sent)
            except StopIteration as stop:
                return stop.value
            if step[0] == "frame":
                sent = self._reader.frame(step[1])
            elif step[0] == "write":
                self._write(step[1], step[2])
                sent = None
            else:
                sent = self._call(step[1], None)

    async def _adrive(self, steps: Any) -> Execution:
        import asyncio
        import inspect

        loop = asyncio.get_running_loop()
        watch = _Watch(loop, self._reader)
        sent: Any = None
        try:
            while True:
                try:
                    step = steps.send(sent)
                except StopIteration as stop:
                    return stop.value
                if step[0] == "frame":
                    sent = await watch.frame(step[1])
                elif step[0] == "write":
                    await self._awrite(loop, step[1], step[2])
                    sent = None
                else:
                    sent = self._call(step[1], inspect.isawaitable)
                    if isinstance(sent, _Pending):
                        try:
                            sent = _Value(await sent.awaitable)
                        except Exception as exc:  # noqa: BLE001 - the model's to see
                            sent = _Failed(exc)
        except _Broken:
            raise
        except BaseException:
            # Cancelled (or interrupted) mid-block: the child is mid-block or waiting
            # for a reply that will not come, so it cannot go on.
            watch.close()                    # before its pipe is closed
            self._interrupted()
            raise
        finally:
            watch.close()

    def _interrupted(self) -> None:
        if self._proc is None:
            return                           # already released
        self._release()
        self._pending = "the previous block was interrupted; " + _LOST
        self.restarts += 1

    async def _awrite(self, loop: Any, data: bytes, timeout: float) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self._cmd, view):]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, OSError):
                raise _Broken("eof") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Broken("the sandbox stopped reading its input")
            ready = loop.create_future()
            fd = self._cmd
            loop.add_writer(fd, lambda: ready.done() or ready.set_result(True))
            try:
                await _wait_for(ready, min(remaining, 1.0))
            finally:
                loop.remove_writer(fd)

    def _exchange(self, code: str) -> Any:
        limits = self.limits
        try:
            cpu_start = self._set_cpu_limit()
        except OSError:
            cpu_start = 0.0
            if self._proc.poll() is not None:
                raise _Broken("eof") from None
        self._seq += 1
        yield ("write", _encode({"type": "exec", "seq": self._seq, "code": code}), _REPLY_SECONDS)
        spent = 0.0                          # wall time in the block's own code
        mark = time.monotonic()
        calls = 0
        while True:
            now = time.monotonic()
            spent += now - mark
            mark = now
            if spent >= limits.wall_seconds:
                raise _Broken(f"wall time limit ({limits.wall_seconds:g} s) exceeded: the "
                              "block was killed and its output is lost")
            timeout = limits.wall_seconds - spent
            if spent >= limits.cpu_seconds:
                # A single-threaded child cannot use more CPU than wall time, so there is
                # nothing to check before cpu_seconds have passed.
                try:
                    used = self._cpu_used() - cpu_start
                except (OSError, ValueError, IndexError):
                    used = 0.0
                if used > limits.cpu_seconds + _CPU_GRACE:
                    raise _Broken(f"CPU time limit ({limits.cpu_seconds:g} s) exceeded: the "
                                  "block did not stop when told, so it was killed and its "
                                  "output is lost")
                timeout = min(timeout, 0.25)
            else:
                timeout = min(timeout, limits.cpu_seconds - spent + 0.05)
            message = yield ("frame", timeout)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "call":
                calls += 1
                outcome = yield ("call", message)
                yield ("write", self._reply(message, outcome), _REPLY_SECONDS)
                mark = time.monotonic()      # the handler's time is not the block's
            elif kind == "done":
                if message.get("seq") != self._seq:
                    continue                 # a forged or stale frame from model code
                return self._execution(message, calls)
            else:
                raise _Broken(f"the sandbox sent a malformed message (type {kind!r}; the code "
                              "may have written to the sandbox's control pipe)")

    def _call(self, message: dict, awaitable: Callable[[Any], bool] | None) -> Any:
        """Call the handler a "call" frame names: ``_Value``, ``_Failed``, or (async
        driver) ``_Pending`` with what is left to await."""
        name = message.get("name")
        handler = self._handlers.get(name) if isinstance(name, str) else None
        try:
            if handler is None:
                raise NameError(f"the sandbox has no function named {name!r}")
            args, kwargs = message.get("args") or [], message.get("kwargs") or {}
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError(f"{name}(): malformed arguments")
            value = handler(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a handler's failure is the model's to see
            return _Failed(exc)
        except BaseException:
            # KeyboardInterrupt and the like belong to the host; the child is left waiting
            # mid-call, so it cannot go on.
            self._interrupted()
            raise
        if awaitable is not None and awaitable(value):
            return _Pending(value)
        return _Value(value)

    def _reply(self, message: dict, outcome: Any) -> bytes:
        name = message.get("name")
        reply: dict[str, Any] = {"type": "reply", "id": message.get("id")}
        if isinstance(outcome, _Value):
            try:
                data = _encode({**reply, "ok": True, "value": outcome.value})
                if len(data) > _MAX_FRAME:
                    raise ValueError(f"{name}() returned {len(data) >> 20} MB; at most "
                                     f"{_MAX_FRAME >> 20} MB can be passed into the sandbox")
                return data
            except Exception as exc:  # noqa: BLE001
                outcome = _Failed(exc)
        exc = outcome.error
        text = str(exc) or type(exc).__name__
        kind = _builtin_kind(exc)
        if kind != type(exc).__name__:
            text = f"{type(exc).__name__}: {text}"
        if len(text) > 2000:
            text = text[:2000] + " [...]"
        return _encode({**reply, "ok": False, "error": text, "kind": kind})

    def _execution(self, message: dict, calls: int) -> Execution:
        limit = self.limits.output_chars
        stdout = str(message.get("stdout") or "")
        stderr = str(message.get("stderr") or "")
        # The child bounds its output; this only guards against a forged frame.
        slack = limit + 64
        if len(stdout) > slack:
            stdout = stdout[:limit] + f"\n[... {len(stdout) - limit} more characters cut]"
        if len(stderr) > slack:
            stderr = stderr[:limit] + f"\n[... {len(stderr) - limit} more characters cut]"
        error = message.get("error")
        final = message.get("final")
        final_set = isinstance(final, dict) and "value" in final
        return Execution(stdout=stdout, stderr=stderr,
                         error=None if error is None else str(error),
                         final=final["value"] if final_set else None,
                         final_set=final_set, calls=calls)

    def _recover(self, why: str) -> Execution:
        proc = self._proc
        if why == "eof" and proc is not None:
            try:
                proc.wait(timeout=1.0)       # the exit status follows the EOF closely
            except subprocess.TimeoutExpired:
                pass
            why = self._death(proc)
        self._kill_process()
        tail = self._log_tail(300) if proc is not None else ""
        self._release()
        if self._closed:
            return Execution(error="the sandbox was closed while the block ran")
        self.restarts += 1
        error = f"{why}; {_LOST}"
        try:
            self._start()
        except SandboxError as exc:
            error += f". Restarting failed: {exc}"
        return Execution(stderr=tail, error=error, restarted=True)

    def _death(self, proc: subprocess.Popen | None) -> str:
        code = proc.poll() if proc is not None else None
        if code is None:
            return "the sandbox process closed its pipe (the code closed it or crashed)"
        if code < 0:
            number = -code
            if number == signal.SIGXCPU:
                return (f"CPU time limit ({self.limits.cpu_seconds:g} s) exceeded: the "
                        "process was killed by SIGXCPU")
            if number == signal.SIGXFSZ:
                return f"file size limit ({self.limits.file_mb} MB) exceeded"
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            return (f"the sandbox process was killed by {name} (the code killed itself, "
                    "or crashed)")
        return (f"the sandbox process exited with status {code} (os._exit() or a crash; "
                "use FINAL(value) to give the answer)")
