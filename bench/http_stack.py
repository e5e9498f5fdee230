"""One-off measurement behind docs/http-stack.md: which HTTP server, client and JSON library.

The bidder and the router spend most of their time in the HTTP layer and in JSON, so the stack
was picked by measuring candidates side by side in one run on loopback, not by reputation:

* JSON: parse + dump of every corpus request with ``json``, ``orjson`` and ``msgspec``.
* Server: a handler that parses a real OpenRTB body and answers a small JSON bid, on aiohttp,
  uvicorn (uvloop + httptools, raw ASGI), granian (ASGI) and the router's own httptools protocol
  (``hotshard_bidder.http_server``): peak rate under ``wrk`` (closed loop) for a few seconds,
  then p50/p99 at a fixed 2,000 rps from ``hotshard loadgen`` (open loop).
* Client: forwarding the corpus to an aiohttp server with aiohttp's client, httpx, httpcore and
  the router's own pool (``hotshard_bidder.shard_client``), measuring the client's CPU per
  request (the router's cost of forwarding).

The candidates are not hotshard dependencies; run it from a separate virtualenv that has them:
``python -m venv /tmp/stackvenv && /tmp/stackvenv/bin/pip install aiohttp uvloop orjson msgspec
httpx uvicorn httptools granian`` then ``PYTHONPATH=$PWD/src:$PWD/bidder
/tmp/stackvenv/bin/python -m bench.http_stack`` (needs ``wrk`` from Debian; the paths must be
absolute: servers run from a scratch directory). Results go to ``bench/results/http_stack.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WRK_SECONDS = 4  # long enough for a stable rate, short enough for a shared 2-core box
WRK_CONNECTIONS = 32  # about the router's per-shard pool (64) shared by two shards
OPEN_LOOP_RPS = 2000  # the router's goal rate
OPEN_LOOP_SECONDS = 5
CLIENT_REQUESTS = 4000  # a second of router traffic at the 4k rps target
CLIENT_CONCURRENCY = 16
JSON_ROUNDS = 200  # x 58 bodies: ~12k parse+dump pairs per library, well under a second each

SERVER_APPS = {
    "aiohttp": """
import sys, orjson, uvloop
from aiohttp import web
async def bid(request):
    body = orjson.loads(await request.read())
    return web.Response(body=orjson.dumps({"id": body["id"], "seatbid": []}),
                        content_type="application/json")
app = web.Application(); app.router.add_post("/bid", bid)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            loop=uvloop.new_event_loop())
""",
    "uvicorn": """
import sys, orjson, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive(); chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = orjson.loads(b"".join(chunks))
    out = orjson.dumps({"id": body["id"], "seatbid": []})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
""",
    "granian": """
import sys, orjson
from granian import Granian
from granian.constants import Interfaces
Granian("granian_app:app", address="127.0.0.1", port=int(sys.argv[1]), interface=Interfaces.ASGI,
        workers=1, runtime_threads=1, log_enabled=False).serve()
""",
}
SERVER_APPS["router-protocol"] = """
import asyncio, sys, orjson, uvloop
from hotshard_bidder.http_server import Response, HttpServer
async def bid(request):
    body = orjson.loads(request.body)
    return Response.json(200, {"id": body["id"], "seatbid": []})
