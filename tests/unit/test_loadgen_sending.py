"""The load generator against tiny in-process servers: what it sends and how it counts answers.

The servers run on 127.0.0.1 in the test's own event loop; a load of a few dozen requests over
a fraction of a second keeps every test short and bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hotshard_bidder.loadgen import LoadSpec, run_load

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


RELEASE = web.AppKey("release", asyncio.Event)


async def hang(request: web.Request) -> web.Response:
    """A server that never answers while the test runs (the client gives up first)."""
    await request.app[RELEASE].wait()
    return web.Response(status=204)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TestServer] = []
    release = asyncio.Event()

    async def start(handler: Handler) -> str:
        app = web.Application()
        app[RELEASE] = release
        app.router.add_post("/bid", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/bid"))

    yield start
    release.set()  # let hanging handlers end before their server and event loop close
    await asyncio.sleep(0.01)
    for server in servers:
        await server.close()


def spec(url: str, **fields: object) -> LoadSpec:
    base: dict[str, object] = dict(target=url, profile="constant:100", duration=0.3, seed=3)
    return LoadSpec.model_validate({**base, **fields})


async def test_every_request_is_sent_keyed_and_answered(serve: Serve) -> None:
    seen: list[tuple[str, str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.append((request.headers["X-Hotshard-Campaign"], body["id"], body["user"]["id"]))
        return web.Response(status=204, headers={"X-Hotshard-Shard": "shard-a"})

    url = await serve(answer)
    report = await run_load(spec(url, campaigns=5, hot=1, run_id="t1"))
    assert report.planned == 30
    assert (report.sent, report.answered, report.lost, report.not_sent) == (30, {204: 30}, 0, 0)
    assert report.shards == {"shard-a": 30}
    assert report.latency_ms.count == 30
    assert sorted(i for _, i, _ in seen) == sorted(f"t1-{n}" for n in range(30))
    assert {key for key, _, _ in seen} <= {f"campaign-{r}" for r in range(1, 6)}
    assert len({user for _, _, user in seen}) > 20  # fresh users spread split routing
    hot = sum(1 for key, _, _ in seen if key == "campaign-1")
    assert report.groups["hot"].sent == hot
    assert report.groups["other"].sent == 30 - hot
    assert sum(second.sent for second in report.timeline) == 30


async def test_a_server_that_never_answers_loses_requests_not_hides_them(serve: Serve) -> None:
    url = await serve(hang)
    report = await run_load(spec(url, deadline_ms=20, max_deadline_ms=20, grace_ms=20))
    assert report.sent == 30
    assert report.lost == report.lost_timeout == 30
    assert report.answered_total == 0
    assert report.errors == 30
    assert report.latency_ms.count == 0


async def test_a_dropped_connection_counts_as_lost(serve: Serve) -> None:
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.01)
        return web.Response(status=204)

    url = await serve(drop)
    report = await run_load(spec(url))
    assert report.sent == 30
    assert report.lost_connection == 30
    assert report.lost_timeout == 0


async def test_requests_beyond_the_outstanding_cap_are_counted_not_sent(serve: Serve) -> None:
    url = await serve(hang)
    report = await run_load(spec(url, max_outstanding=4, deadline_ms=1000, grace_ms=0))
    assert report.planned == 30
    assert (report.sent, report.not_sent, report.lost) == (4, 26, 4)
    assert report.errors == 30


def test_targets_off_loopback_are_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadSpec(target="http://10.0.0.1:8080/bid")


def test_cli_refuses_a_profile_past_the_cap_before_sending(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from hotshard_bidder.loadgen import configure, main

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--target", "http://127.0.0.1:1/x", "--profile", "constant:1e9", "--duration", "1"]
    )
    assert main(args) == 2
    assert "cap of 2,000,000" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--profile", "trace:/nonexistent/rates.csv"], "cannot read trace file"),
        (["--out", "/etc/passwd/x"], "cannot use /etc/passwd as a directory"),
        (["--out", "/"], "is a directory"),
    ],
)
def test_cli_refuses_an_unreadable_trace_or_unwritable_out_before_sending(
    extra: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from hotshard_bidder.loadgen import configure, main

    parser = argparse.ArgumentParser()
    configure(parser)
    # Port 1 answers nothing: a run that started would take the whole duration and exit 1.
    args = parser.parse_args(["--target", "http://127.0.0.1:1/x", "--duration", "30", *extra])
    assert main(args) == 2
    out = capsys.readouterr().out
    assert says in out
    assert out.count("\n") == 1
