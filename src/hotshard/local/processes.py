"""Starting and stopping hotshard services as real processes, with no orphans left behind.

Integration tests, local mode and the benchmarks all run bidders and routers as subprocesses
on 127.0.0.1. Each one starts in its own process group (so stopping it also stops anything it
spawned), writes its output to a log file, and counts as started only when its ``/readyz``
answers. If it dies or stays unready, the error carries the tail of its log, which is almost
always what explains why. :class:`ServiceProcess` is a context manager, so an
:class:`contextlib.ExitStack` stops a whole fleet in reverse order even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
READY_POLL_S = 0.05
READY_TIMEOUT_S = 45.0
"""How long a service may take to answer ``/readyz``. A bidder is ready in 1-2 s on a quiet
machine, but starts under a half-core quota: on a fresh clone of a saturated 2-core box (CI
with other jobs beside it) one took over 15 s to import. A service that dies is reported at
once, whatever this says."""
"""Between /readyz probes: a service starts in ~0.5 s, so this costs at most one poll of wait."""
STOP_GRACE_S = 5.0
"""Time a service gets after SIGTERM to finish requests in flight before SIGKILL."""
LOG_TAIL_LINES = 30


class ServiceError(RuntimeError):
    """A service did not start or did not stop; the message includes the tail of its log."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path
        """The log the message names, so a caller can keep it before its folder goes."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ServiceProcess:
    """One ``hotshard <command>`` subprocess listening on ``127.0.0.1:port``.

    Example:
        >>> with ServiceProcess("bidder-0", ["bidder", "--shard", "bidder-0", ...], port=p,
        ...                     log_path=tmp / "bidder-0.log") as shard:  # doctest: +SKIP
        ...     urllib.request.urlopen(shard.url + "/healthz")
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    ready_path = "/readyz"
    """The path that answers 200 once the service is ready."""

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "hotshard.cli", *self.args]

    def start(self, on_spawn: Callable[[int], None] | None = None) -> ServiceProcess:
        """Start the process and wait until its ``/readyz`` answers 200.

        ``on_spawn`` gets the new process id before the wait (to put it under a CPU quota while
        it starts, say); if it raises, the process is stopped.
        """
        if self.proc is not None:
            raise ServiceError(f"{self.name} is already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, so stop() reaches children
            )
        try:
            if on_spawn is not None:
                on_spawn(self.proc.pid)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll ``ready_path`` until 200; raise :class:`ServiceError` if it dies or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServiceError(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}",
                    log_path=self.log_path,
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + self.ready_path, timeout=1.0) as resp,
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} was not ready on {self.url} within {self.ready_timeout:.0f}s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}",
                    log_path=self.log_path,
                )
            time.sleep(READY_POLL_S)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``grace``; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        # Anything the service spawned and left behind goes too.
        self._signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def __enter__(self) -> ServiceProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_service(
    stack: contextlib.ExitStack | contextlib.AsyncExitStack,
    name: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> ServiceProcess:
    """Start ``hotshard <args> --port <port>`` and register its stop with ``stack``."""
    port = port if port is not None else free_port()
    service = ServiceProcess(
        name,
        [*args, "--port", str(port)],
        port=port,
        log_path=log_dir / f"{name}.log",
        env=env,
        ready_timeout=ready_timeout,
    )
    return stack.enter_context(service)
