"""The data plane's HTTP/1.1 server: asyncio protocols on uvloop with httptools, no framework.

The router and the bidder shards do little per request (a JSON parse, a hash, a forward or a
bid), so the HTTP layer is a large share of their cost, and every microsecond is paid by every
bid. aiohttp's server spent about as much CPU per request as the router's own logic; a protocol
that parses with httptools (llhttp) and writes one ``bytes`` per response spends a fraction of it
(``docs/http-stack.md`` has the measurements). This module owns that layer: it parses requests,
enforces the body limit (413) and the body's arrival time (408), answers ``Expect:
100-continue``, keeps connections alive, answers pipelined requests in order, and on shutdown
stops accepting, lets the handlers in flight finish and closes the rest.

It knows nothing of bidding: a handler takes a :class:`Request` and returns a :class:`Response`.
Routes are exact paths, or paths with ``{name}`` segments whose values the handler reads from
``Request.params``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger(__name__)

BODY_READ_TIMEOUT_S = 0.5
"""A body not received within 500 ms, the longest deadline a request may have, could not be
answered in time anyway: answer 408 and close, so slow senders cannot hold a connection."""
MAX_PIPELINED = 16
"""Stop reading a connection that has 16 requests waiting for their answers: it is sending
faster than we answer, and reading on would only queue without bound."""
IDLE_TIMEOUT_S = 75.0
"""A client connection with nothing in flight for 75 s is closed (aiohttp's default too): long
enough for any client's keep-alive pool, short enough that abandoned connections do not pile
up."""
SWEEP_INTERVAL_S = 5.0
"""How often idle connections are looked for: closing one a few seconds late costs nothing."""
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})


class Headers(Mapping[str, str]):
    """A request's headers, looked up without regard to case (names are kept lower-case)."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self._items = items if items is not None else {}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Request:
    """One complete request: method, path (without the query), headers and body."""

    method: str
    path: str
    headers: Headers
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    """The values of the route's ``{name}`` segments."""


@dataclass(slots=True)
class Response:
    """What a handler answers; ``Content-Length`` and ``Connection`` are added when written."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: object) -> Response:
        return cls(status, orjson.dumps(payload), {"Content-Type": "application/json"})


Handler = Callable[[Request], Awaitable[Response]]


def encode_response(response: Response, keep_alive: bool) -> bytes:
    """The response as it goes on the wire, head and body in one buffer."""
    status = response.status
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in response.headers.items():
        head.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if status not in _NO_BODY:
        head.append(b"Content-Length: %d\r\n" % len(response.body))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    if status not in _NO_BODY:
        head.append(response.body)
    return b"".join(head)


class _Connection(asyncio.Protocol):
    """One client connection: parses its requests and writes their answers in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[Request | Response, bool]] = deque()
        """Requests waiting for their turn, in order; a :class:`Response` in the queue is a
        refusal of the HTTP layer, written after the answers owed before it, then we close."""
        self.busy = False
        self.closing = False
        self.refusing = False
        self.paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._timer: asyncio.TimerHandle | None = None
        self.last_active = self.loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # NB: uvloop's is not a subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.refusing:
            return
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.answer_and_close(Response.json(400, {"error": "protocol upgrades are not served"}))
        except httptools.HttpParserError as exc:
            self.answer_and_close(Response.json(400, {"error": f"malformed HTTP request: {exc}"}))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        limit = self.server.max_body_bytes
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # NB: answer now and close instead of reading (and dropping) a body we refuse.
            self.answer_and_close(_too_large(limit))
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._timer = self.loop.call_later(BODY_READ_TIMEOUT_S, self._body_overdue)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.server.max_body_bytes:
            self._too_large = True
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if self.closing or self.refusing:
            return
        if self._too_large:
            self.answer_and_close(_too_large(self.server.max_body_bytes))
            return
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        method = self.parser.get_method().decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(method, path, Headers(self._headers), body)
        self.pending.append((request, self.parser.should_keep_alive()))
        if len(self.pending) >= MAX_PIPELINED and self.transport and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # answering

    def _next(self) -> None:
        """Start the handler of the oldest waiting request, if any."""
        if not self.pending or self.closing or self.transport is None:
            self.busy = False
            return
        item, keep_alive = self.pending.popleft()
        if isinstance(item, Response):
            self._write(item, keep_alive=False)
            return
        if self.paused and len(self.pending) < MAX_PIPELINED // 2:
            self.paused = False
            self.transport.resume_reading()
        self.busy = True
        task = self.loop.create_task(self.server.dispatch(item))
        self.server.inflight.add(task)
        task.add_done_callback(lambda done: self._finish(done, keep_alive))

    def _finish(self, task: asyncio.Future[Response], keep_alive: bool) -> None:
        self.server.inflight.discard(task)
        self.busy = False
        if task.cancelled():
            response = Response.json(503, {"error": f"{self.server.name} shutting down"})
            keep_alive = False
        else:
            response = task.result()  # dispatch never raises
        if self._write(response, keep_alive and not self.server.stopping):
            self._next()

    def _write(self, response: Response, keep_alive: bool) -> bool:
        """Write ``response``; close unless ``keep_alive``. Whether the connection is still open."""
        if self.transport is None or self.closing:
            return False
        self.transport.write(encode_response(response, keep_alive))
        if not keep_alive:
            self.closing = True
            self.transport.close()
        return keep_alive

    def answer_and_close(self, response: Response) -> None:
        """Refuse a request the HTTP layer cannot pass on (400, 408, 413) and stop reading:
        after the answers owed to earlier requests, write this one and close."""
        self._cancel_timer()
        if self.closing or self.refusing or self.transport is None:
            return
        self.refusing = True
        if self.server.on_refused is not None:
            self.server.on_refused(response.status)
        self.transport.pause_reading()
        self.pending.append((response, False))
        if not self.busy:
            self._next()

    def _body_overdue(self) -> None:
        self._timer = None
        reason = f"request body not received within {BODY_READ_TIMEOUT_S * 1000:.0f} ms"
        self.answer_and_close(Response.json(408, {"error": reason}))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_if_idle(self, since: float | None = None) -> None:
        """Close the connection if nothing is in flight on it (and, with ``since``, it has had
        no request since then)."""
        if since is not None and self.last_active > since:
            return
        if not self.busy and not self.pending and self.transport is not None:
            self.closing = True
            self.transport.close()


