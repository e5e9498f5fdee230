"""Run ``hotshard router`` with the Service DNS names of shards resolved to local processes.

The routing table names each shard by the stable DNS name its headless Service gives the pod,
``<shard>.<map>-<tier>.<namespace>.svc``. Under kwok no pod runs and that name resolves nowhere
(and asking a real resolver would send a query off the machine), so the e2e tier runs each
shard's bidder as a process on 127.0.0.1 and starts the router through this script. It wraps
the event loop the router's shard pools (:class:`hotshard_bidder.shard_client.ShardPool`)
connect through: a connection to ``<shard>.<anything>`` goes to ``127.0.0.1:<port>``, the port
a JSON file gives that shard (``{"fleet-base-0": 41234, ...}``, rewritten by the test as
bidders come and go, read on every new connection), and any other name is refused without a
lookup. Everything else is the real router, unchanged.

Usage: ``python tests/e2e/svc_resolver.py PORTS_JSON <hotshard arguments...>``
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class LocalPorts:
    """Which local port stands in for a shard's Service DNS name."""

    def __init__(self, ports_file: Path) -> None:
        self.ports_file = ports_file

    def port_of(self, host: str) -> int:
        shard = host.split(".", 1)[0]
        try:
            ports: dict[str, int] = json.loads(self.ports_file.read_text())
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read {self.ports_file}: {exc}") from exc
        if shard not in ports:
            raise OSError(f"no local process stands in for {host}")
        return int(ports[shard])


class LoopbackLoop:
    """The running loop, except that ``create_connection`` goes to the shard's local port."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: LocalPorts) -> None:
        self._loop = loop
        self._ports = ports

    async def create_connection(self, factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        local = port if host == LOOPBACK else self._ports.port_of(host)
        return await self._loop.create_connection(factory, LOOPBACK, local, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def install(ports_file: Path) -> None:
    """Make every shard pool the router opens connect through :class:`LoopbackLoop`."""
    # NB: an ImportError here means the router's forwarding changed: better a failing test
    # than a router that quietly resolves Service names through DNS.
    from hotshard_bidder.shard_client import ShardPool

    ports = LocalPorts(ports_file)
    original = ShardPool.__init__

    def patched(self: ShardPool, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.loop = LoopbackLoop(self.loop, ports)  # type: ignore[assignment]

    ShardPool.__init__ = patched  # type: ignore[method-assign]


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    from hotshard.cli import main

    sys.exit(main(sys.argv[2:]))
