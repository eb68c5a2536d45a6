"""The program a sandbox child runs: it locks itself down, then runs code blocks.

Started by ``pipelines._sandbox`` as
``python -I -S -B _sandbox_child.py CMD_FD MSG_FD HOST_PID`` (a script, never an import of
the tomes package), so it reaches nothing of tomes: it uses the standard library only.
Before the first untrusted byte runs it applies, in this order, what cannot be undone:
a network namespace with no interfaces, resource limits, Landlock (read the Python
stdlib and the system libraries, read/write its own temp dir, no TCP, no signals outside
itself), dropped capabilities, and a seccomp filter (no fork/exec, no sockets, no
signals to other processes, no raising limits, no namespaces, ptrace or io_uring).
Last come the Python-level guards: an audit hook that refuses process, network, signal
and ctypes operations with a message the model can act on. The guards are for the
message only; the kernel layers hold without them (the tests run both ways).
It reports what it achieved in its first message; the host decides what to warn about.

Protocol: both directions are frames of a 4-byte big-endian length and a JSON object.
host -> child: {"type": "init", ...} once, then {"type": "exec", "seq", "code"} or
{"type": "reply", "id", "ok", "value" | "error", "kind"}; child -> host: {"type":
"hello", "layers", "details"}, {"type": "call", "id", "name", "args", "kwargs"},
{"type": "done", "seq", "stdout", "stderr", "error", "final"}. Model code can write to
the pipe itself; that gains it nothing it could not do through the handlers it is
given, and the host bounds and checks what it reads.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import json
import linecache
import os
import resource
import signal
import struct
import sys
import time
import traceback

_HEADER = struct.Struct(">I")
_ERROR_CHARS = 1500          # the traceback tail handed back; the output budget is separate


# --- framing -------------------------------------------------------------------------

def _read_exact(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("host closed the pipe")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _recv(fd: int) -> dict:
    (length,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return json.loads(_read_exact(fd, length))


def _encode(message: dict) -> bytes:
    # ASCII with escapes: a lone surrogate in model output cannot fail the encoding.
    data = json.dumps(message).encode("ascii")
    return _HEADER.pack(len(data)) + data


def _send_bytes(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- bounded capture of print output --------------------------------------------------

class _Budget:
    """stdout and stderr share one budget of characters, in the order they are written."""

    def __init__(self, limit: int) -> None:
        self.room = limit
        self.cut = 0


class _Bounded:
    """A text stream that keeps what fits in the shared budget and counts the rest, so a
    block that prints a gigabyte costs a counter, not a gigabyte."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.parts: list[str] = []
        self.cut = 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        budget = self.budget
        if budget.room >= len(text):
            self.parts.append(text)
            budget.room -= len(text)
        elif budget.room > 0:
            self.parts.append(text[:budget.room])
            self.cut += len(text) - budget.room
            budget.room = 0
        else:
            self.cut += len(text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def text(self) -> str:
        body = "".join(self.parts)
        if self.cut:
            body += f"\n[... {self.cut} more characters cut]"
        return body


# --- containment ----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.unshare.restype = ctypes.c_int

_NR = {  # x86_64 syscall numbers
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    "capset": 126,
}
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def _err() -> str:
    number = ctypes.get_errno()
    return f"{os.strerror(number)} (errno {number})"


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _network_namespace() -> tuple[bool | str, str]:
    """A fresh network namespace: no interfaces but a loopback that is down, so even
    127.0.0.1 is unreachable. Root may create one directly; anyone else inside a user
    namespace of their own (which maps their uid to itself, so files and the host's
    prlimit see the same user)."""
    if _libc.unshare(CLONE_NEWNET) == 0:
        return True, "network namespace with no interfaces"
    direct = _err()
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return (f"unavailable: unshare(CLONE_NEWNET) failed ({direct}) and so did a user "
                f"namespace ({_err()})"), ""
    try:
        _write_proc("/proc/self/setgroups", "deny")
        _write_proc("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_proc("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        # The namespace exists either way; only the id mapping failed.
        return True, f"network namespace in a user namespace (id mapping failed: {exc})"
    return True, "network namespace with no interfaces, inside a user namespace"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
# Rights that make sense on a single file (Landlock refuses directory rights on one).
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


def _landlock(reads: list[str], read_writes: list[str]) -> dict[str, bool | str]:
    """Restrict this process with Landlock: the filesystem, TCP and signals."""
    abi = _libc.syscall(_NR["landlock_create_ruleset"], None, 0, 1)
    if abi < 1:
        why = f"unavailable: the kernel has no Landlock ({_err()})"
        return {"landlock": why, "landlock_net": why, "landlock_signals": why}
    fs = (1 << 13) - 1                       # ABI 1: execute .. make_sym
    if abi >= 2:
        fs |= 1 << 13                        # refer
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    net = 0b11 if abi >= 4 else 0            # bind_tcp, connect_tcp: no rule allows any
    scoped = 0b11 if abi >= 6 else 0         # abstract unix sockets, signals
    attr = _RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_NR["landlock_create_ruleset"], ctypes.byref(attr), size, 0)
    if ruleset < 0:
        why = f"unavailable: landlock_create_ruleset failed: {_err()}"
        return {"landlock": why, "landlock_net": why, "landlock_signals": why}
    read = _FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE
    try:
        for paths, access in ((reads, read), (read_writes, fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    allowed = access if os.path.isdir(path) else access & _FILE_RIGHTS
                    rule = _PathBeneath(allowed & fs, fd)
                    if _libc.syscall(_NR["landlock_add_rule"], ruleset, 1, ctypes.byref(rule), 0):
                        why = f"unavailable: landlock_add_rule({path}) failed: {_err()}"
                        return {"landlock": why, "landlock_net": why, "landlock_signals": why}
                finally:
                    os.close(fd)
        if _libc.syscall(_NR["landlock_restrict_self"], ruleset, 0):
            why = f"unavailable: landlock_restrict_self failed: {_err()}"
            return {"landlock": why, "landlock_net": why, "landlock_signals": why}
    finally:
        os.close(ruleset)
    return {
        "landlock": True,
        "landlock_net": True if net else f"unavailable: Landlock ABI {abi} has no TCP rules",
        "landlock_signals": True if scoped else
        f"unavailable: Landlock ABI {abi} cannot scope signals",
        "_abi": abi,
    }


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> bool | str:
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) and ctypes.get_errno() == errno.EINVAL:
            break                              # past the last capability
    header = _CapHeader(0x20080522, 0)         # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.syscall(_NR["capset"], ctypes.byref(header), data):
        return f"unavailable: capset failed: {_err()}"
    return True


# seccomp-BPF: a classic BPF program over struct seccomp_data {int nr; u32 arch;
# u64 ip; u64 args[6]}.
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000       # SECCOMP_RET_KILL_PROCESS
_EPERM = 0x00050000 | errno.EPERM
_AUDIT_ARCH_X86_64 = 0xC000003E

_DENIED = {  # refused with EPERM whatever the arguments
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435,
    "tkill": 200, "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "process_madvise": 440, "process_mrelease": 448,
    "socket": 41, "socketpair": 53, "setrlimit": 160,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "setsid": 112, "setpgid": 109, "reboot": 169, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
    "request_key": 249, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "setuid": 105, "setgid": 106, "setreuid": 113,
    "setregid": 114, "setresuid": 117, "setresgid": 119, "setgroups": 116, "capset": 126,
    "personality": 135, "mknod": 133, "mknodat": 259, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "iopl": 172, "ioperm": 173, "swapon": 167, "swapoff": 168,
    "acct": 163, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171, "quotactl": 179,
    "quotactl_fd": 443, "fanotify_init": 300, "syslog": 103, "vhangup": 153,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "statmount": 457, "listmount": 458,
    # Other processes of the same user could be reniced, pinned or migrated.
    "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
    "sched_setaffinity": 203, "sched_setattr": 314, "ioprio_set": 251,
    "migrate_pages": 256, "move_pages": 279,
}
_PROCESS_CALLS = ("clone", "fork", "vfork", "clone3")
_SELF_ONLY = {"kill": 62, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297}
_PRLIMIT64 = 302


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return code, jt, jf, k


def _arg(index: int, high: bool = False) -> int:
    return 16 + 8 * index + (4 if high else 0)


def _seccomp_program(pid: int, allow_processes: bool) -> list[tuple[int, int, int, int]]:
    prog = [
        _ins(_LD_ABS, 4),                                  # arch
        _ins(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _ins(_RET, _KILL),                                 # i386 entry points: no
        _ins(_LD_ABS, 0),                                  # nr
        _ins(_JGE, 0x40000000, 0, 1),                      # the x32 ABI: refuse it all
        _ins(_RET, _EPERM),
    ]
    for name, nr in _DENIED.items():
        if allow_processes and name in _PROCESS_CALLS:
            continue
        prog += [_ins(_JEQ, nr, 0, 1), _ins(_RET, _EPERM)]
    for nr in _SELF_ONLY.values():
        # A signal may go to this process only: not the host, not a process group, not -1.
        # pid_t is 32 bits, so the kernel reads the low word only, as this check does.
        prog += [_ins(_JEQ, nr, 0, 4), _ins(_LD_ABS, _arg(0)), _ins(_JEQ, pid, 0, 1),
                 _ins(_RET, _ALLOW), _ins(_RET, _EPERM)]
    # prlimit64 may read limits (new == NULL) but never set them.
    prog += [_ins(_JEQ, _PRLIMIT64, 0, 6), _ins(_LD_ABS, _arg(2)), _ins(_JEQ, 0, 0, 3),
             _ins(_LD_ABS, _arg(2, high=True)), _ins(_JEQ, 0, 0, 1), _ins(_RET, _ALLOW),
             _ins(_RET, _EPERM)]
    prog.append(_ins(_RET, _ALLOW))
    return prog


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp(allow_processes: bool) -> bool | str:
    if os.uname().machine != "x86_64":
        return f"unavailable: the seccomp filter is written for x86_64, not {os.uname().machine}"
    prog = _seccomp_program(os.getpid(), allow_processes)
    filters = (_SockFilter * len(prog))(*[_SockFilter(c, t, f, k) for c, t, f, k in prog])
    fprog = _SockFprog(len(prog), filters)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0):
        return f"unavailable: the kernel refused the seccomp filter: {_err()}"
    return True


def _rlimits(limits: dict) -> tuple[bool | str, str]:
    done, failed = [], []
    mb = 1024 * 1024
    processes = int(limits["max_processes"])
    wanted = {
        "as": (resource.RLIMIT_AS, int(limits["memory_mb"]) * mb),
        "fsize": (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * mb),
        # RLIMIT_NPROC counts every process of the user, so it can only be a ceiling;
        # with no processes allowed the seccomp filter is what refuses fork.
        "nproc": (resource.RLIMIT_NPROC, processes),
        "nofile": (resource.RLIMIT_NOFILE, 256),
        "core": (resource.RLIMIT_CORE, 0),
    }
    for name, (which, value) in wanted.items():
        try:
            resource.setrlimit(which, (value, value))
            done.append(name)
        except (OSError, ValueError) as exc:
            failed.append(f"{name} ({exc})")
    # CPU is set by the host before each block (prlimit from outside), so that a block
    # gets its own budget while this process can never raise it.
    detail = "set: " + ", ".join(done)
    if os.getuid() == 0:
        detail += " (nproc is not enforced for root; the seccomp filter refuses fork)"
    if failed:
        return "partly unavailable: " + ", ".join(failed), detail
    return True, detail


def _lock_down(init: dict, keep_fds: tuple[int, ...]) -> tuple[dict, dict]:
    off = set(init.get("disable", ()))
    # Nothing but the two pipes and the standard streams survives from the host.
    for fd in range(3, max(keep_fds) + 1):
        if fd not in keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass
    os.closerange(max(keep_fds) + 1, 65536)
    layers: dict[str, bool | str] = {}
    details: dict[str, str] = {}
    if "netns" in off:
        layers["netns"] = False
    else:
        layers["netns"], details["netns"] = _network_namespace()
    layers["rlimits"], details["rlimits"] = _rlimits(init["limits"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a too-big write fails, not kills
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        layers["no_new_privs"] = f"unavailable: {_err()}"
    else:
        layers["no_new_privs"] = True
    tmp = init["tmp"]
    reads = sorted({p for p in sys.path if p and os.path.exists(p)}
                   | {os.path.dirname(os.__file__)}
                   | {p for p in ("/usr/lib", "/usr/lib64", "/lib", "/lib64",
                                  "/usr/share/zoneinfo", "/dev/urandom") if os.path.exists(p)})
    if "landlock" in off:
        layers.update(landlock=False, landlock_net=False, landlock_signals=False)
    else:
        result = _landlock(reads, [tmp, "/dev/null"])
        abi = result.pop("_abi", None)
        layers.update(result)
        if abi:
            details["landlock"] = (f"ABI {abi}: reads {', '.join(reads)}; reads and writes "
                                   f"{tmp} only")
    layers["capabilities"] = _drop_capabilities()
    if "seccomp" in off:
        layers["seccomp"] = False
    else:
        allow = int(init["limits"]["max_processes"]) > 0
        layers["seccomp"] = _seccomp(allow)
        details["seccomp"] = ("refused: " + ("exec" if allow else "fork/clone/exec")
                              + ", sockets, signals to other processes, setting limits, "
                              "namespaces, mounts, ptrace, io_uring, bpf")
    return layers, details


# --- Python-level guards: a clear message before the kernel says EPERM -----------------

_PROCESS_EVENTS = {"os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
                   "os.spawn", "subprocess.Popen", "pty.spawn"}


def _blocked(what: str) -> PermissionError:
    return PermissionError(f"blocked: {what}")


def _install_guards() -> None:
    me = os.getpid()

    def guard(event: str, args: tuple) -> None:
        if event.startswith("socket."):
            raise _blocked("network is not available in the sandbox")
        if event in _PROCESS_EVENTS:
            raise _blocked("starting processes or programs is not allowed in the sandbox "
                           f"({event})")
        if event.startswith("ctypes."):
            raise _blocked("ctypes (calling C code directly) is not available in the sandbox")
        if event == "os.killpg" or event == "os.kill" and args and args[0] != me:
            raise _blocked("signals can only be sent to the sandbox's own process")
        if event in ("resource.setrlimit", "resource.prlimit") and (
                event == "resource.setrlimit" or len(args) > 2 and args[2] is not None):
            raise _blocked("the sandbox's limits cannot be changed")

    sys.addaudithook(guard)


# --- running blocks --------------------------------------------------------------------

class _TimeLimit(BaseException):
    """Raised in a block by SIGPROF (its CPU timer) or SIGXCPU (the rlimit); a
    BaseException so that `except Exception` in model code does not swallow it. Code that
    swallows even this gets SIGXCPU again every second, then the host kills it."""


_LIMIT_SIGNALS = {signal.SIGPROF, signal.SIGXCPU}

_NETWORK_FILES = ("socket.py", "ssl.py", "/http/", "/urllib/", "/email/", "smtplib.py",
                  "ftplib.py", "poplib.py", "imaplib.py", "/asyncio/")
_PROCESS_FILES = ("subprocess.py", "/multiprocessing/", "/concurrent/", "pty.py")


def _explain(exc: BaseException, files: list[str]) -> str | None:
    """Name the sandbox rule behind an OSError the kernel raised, if one did."""
    if not isinstance(exc, OSError):
        return None
    if str(exc).startswith("blocked:"):
        return str(exc)                          # a guard's message: lead with it too
    code = exc.errno
    if code in (errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH) or (
            code in (errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT)
            and any(any(mark in f for mark in _NETWORK_FILES) for f in files)):
        return "blocked: network is not available in the sandbox"
    if code in (errno.EPERM, errno.EAGAIN) and any(
            any(mark in f for mark in _PROCESS_FILES) for f in files):
        return "blocked: starting processes or programs is not allowed in the sandbox"
    # Landlock answers EXDEV to a link or rename that would carry a file across its rules.
    if code in (errno.EPERM, errno.EACCES, errno.EROFS, errno.EXDEV) and exc.filename is not None:
        return (f"blocked: {exc.filename!s} is outside what the sandbox may touch (it reads "
                "Python's standard library and reads/writes its own temp dir, its cwd)")
    if code == errno.EFBIG:
        return "file size limit exceeded: a file in the sandbox may not grow past the limit"
    if code == errno.EPERM:
        return ("blocked: operation not permitted in the sandbox (no processes, network, "
                "signals to other processes or changes to its limits)")
    return None


def _jsonable(value, depth: int = 0):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 50:
        return str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    try:
        return str(value)
    except Exception as exc:  # noqa: BLE001 - a broken __str__ must not lose the answer
        return f"<{type(value).__name__}: str() failed: {exc}>"


class _Child:
    def __init__(self, cmd_fd: int, msg_fd: int, init: dict) -> None:
        self.cmd_fd, self.msg_fd = cmd_fd, msg_fd
        limits = init["limits"]
        self.output_chars = int(limits["output_chars"])
        self.cpu_seconds = float(limits["cpu_seconds"])
        self.memory_mb = int(limits["memory_mb"])
        self.max_frame = int(init["max_frame"])
        self.in_block = False
        self.final: dict | None = None
        self.blocks = 0
        self.calls = 0
        self.namespace: dict = {"__name__": "__sandbox__", "__builtins__": builtins}
        self.namespace.update(init["variables"])
        for name in init["handlers"]:
            self.namespace[name] = self._handler(name)
        self.namespace["FINAL"] = self._final_value
        self.namespace["FINAL_VAR"] = self._final_var

    def _handler(self, name: str):
        def call(*args, **kwargs):
            self.calls += 1
            try:
                frame = _encode({"type": "call", "id": self.calls, "name": name,
                                 "args": list(args), "kwargs": kwargs})
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name}(): arguments must be JSON values (str, number, "
                                f"list, dict, bool, None): {exc}") from None
            if len(frame) > self.max_frame:
                raise ValueError(f"{name}(): the arguments are {len(frame) >> 20} MB; a call "
                                 f"may carry {self.max_frame >> 20} MB")
            # A time-limit signal in the middle of a frame would desync the pipe; it is
            # held back until the reply is in, then stops the block as usual.
            signal.pthread_sigmask(signal.SIG_BLOCK, _LIMIT_SIGNALS)
            try:
                _send_bytes(self.msg_fd, frame)
                while True:
                    reply = _recv(self.cmd_fd)
                    if reply.get("type") == "reply" and reply.get("id") == self.calls:
                        break
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _LIMIT_SIGNALS)
            if reply.get("ok"):
                return reply.get("value")
            kind = getattr(builtins, str(reply.get("kind")), None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(reply.get("error") or f"{name}() failed")
        call.__name__ = call.__qualname__ = name
        return call

    def _final_value(self, value=None) -> None:
        self.final = {"value": _jsonable(value)}

    def _final_var(self, name) -> None:
        if not isinstance(name, str):
            raise TypeError(f"FINAL_VAR takes the name of a variable as a string, e.g. "
                            f"FINAL_VAR('answer'), not a {type(name).__name__}")
        key = name.strip().strip("'\"").strip()
        if key not in self.namespace:
            raise NameError(f"FINAL_VAR({name!r}): no variable named {key!r} is defined")
        self.final = {"value": _jsonable(self.namespace[key])}

    def _on_cpu_limit(self, signum, frame) -> None:
        if self.in_block:
            raise _TimeLimit()

    def _describe(self, exc: BaseException, cpu_start: float) -> str:
        if isinstance(exc, _TimeLimit):
            used = time.process_time() - cpu_start
            return (f"CPU time limit ({self.cpu_seconds:g} s) exceeded: the block was stopped "
                    f"after {used:.1f} s of CPU; variables are kept")
        if isinstance(exc, MemoryError):
            return (f"memory limit ({self.memory_mb} MB) exceeded: the block ran out of memory "
                    "(MemoryError) and was stopped; variables are kept")
        if isinstance(exc, SystemExit):
            return (f"SystemExit({exc.code!r}): sys.exit() does not end the sandbox; give the "
                    "answer with FINAL(value). Variables are kept")
        files, walk = [], exc.__traceback__
        while walk is not None:
            files.append(walk.tb_frame.f_code.co_filename)
            walk = walk.tb_next
        try:
            report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
            # Hide this file's frames (the runner, the guards): the model needs its own.
            report.stack = traceback.StackSummary.from_list(
                [frame for frame in report.stack if frame.filename != __file__])
            text = "".join(report.format()).rstrip()
        except BaseException:  # noqa: BLE001 - a broken __str__ still gets a message
            text = f"{type(exc).__name__} (its message could not be formatted)"
        if len(text) > _ERROR_CHARS:
            text = "[... traceback cut]\n" + text[-_ERROR_CHARS:]
        why = _explain(exc, files)
        return f"{why}\n{text}" if why else text

    def run_block(self, code: str) -> dict:
        self.blocks += 1
        self.final = None
        filename = f"<block {self.blocks}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        budget = _Budget(self.output_chars)
        out, err = _Bounded(budget), _Bounded(budget)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        error = None
        cpu_start = time.process_time()
        try:
            try:
                compiled = compile(code, filename, "exec")
                self.in_block = True
                # A precise per-block CPU timer; model code can cancel it, but not the
                # RLIMIT_CPU the host sets a little above it, nor the host's kill after that.
                signal.setitimer(signal.ITIMER_PROF, self.cpu_seconds)
                try:
                    exec(compiled, self.namespace)
                finally:
                    self.in_block = False
                    signal.setitimer(signal.ITIMER_PROF, 0)
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the model
                error = self._describe(exc, cpu_start)
        except BaseException as exc:  # noqa: BLE001 - e.g. a second SIGXCPU while describing
            self.in_block = False
            error = error or f"{type(exc).__name__} while reporting the block's error"
        finally:
            sys.stdout, sys.stderr = saved
            linecache.cache.pop(filename, None)
        return {"type": "done", "stdout": out.text(), "stderr": err.text(),
                "error": error, "final": self.final}

    def serve(self) -> None:
        signal.signal(signal.SIGXCPU, self._on_cpu_limit)
        signal.signal(signal.SIGPROF, self._on_cpu_limit)
        while True:
            message = _recv(self.cmd_fd)
            if message.get("type") != "exec":
                continue                         # e.g. a late reply after a time limit
            try:
                result = self.run_block(str(message.get("code", "")))
                result["seq"] = message.get("seq")
                frame = _encode(result)
                if len(frame) > self.max_frame:
                    result["final"] = None
                    result["error"] = (f"the value given to FINAL is {len(frame) >> 20} MB; "
                                       f"at most {self.max_frame >> 20} MB can be returned")
                    frame = _encode(result)
            except MemoryError:
                frame = _encode({"type": "done", "seq": message.get("seq"), "stdout": "",
                                 "stderr": "", "final": None,
                                 "error": f"memory limit ({self.memory_mb} MB) exceeded "
                                          "while collecting the block's output"})
            _send_bytes(self.msg_fd, frame)


def main() -> None:
    cmd_fd, msg_fd, host = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    # Die with the host thread that started us, and not outlive a host that is gone already.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != host:
        os._exit(0)
    init = _recv(cmd_fd)
    os.chdir(init["tmp"])
    layers, details = _lock_down(init, (0, 1, 2, cmd_fd, msg_fd))
    child = _Child(cmd_fd, msg_fd, init)
    if "guards" in init.get("disable", ()):
        layers["python_guards"] = False
    else:
        _install_guards()
        layers["python_guards"] = True
    del init
    _send_bytes(msg_fd, _encode({"type": "hello", "layers": layers, "details": details,
                                 "pid": os.getpid()}))
    try:
        child.serve()
    except EOFError:
        pass


if __name__ == "__main__":
    main()
