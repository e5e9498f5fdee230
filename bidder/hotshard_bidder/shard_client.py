"""Keep-alive connection pools from the router to its shards: asyncio protocols and httptools.

Forwarding is the other half of the router's per-request cost. aiohttp's ``ClientSession``
spent ~80 µs of CPU per forwarded request here and httpx ~1.6 ms (``docs/http-stack.md``);
the router needs far less than either offers: one method, one path, a handful of headers, a
body, to a few fixed shards over loopback. :class:`ShardPool` keeps up to ``limit`` open
connections to one shard, hands an idle one (most recently used first, the warmest) to each
request, opens a new one while under the limit, else queues the request until one is free.

Rules that keep it correct:

- A connection is reused only after a complete response that allows keep-alive; an error or
  ``Connection: close`` closes it. A request cancelled mid-way (its deadline passed) leaves its
  connection *draining*: out of the pool until the late answer has arrived and been thrown
  away, then back in it (or closed if that takes over a second). So a late answer is never read
  as another request's, and an overloaded moment -- many deadlines at once -- does not turn into
  a storm of new connections, each costing both processes far more than a request.
- A request that failed on a *reused* connection before a single byte of the answer arrived
  is sent once more on a new connection: the shard closed an idle connection just as we wrote
  to it, and it never saw the request.
- Idle connections older than ``keepalive`` seconds are closed instead of reused, well before
  the shard's own keep-alive timeout would close them under us.

Failures raise :class:`ShardConnectionError` (an ``OSError``), which the forwarder counts
against the shard's circuit breaker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools

DRAIN_TIMEOUT_S = 1.0
"""A cancelled request's answer is awaited this long before its connection is closed instead:
twice the longest deadline, so only a shard that is stuck loses the connection."""


class ShardConnectionError(OSError):
    """The shard could not be reached, or dropped the connection before a full answer."""


@dataclass(slots=True)
class ShardResponse:
    """A shard's answer; header names are lower-case."""

    status: int
    headers: dict[str, str]
    body: bytes


class _ShardConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: ShardPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.received = False
        self.draining: asyncio.TimerHandle | None = None
        """Set while the answer to a cancelled request is still to be read and thrown away."""
        self._waiter: asyncio.Future[ShardResponse] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # NB: uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._fail(ShardConnectionError(f"{self.pool.name} closed the connection: {exc or 'EOF'}"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ShardConnectionError(f"{self.pool.name} sent a malformed answer: {exc}"))
            self.close()

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self.draining is not None:
            self.draining.cancel()
            self.draining = None
            if self.parser.should_keep_alive():
                self.pool.release(self)  # the late answer is read: the stream is clean again
            else:
                self.close()
            return
        if waiter is None or waiter.done():
            self.close()  # an answer nobody asked for: the stream cannot be trusted
            return
        if not self.parser.should_keep_alive():
            self.close()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(ShardResponse(self._status, self._headers, body))

    def send(self, data: bytes) -> asyncio.Future[ShardResponse]:
        """Write a whole request; the future completes with its answer."""
        assert self.transport is not None, "send after connection_made"
        assert self._waiter is None, "one request at a time"
        self.received = False
        self._waiter = self.pool.loop.create_future()
        self.transport.write(data)
        return self._waiter

    def abandon(self) -> None:
        """The request was cancelled: drain its answer before the connection is reused."""
        if self._waiter is None:
            self.pool.release(self)  # the answer had arrived already: nothing to drain
            return
        self.draining = self.pool.loop.call_later(DRAIN_TIMEOUT_S, self.close)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if self.draining is not None:
            self.draining.cancel()
            self.draining = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class ShardPool:
    """Up to ``limit`` keep-alive connections to the shard at ``host:port``."""

    def __init__(self, name: str, host: str, port: int, limit: int, keepalive: float) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.limit = limit
        self.keepalive = keepalive
        # NB: pools are opened inside the running loop and keep it: asyncio.get_running_loop
        # costs a getpid system call, several per request on the hot path.
        self.loop = asyncio.get_running_loop()
        self.open: set[_ShardConnection] = set()
        self.idle: list[_ShardConnection] = []
        self.queue: deque[asyncio.Future[_ShardConnection | None]] = deque()
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    def forget(self, conn: _ShardConnection) -> None:
        """``conn`` is closed: it no longer counts against the limit; a queued request may
        open a new one."""
        if conn in self.open:
            self.open.discard(conn)
            self._wake(None)

    def _wake(self, conn: _ShardConnection | None) -> bool:
        while self.queue:
            waiter = self.queue.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def _connect(self) -> _ShardConnection:
        conn = _ShardConnection(self)
        self.open.add(conn)
        try:
            await self.loop.create_connection(lambda: conn, self.host, self.port)
        except OSError as exc:
            self.forget(conn)
            raise ShardConnectionError(f"cannot connect to {self.name}: {exc}") from exc
        except BaseException:
            self.forget(conn)
            raise
        return conn

    async def _acquire(self) -> tuple[_ShardConnection, bool]:
        """A connection and whether it was reused; waits while ``limit`` are busy."""
        now = self.loop.time()
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.closed:
                    continue
                if now - conn.idle_since > self.keepalive:
                    conn.close()
                    continue
                return conn, True
            if len(self.open) < self.limit:
                return await self._connect(), False
            waiter: asyncio.Future[_ShardConnection | None]
            waiter = self.loop.create_future()
            self.queue.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # NB: handed a connection (or a free slot) just as we were cancelled:
                    # pass it on, or it would stay out of the pool for good.
                    passed = waiter.result()
                    if passed is not None:
                        self.release(passed)
                    else:
                        self._wake(None)
                raise
            if handed is not None and not handed.closed:
                return handed, True

    def release(self, conn: _ShardConnection) -> None:
        """``conn`` is free: hand it to a queued request, else keep it idle."""
        if conn.closed:
            return
        if not self._wake(conn):
            conn.idle_since = self.loop.time()
            self.idle.append(conn)

    def encode(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        head = [f"POST {path} HTTP/1.1\r\n".encode(), self._host_header]
        head.extend(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head.append(body)
        return b"".join(head)

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> ShardResponse:
        """POST ``body`` to ``path``; the shard's answer, or :class:`ShardConnectionError`."""
        data = self.encode(path, headers, body)
        for attempt in range(2):
            conn, reused = await self._acquire()
            try:
                answer = await conn.send(data)
            except ShardConnectionError:
                conn.close()
                if reused and not conn.received and attempt == 0:
                    continue  # NB: the shard closed this idle connection; it never saw us
                raise
            except BaseException:
                conn.abandon()  # cancelled mid-request: drain its late answer before reuse
                raise
            self.release(conn)
            return answer
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        for conn in list(self.open):
            conn.close()
        self.idle.clear()


class ShardClients:
    """One :class:`ShardPool` per shard URL, opened on first use (inside the running loop)."""

    def __init__(self, limit: int, keepalive: float) -> None:
        self.limit = limit
        self.keepalive = keepalive
        self.pools: dict[str, ShardPool] = {}

    def pool(self, name: str, url: str) -> ShardPool:
        pool = self.pools.get(url)
        if pool is None:
            host, port = parse_http_url(url)
            pool = self.pools[url] = ShardPool(name, host, port, self.limit, self.keepalive)
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def parse_http_url(url: str) -> tuple[str, int]:
    """``http://host:port`` (an optional trailing ``/``) into host and port."""
    parsed = httptools.parse_url(url.encode())
    if parsed.schema != b"http" or not parsed.host:
        raise ValueError(f"shard URL {url!r} is not http://host:port")
    return parsed.host.decode(), parsed.port or 80
