"""The data plane's own HTTP layer on real loopback sockets: server framing and the shard pools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from hotshard_bidder import http_server, shard_client
from hotshard_bidder.http_server import HttpServer, Request, Response
from hotshard_bidder.shard_client import ShardConnectionError, ShardPool, parse_http_url

LIMIT = 1024


async def echo(request: Request) -> Response:
    payload = {
        "path": request.path,
        "body": request.body.decode(),
        "tag": request.headers.get("X-Tag"),
    }
    return Response.json(200, payload)


async def slow_echo(request: Request) -> Response:
    await asyncio.sleep(float(request.body or b"0"))
    return await echo(request)


async def named(request: Request) -> Response:
    return Response.json(200, request.params)


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int]]:
    routes = {
        ("POST", "/echo"): echo,
        ("POST", "/slow"): slow_echo,
        ("GET", "/echo"): echo,
        ("PUT", "/items/{item}/config"): named,
    }
    refused: list[int] = []
    srv = HttpServer(routes, LIMIT, refused.append)
    port = await srv.start("127.0.0.1", 0)
    srv.refused = refused  # type: ignore[attr-defined]
    yield srv, port
    await srv.shutdown(1.0)


async def exchange(port: int, raw: bytes, answers: int = 1) -> list[bytes]:
    """Send ``raw`` on one connection and read ``answers`` responses (or until it closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = []
    try:
        for _ in range(answers):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            out.append(head + await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        pass
    writer.close()
    return out


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def body_of(answer: bytes) -> dict[str, object]:
    result = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert isinstance(result, dict)
    return result


async def test_pipelined_requests_are_answered_in_order(server: tuple[HttpServer, int]) -> None:
    _, port = server
    # the first is slow, so a server answering in completion order would swap them
    raw = post("/slow", b"0.05", "X-Tag: a") + post("/echo", b"quick", "X-Tag: b")
    first, second = await exchange(port, raw, answers=2)
    assert (body_of(first)["tag"], body_of(second)["tag"]) == ("a", "b")
    assert body_of(second)["body"] == "quick"


async def test_header_lookups_ignore_case_and_the_query_is_dropped(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    (answer,) = await exchange(port, post("/echo?x=1", b"{}", "x-TAG: mixed"))
    assert body_of(answer) == {"path": "/echo", "body": "{}", "tag": "mixed"}


async def test_a_chunked_body_is_reassembled(server: tuple[HttpServer, int]) -> None:
    _, port = server
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    (answer,) = await exchange(port, raw)
    assert body_of(answer)["body"] == "hello world"


async def test_a_declared_oversized_body_gets_413_and_the_connection_closes(
    server: tuple[HttpServer, int],
) -> None:
    srv, port = server
    raw = post("/echo", b"x" * (LIMIT + 1))
    answers = await exchange(port, raw + post("/echo", b"never"), answers=2)
    assert len(answers) == 1
    assert answers[0].startswith(b"HTTP/1.1 413 ")
    assert body_of(answers[0]) == {"error": f"body over the {LIMIT}-byte limit"}
    assert srv.refused == [413]  # type: ignore[attr-defined]


async def test_an_oversized_chunked_body_gets_413(server: tuple[HttpServer, int]) -> None:
    _, port = server
    chunk = b"x" * 800
    raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"320\r\n" + chunk + b"\r\n320\r\n" + chunk + b"\r\n0\r\n\r\n"  # 0x320 = 800
    (answer,) = await exchange(port, raw)
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_a_stalled_body_gets_408(
    server: tuple[HttpServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, port = server
    monkeypatch.setattr(http_server, "BODY_READ_TIMEOUT_S", 0.05)
    raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part"
    (answer,) = await exchange(port, raw)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert body_of(answer) == {"error": "request body not received within 50 ms"}
    assert srv.refused == [408]  # type: ignore[attr-defined]


async def test_expect_continue_gets_an_interim_100(server: tuple[HttpServer, int]) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    writer.write(head)
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", b"404"),
        (b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n", b"405"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET /items/a/config HTTP/1.1\r\nHost: t\r\n\r\n", b"405"),
        (b"PUT /items//config HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", b"404"),
        (b"PUT /items/a/b/config HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", b"404"),
        (b"PUT /items/a/other HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", b"404"),
    ],
)
async def test_unknown_routes_and_garbage_are_answered(
    server: tuple[HttpServer, int], raw: bytes, status: bytes
) -> None:
    _, port = server
    (answer,) = await exchange(port, raw)
    assert answer.split(b" ")[1] == status


async def test_a_named_segment_is_matched_and_percent_decoded(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    raw = b"PUT /items/camp%2F7%20b/config?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    (answer,) = await exchange(port, raw)
    assert answer.split(b" ")[1] == b"200"
    assert body_of(answer) == {"item": "camp/7 b"}


async def test_http_1_0_without_keep_alive_is_closed_after_the_answer(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    raw = b"GET /echo HTTP/1.0\r\n\r\n"
    answers = await exchange(port, raw + raw, answers=2)
    assert len(answers) == 1
    assert b"Connection: close\r\n" in answers[0]


async def test_idle_client_connections_are_swept(
    server: tuple[HttpServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, port = server
    monkeypatch.setattr(http_server, "IDLE_TIMEOUT_S", 0.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/echo", b"x"))
    await reader.readuntil(b"\r\n\r\n")
    srv._sweep()  # what the server runs every few seconds
    assert await reader.read() == b'{"path":"/echo","body":"x","tag":null}'  # then EOF
    writer.close()


# The pools, against the same server standing in for a shard.


async def test_the_pool_reuses_one_connection_for_sequential_requests(
    server: tuple[HttpServer, int],
) -> None:
    srv, port = server
    pool = ShardPool("s0", "127.0.0.1", port, limit=4, keepalive=30.0)
    for i in range(5):
        answer = await pool.post("/echo", {"X-Tag": str(i)}, b"hi")
        assert (answer.status, orjson.loads(answer.body)["tag"]) == (200, str(i))
        assert answer.headers["content-type"] == "application/json"
    assert (len(pool.open), len(srv.connections)) == (1, 1)
    pool.close()


async def test_the_pool_never_opens_more_than_its_limit(server: tuple[HttpServer, int]) -> None:
    srv, port = server
    pool = ShardPool("s0", "127.0.0.1", port, limit=2, keepalive=30.0)
    answers = await asyncio.gather(*(pool.post("/slow", {}, b"0.02") for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert len(srv.connections) == 2
    pool.close()


async def test_a_connection_the_shard_closed_while_idle_is_replaced(
    server: tuple[HttpServer, int],
) -> None:
    srv, port = server
    pool = ShardPool("s0", "127.0.0.1", port, limit=1, keepalive=30.0)
    await pool.post("/echo", {}, b"1")
    (idle,) = pool.idle
    for conn in list(srv.connections):
        conn.close_if_idle()  # the shard drops its idle keep-alive connections
    await asyncio.sleep(0.01)
    answer = await pool.post("/echo", {}, b"2")
    assert orjson.loads(answer.body)["body"] == "2"
    assert idle.closed
    assert len(pool.idle) == 1
    assert pool.idle[0] is not idle
    pool.close()


async def test_a_cancelled_request_drains_its_late_answer_before_the_connection_is_reused(
    server: tuple[HttpServer, int],
) -> None:
    srv, port = server
    pool = ShardPool("s0", "127.0.0.1", port, limit=1, keepalive=30.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await pool.post("/slow", {"X-Tag": "late"}, b"0.1")
    (draining,) = pool.open
    assert (draining.draining is not None, pool.idle) == (True, [])
    # the only connection is draining, so this waits for it, then reads its own answer
    answer = await pool.post("/echo", {"X-Tag": "mine"}, b"after")
    assert orjson.loads(answer.body)["tag"] == "mine"
    assert pool.open == {draining}
    assert draining.draining is None
    assert len(srv.connections) == 1  # no new connection was opened
    pool.close()


async def test_a_draining_connection_is_closed_if_its_answer_never_comes(
    server: tuple[HttpServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = server
    monkeypatch.setattr(shard_client, "DRAIN_TIMEOUT_S", 0.02)
    pool = ShardPool("s0", "127.0.0.1", port, limit=1, keepalive=30.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await pool.post("/slow", {}, b"5")
    (draining,) = pool.open
    answer = await pool.post("/echo", {}, b"after")  # gets the slot the closed one left
    assert orjson.loads(answer.body)["body"] == "after"
    assert draining.closed
    assert draining not in pool.open
    pool.close()


async def test_an_unreachable_shard_raises_a_connection_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = ShardPool("s9", "127.0.0.1", port, limit=1, keepalive=30.0)
    with pytest.raises(ShardConnectionError, match="cannot connect to s9"):
        await pool.post("/echo", {}, b"x")
    assert pool.open == set()


@pytest.mark.parametrize(
    ("url", "expected"),
    [("http://127.0.0.1:9101", ("127.0.0.1", 9101)), ("http://localhost/", ("localhost", 80))],
)
def test_shard_urls_parse(url: str, expected: tuple[str, int]) -> None:
    assert parse_http_url(url) == expected


def test_a_non_http_shard_url_is_refused() -> None:
    with pytest.raises(ValueError, match="is not http://host:port"):
        parse_http_url("https://127.0.0.1:9101")
