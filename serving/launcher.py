"""Starting vLLM with a preset's arguments: ``tomes serve vllm --preset NAME``.

``plan()`` builds the exact command (no vLLM needed, so ``--dry-run`` works anywhere);
``start()`` runs it, waits until the server answers ``/health`` and returns a handle
with the ``base_url`` the openai backend should use.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.events import Event, OnEvent, ignore
from serving import presets
from serving.base import BackendError
from serving.presets import Preset

GPU_FIX = "pip install 'tomes[gpu]' on a machine with an NVIDIA GPU (vLLM needs CUDA)"


@dataclass(frozen=True)
class Launch:
    preset: Preset
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return self.base_url[: -len("/v1")] + "/health"

    def shell(self) -> str:
        """The command as one line to paste into a shell (environment first)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.command)

    def settings(self) -> dict[str, str]:
        """The environment that points tomes at this server."""
        return {"TOMES_BACKEND": "openai", "TOMES_BASE_URL": self.base_url,
                "TOMES_MODEL": self.preset.model}

    def to_dict(self) -> dict[str, object]:
        return {"preset": self.preset.name, "model": self.preset.model, "command": self.command,
                "env": self.env, "shell": self.shell(), "base_url": self.base_url,
                "settings": self.settings()}


def vllm_version() -> str | None:
    if importlib.util.find_spec("vllm") is None and shutil.which("vllm") is None:
        return None
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def plan(name: str, *, host: str = "127.0.0.1", port: int = 8000, extra: list[str] | tuple[str, ...] = ()) -> Launch:
    """The ``vllm serve`` command for a preset (nothing is started)."""
    preset = presets.get(name)
    if preset.backend != "openai":
        raise BackendError(
            f"{preset.name} is the embedded CPU model; it runs inside tomes, not under vLLM",
            "use it with --backend embedded (the default); `tomes models` lists the vLLM presets",
        )
    command = ["vllm", "serve", preset.model, "--host", host, "--port", str(port),
               *preset.vllm_args, *extra]
    return Launch(preset=preset, command=command, env=dict(preset.env), host=host, port=port)


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for piece in v.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass
class Served:
    """A running ``vllm serve`` started by tomes."""

    launch: Launch
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.launch.base_url

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> int:
        return self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        try:  # vLLM spawns workers: stop its whole process group
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(
    launch: Launch, *, timeout: float = 1800.0, log_path: Path | None = None,
    on_event: OnEvent = ignore, poll_s: float = 2.0,
) -> Served:
    """Run the planned command and wait until the server is healthy."""
    from app.settings import get_settings

    version = vllm_version()
    if version is None:
        raise BackendError("vLLM is not installed", GPU_FIX)
    limit = launch.preset.vllm_max
    if limit and version != "unknown" and _version_tuple(version)[:2] > _version_tuple(limit)[:2]:
        on_event(Event("serve", message=f"warning: {launch.preset.name} needs vLLM <= {limit}; "
                                        f"installed {version}", data={"warning": True}))
    try:
        if httpx.get(launch.health_url, timeout=2.0).status_code == 200:
            raise BackendError(
                f"a server already answers at {launch.base_url}",
                "use it as it is, or start another on a free port with --port",
            )
    except httpx.HTTPError:
        pass
    log_path = log_path or get_settings().home / "logs" / f"vllm-{launch.preset.name}-{launch.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = list(launch.command)
    exe = shutil.which("vllm")
    command[:1] = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **launch.env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    served = Served(launch, process, log_path)
    try:
        return _wait_ready(served, launch, timeout, on_event, poll_s)
    except BaseException:
        # Ctrl-C (or any failure) while it loads: the server runs in its own session
        # and would outlive us, holding the GPU. Stop it.
        served.stop()
        raise


def _wait_ready(served: Served, launch: Launch, timeout: float, on_event: OnEvent,
                poll_s: float) -> Served:
    process, log_path = served.process, served.log_path
    started = time.monotonic()
    while True:
        code = process.poll()
        if code is not None:
            raise BackendError(
                f"vllm serve exited with code {code} before it was ready:\n{_tail(log_path)}",
                f"read the whole log at {log_path}",
            )
        try:
            if httpx.get(launch.health_url, timeout=5.0).status_code == 200:
                on_event(Event("serve", 1, 1, message="ready", data={"base_url": launch.base_url}))
                return served
        except httpx.HTTPError:
            pass
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            served.stop()
            raise BackendError(
                f"vllm serve did not become healthy within {timeout:.0f} s",
                f"read the log at {log_path}; large models take long to download and load",
            )
        on_event(Event("serve", 0, 1, message=f"loading {launch.preset.model} ({elapsed:.0f} s)"))
        time.sleep(poll_s)