async def main():
    server = HttpServer({("POST", "/bid"): bid}, 65536)
    await server.start("127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
uvloop.run(main())
"""
CLIENTS = ("aiohttp", "httpx", "httpcore", "shard-pool")
GRANIAN_APP = (
    SERVER_APPS["uvicorn"]
    .split("uvicorn.run(")[0]
    .replace("import sys, orjson, uvicorn", "import orjson")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children (granian serves from a child)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def corpus_bodies() -> list[bytes]:
    sys.path.insert(0, str(ROOT / "src"))
    from hotshard.datasets import openrtb_requests

    return [s.raw for s in openrtb_requests()]


def measure_json(bodies: list[bytes]) -> list[dict[str, Any]]:
    import msgspec
    import orjson

    decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
    candidates = {
        "json": (json.loads, lambda o: json.dumps(o).encode()),
        "orjson": (orjson.loads, orjson.dumps),
        "msgspec": (decoder.decode, encoder.encode),
    }
    rows = []
    for name, (load, dump) in candidates.items():
        start = time.process_time()
        for _ in range(JSON_ROUNDS):
            for raw in bodies:
                dump(load(raw))
        spent = time.process_time() - start
        rows.append(
            {
                "library": name,
                "us_per_parse_dump": round(spent / (JSON_ROUNDS * len(bodies)) * 1e6, 2),
            }
        )
    return rows


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    return {"rps": round(rate), "p50_ms": ms(pct["50"]), "p99_ms": ms(pct["99"])}


def open_loop(url: str, out: Path) -> dict[str, float]:
    """p50/p99 at a fixed open-loop rate, with hotshard's own load generator (main venv)."""
    hotshard = ROOT / ".venv" / "bin" / "hotshard"
    command = [str(hotshard), "loadgen", "--target", url, "--profile", f"constant:{OPEN_LOOP_RPS}"]
    command += ["--duration", str(OPEN_LOOP_SECONDS), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=OPEN_LOOP_SECONDS + 60)
    report = json.loads(out.read_text())
    return {
        f"open_loop_{OPEN_LOOP_RPS}_p50_ms": report["latency_ms"]["p50"],
        f"open_loop_{OPEN_LOOP_RPS}_p99_ms": report["latency_ms"]["p99"],
        f"open_loop_{OPEN_LOOP_RPS}_errors": report["errors"],
    }


def measure_servers(body: bytes, workdir: Path) -> list[dict[str, Any]]:
    (workdir / "body.json").write_bytes(body)
    lua = workdir / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{workdir / "body.json"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    (workdir / "granian_app.py").write_text(GRANIAN_APP)
    rows = []
    for name, source in SERVER_APPS.items():
        script = workdir / f"serve_{name}.py"
        script.write_text(source)
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=workdir)
        try:
            wait_for_port(port)
            time.sleep(0.5)
            url = f"http://127.0.0.1:{port}/bid"
            cpu_before = tree_cpu_seconds(proc.pid)
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{WRK_CONNECTIONS}",
                    f"-d{WRK_SECONDS}s",
                    "--latency",
                    "-s",
                    str(lua),
                    url,
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=WRK_SECONDS + 30,
            ).stdout
            wrk = parse_wrk(out)
            # NB: CPU per request barely moves when other jobs compete for the cores; the rate does.
            served = wrk["rps"] * WRK_SECONDS
            cpu_us = round((tree_cpu_seconds(proc.pid) - cpu_before) / served * 1e6, 1)
            rows.append(
                {
                    "server": name,
                    **wrk,
                    "cpu_us_per_request": cpu_us,
                    **open_loop(url, workdir / f"{name}.json"),
                }
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return rows


async def drive_client(name: str, url: str, bodies: list[bytes]) -> dict[str, Any]:
    import aiohttp
    import httpcore
    import httpx

    queue = [bodies[i % len(bodies)] for i in range(CLIENT_REQUESTS)]
    headers = {"Content-Type": "application/json"}

    async def run(post: Any) -> None:
        async def lane(lane_index: int) -> None:
            for body in queue[lane_index::CLIENT_CONCURRENCY]:
                await post(body)

        await asyncio.gather(*(lane(i) for i in range(CLIENT_CONCURRENCY)))

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    if name == "aiohttp":
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CLIENT_CONCURRENCY)
        ) as s:

            async def post(body: bytes) -> None:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()

            await run(post)
    elif name == "httpx":
        limits = httpx.Limits(max_connections=CLIENT_CONCURRENCY)
        async with httpx.AsyncClient(limits=limits) as c:

            async def post(body: bytes) -> None:
                (await c.post(url, content=body, headers=headers)).raise_for_status()

            await run(post)
    elif name == "httpcore":
        async with httpcore.AsyncConnectionPool(max_connections=CLIENT_CONCURRENCY) as pool:

            async def post(body: bytes) -> None:
                r = await pool.request("POST", url, headers=headers, content=body)
                assert r.status == 200

            await run(post)
    else:
        from hotshard_bidder.shard_client import ShardPool, parse_http_url

        host, port = parse_http_url(url.rsplit("/", 1)[0])
        shard_pool = ShardPool("target", host, port, CLIENT_CONCURRENCY, 30.0)

        async def post(body: bytes) -> None:
            r = await shard_pool.post("/bid", headers, body)
            assert r.status == 200

        await run(post)
        shard_pool.close()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    return {
        "client": name,
        "cpu_us_per_request": round(cpu / CLIENT_REQUESTS * 1e6),
        "rps": round(CLIENT_REQUESTS / wall),
    }


def measure_clients(bodies: list[bytes], workdir: Path) -> list[dict[str, Any]]:
    import uvloop

    script = workdir / "serve_client_target.py"
    script.write_text(SERVER_APPS["aiohttp"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=workdir)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/bid"
        return [uvloop.run(drive_client(name, url, bodies)) for name in CLIENTS]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    bodies = corpus_bodies()
    # A Prebid Server request of typical size (~1.5 KB) for the server runs.
    body = sorted(bodies, key=len)[len(bodies) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
            "server_body_bytes": len(body),
            "json": measure_json(bodies),
            "servers": measure_servers(body, Path(tmp)),
            "clients": measure_clients(bodies, Path(tmp)),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_stack.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
