"""HAProxy as the benchmark's reference proxy: a generated config and a foreground process.

The data-plane benchmark compares the router with a well-known proxy doing the nearest
equivalent job: consistent hashing on the campaign header in front of the same shards. This
module owns running it: render ``haproxy.cfg.tmpl``, check it with ``haproxy -c``, start
``/usr/sbin/haproxy`` in the foreground (``-db``, never daemon mode) in its own process group,
wait for its port, and stop it with the group when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from hotshard.local.processes import free_port, log_tail

TEMPLATE = Path(__file__).with_name("haproxy.cfg.tmpl")
SERVER_MAXCONN = 64
"""Connections HAProxy opens per shard: the router's keep-alive pool per shard is also 64."""
START_TIMEOUT_S = 10.0


def find_haproxy() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if path is None:
        raise RuntimeError(
            "haproxy is not installed; run scripts/install-system-deps.sh (make system-deps)"
        )
    return path


def render_config(
    port: int,
    shard_ports: Sequence[int],
    *,
    balance_factor: int | None = None,
    timeout_server: str = "1s",
) -> str:
    """The configuration text; ``balance_factor`` (a percentage, e.g. 125) turns on HAProxy's
    bounded-load consistent hashing (``hash-balance-factor``)."""
    servers = "\n".join(
        f"    server shard-{i} 127.0.0.1:{p} maxconn {SERVER_MAXCONN}"
        for i, p in enumerate(shard_ports)
    )
    options = ""
    if balance_factor is not None:
        # A server past factor% of the mean in-flight load is skipped for the next on the ring.
        options = f"    hash-balance-factor {balance_factor}\n"
    return string.Template(TEMPLATE.read_text()).substitute(
        port=port, servers=servers, balance_options=options, timeout_server=timeout_server
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    give_up = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {proc.returncode}:\n{log_tail(log)}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"haproxy did not listen on 127.0.0.1:{port}:\n{log_tail(log)}")


@contextlib.contextmanager
def start_haproxy(
    workdir: Path,
    shard_ports: Sequence[int],
    *,
    balance_factor: int | None = None,
    timeout_server: str = "1s",
) -> Iterator[tuple[int, int]]:
    """Run HAProxy in front of ``shard_ports``; yields the port it listens on and its pid.

    The keywords are :func:`render_config`'s; the defaults are the data-plane benchmark's."""
    binary = find_haproxy()
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(
        render_config(
            port, shard_ports, balance_factor=balance_factor, timeout_server=timeout_server
        )
    )
    subprocess.run([binary, "-c", "-q", "-f", str(config)], check=True, capture_output=True)
    log = workdir / "haproxy.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, log)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