def _too_large(limit: int) -> Response:
    return Response.json(413, {"error": f"body over the {limit}-byte limit"})


class HttpServer:
    """Serves ``routes`` (``(method, path) -> handler``) on one listening socket.

    A path may hold ``{name}`` segments (``/campaigns/{campaign}/config``): each matches one
    non-empty segment, percent-decoded into ``Request.params``. Build the server inside the
    running event loop, which it keeps.
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        max_body_bytes: int,
        on_refused: Callable[[int], None] | None = None,
        name: str = "server",
    ) -> None:
        self.name = name
        self.routes = {key: handler for key, handler in routes.items() if "{" not in key[1]}
        self.patterns = [
            (method, tuple(path.split("/")), handler)
            for (method, path), handler in routes.items()
            if "{" in path
        ]
        self.max_body_bytes = max_body_bytes
        self.on_refused = on_refused
        """Told the status of each request the HTTP layer answered itself (408, 413, 400)."""
        self.connections: set[_Connection] = set()
        self.inflight: set[asyncio.Future[Response]] = set()
        self.stopping = False
        # NB: built inside the running loop and kept, so the hot path never asks for it:
        # ``asyncio.get_running_loop`` costs a ``getpid`` system call each time.
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def dispatch(self, request: Request) -> Response:
        """The handler's answer; 404/405 for unknown routes; 500 if a handler raised."""
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            handler, known_path = self._match(request)
            if handler is None:
                if known_path or any(path == request.path for _, path in self.routes):
                    return Response.json(405, {"error": f"{request.method} not allowed here"})
                return Response.json(404, {"error": f"no such path {request.path}"})
        try:
            return await handler(request)
        except Exception as exc:  # NB: a bug of ours must still answer, never drop the request
            log.exception("handler of %s %s failed", request.method, request.path)
            return Response.json(500, {"error": f"{self.name} failure: {exc!r}"})

    def _match(self, request: Request) -> tuple[Handler | None, bool]:
        """The handler of a ``{name}`` route matching the request (its values put in
        ``request.params``), and whether the path matched a route of another method."""
        segments = request.path.split("/")
        known_path = False
        for method, pattern, handler in self.patterns:
            if len(pattern) != len(segments):
                continue
            params = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{") and want.endswith("}"):
                    if not got:
                        break
                    # NB: bytes that are not UTF-8 become lone surrogates, which a handler
                    # can refuse, rather than U+FFFD, which would merge different names.
                    params[want[1:-1]] = unquote(got, errors="surrogateescape")
                elif want != got:
                    break
            else:
                if method == request.method:
                    request.params = params
                    return handler, True
                known_path = True
        return None, known_path

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); return the bound port."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_address=True
        )
        self._sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close connections idle for over ``IDLE_TIMEOUT_S``; runs every ``SWEEP_INTERVAL_S``."""
        if self.stopping:
            return
        since = self.loop.time() - IDLE_TIMEOUT_S
        for connection in list(self.connections):
            connection.close_if_idle(since)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let handlers in flight answer (up to ``grace`` s), close the rest."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.inflight:
            await asyncio.wait(list(self.inflight), timeout=grace)
        for task in list(self.inflight):
            task.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
