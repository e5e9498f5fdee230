"""The kopf layer registers what it should, and the fail-static step reads Prometheus right.

Handler-level tests against a fake API with fake loop time (kmock + looptime) are not here:
looptime's pytest plugin leaves an event loop unclosed behind synchronous tests, which this
repository's ``filterwarnings = error`` turns into failures of unrelated tests. The handlers
only delegate, so the behaviour is tested on ``reconcile`` with fakes instead.
"""

from __future__ import annotations

import json
import logging

import httpx
import kopf
import pytest

from hotshard.routing import RoutingTable, Shard
from hotshard_operator import handlers
from hotshard_operator.reconcile import MetricsUnavailableError
from hotshard_operator.resources import PartitionMapSpec
from hotshard_operator.signals import FailStaticStep

SPEC = PartitionMapSpec.model_validate(
    {"bidder": {"image": "x"}, "metrics": {"prometheusUrl": "http://127.0.0.1:9", "staleAfter": 5}}
)
TABLE = RoutingTable.even([Shard(name="fleet-base-0", url="http://127.0.0.1:9101")], partitions=4)


def test_handlers_register_create_resume_update_and_a_daemon() -> None:
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    reasons = sorted(str(h.reason) for h in changing if h.reason is not None)
    assert reasons == ["create", "update"]
    assert {h.fn for h in changing} == {handlers.ensure}
    assert any(h.id == "ensure" and h.reason is None for h in changing)  # resume
    daemons = registry._spawning.get_all_handlers()
    assert [(d.id, d.selector.group, d.selector.any_name) for d in daemons] == [
        ("detect", "hotshard.io", "partitionmaps")
    ]


def test_kopf_bookkeeping_lives_under_our_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "load_client_config", lambda: None)
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings=settings)
    assert settings.persistence.finalizer == "hotshard.io/finalizer"
    assert settings.persistence.progress_storage.prefix == "hotshard.io"
    assert settings.persistence.diffbase_storage.prefix == "hotshard.io"
    assert settings.posting.level == logging.WARNING


def prometheus(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler)


def answer(age: float | None) -> httpx.MockTransport:
    def reply(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        assert 'app_kubernetes_io_instance="fleet"' in request.url.params["query"]
        result = [] if age is None else [{"metric": {}, "value": [1.0, str(age)]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return httpx.Response(200, content=json.dumps(body))

    return httpx.MockTransport(reply)


async def test_fresh_metrics_hold_without_a_decision() -> None:
    async with prometheus(answer(1.5)) as http:
        result = await FailStaticStep(http, SPEC, "fleet").step(TABLE, "1")
    assert (result.action, result.table, result.event) == ("none", None, None)


async def test_stale_metrics_are_unavailable() -> None:
    async with prometheus(answer(12.0)) as http:
        with pytest.raises(MetricsUnavailableError, match=r"12\.0s old.*staleAfter \(5s\)"):
            await FailStaticStep(http, SPEC, "fleet").step(TABLE, "1")


async def test_no_series_and_no_server_are_unavailable() -> None:
    async with prometheus(answer(None)) as http:
        with pytest.raises(MetricsUnavailableError, match="no samples"):
            await FailStaticStep(http, SPEC, "fleet").step(TABLE, "1")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with prometheus(httpx.MockTransport(refuse)) as http:
        with pytest.raises(MetricsUnavailableError, match="unreachable"):
            await FailStaticStep(http, SPEC, "fleet").step(TABLE, "1")
