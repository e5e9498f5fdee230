"""``hotshard bidder`` and ``hotshard router`` refuse bad settings and unusable addresses in one
line per mistake, naming the flag, and exit 2 (settings) or 1 (cannot listen): no traceback."""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from hotshard.routing import RoutingTable, Shard
from hotshard.routing.store import FileRoutingStore
from hotshard_bidder import bidder, router
from hotshard_bidder.http_server import HttpServer
from hotshard_bidder.settings import BidderSettings, RouterSettings, describe_errors

Main = Callable[[argparse.Namespace], int]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "routing.json"
    shard = Shard(name="s0", tier="base", url="http://127.0.0.1:9")
    FileRoutingStore(path).initialize(RoutingTable.even([shard], partitions=64))
    return path


@pytest.fixture(autouse=True)
def _quiet_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``main`` from changing process-wide state other tests see: the loop policy and
    prometheus_client's ``_created`` switch."""
    for module in (bidder, router):
        monkeypatch.setattr(module, "install_uvloop", lambda: None)
        monkeypatch.setattr(module, "disable_created_metrics", lambda: None)


def run(service: str, table: Path, *flags: str) -> int:
    module = bidder if service == "bidder" else router
    parser = argparse.ArgumentParser()
    module.configure(parser)
    shard = ["--shard", "s0"] if service == "bidder" else []
    args = parser.parse_args([*shard, "--routing-file", str(table), *flags])
    return module.main(args)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("service", ["bidder", "router"])
def test_a_pointer_without_a_slash_is_a_bad_setting_not_a_traceback(
    service: str, table: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run(service, table, "--campaign-pointer", "notapointer") == 2
    env = f"HOTSHARD_{service.upper()}_CAMPAIGN_POINTERS"
    assert errors(caplog) == [
        f"invalid {service} settings: --campaign-pointer: JSON pointer 'notapointer' must "
        f"start with '/' (flag or {env} env)"
    ]


@pytest.mark.parametrize("service", ["bidder", "router"])
def test_a_bad_value_names_the_flag_the_value_and_the_variable_without_pydantic_links(
    service: str, table: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run(service, table, "--poll-interval", "0") == 2
    env = f"HOTSHARD_{service.upper()}_POLL_INTERVAL"
    assert errors(caplog) == [
        f"invalid {service} settings: --poll-interval: Input should be greater than 0 (got 0) "
        f"(flag or {env} env)"
    ]


def test_a_default_deadline_past_the_max_is_refused_naming_both_flags(
    table: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run("router", table, "--default-deadline-ms", "1000", "--max-deadline-ms", "10") == 2
    assert errors(caplog) == [
        "invalid router settings: --default-deadline-ms (1000) must not exceed "
        "--max-deadline-ms (10) (flags or HOTSHARD_ROUTER_* env)"
    ]


def test_the_router_names_every_bad_flag_in_one_run(
    table: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # --hot-k is a RouterSettings field, --shard-shed-share one of the per-shard allowance's.
    assert run("router", table, "--hot-k", "0", "--shard-shed-share", "2") == 2
    assert errors(caplog) == [
        "invalid router settings: --hot-k: Input should be greater than or equal to 1 (got 0) "
        "(flag or HOTSHARD_ROUTER_HOT_K env)",
        "invalid router settings: --shard-shed-share: Input should be less than or equal to 1 "
        "(got 2) (flag or HOTSHARD_ROUTER_SHARD_SHED_SHARE env)",
    ]


def test_an_aliased_setting_names_its_own_variable_and_a_missing_one_shows_no_input() -> None:
    with pytest.raises(ValidationError) as caught:
        BidderSettings(routing_configmap=["not", "a", "name"])  # type: ignore[arg-type]
    assert describe_errors(BidderSettings, caught.value) == [
        "--routing-configmap: Input should be a valid string (got ['not', 'a', 'name']) "
        "(flag or HOTSHARD_ROUTING_CONFIGMAP env)",
        "--shard: Field required (flag or HOTSHARD_BIDDER_SHARD env)",
    ]


def test_settings_accept_the_default_pointers_and_an_equal_default_and_max(table: Path) -> None:
    settings = RouterSettings(routing_file=table, default_deadline_ms=200, max_deadline_ms=200)
    assert settings.key_extractor().campaign({}, {"ext": {"hotshard": {"campaign": "c7"}}}) == (
        "c7"
    )


@pytest.mark.parametrize("service", ["bidder", "router"])
def test_a_port_in_use_is_one_line_and_exit_1(
    service: str, table: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(service, table, "--host", "127.0.0.1", "--port", str(port)) == 1
    assert errors(caplog) == [f"cannot listen on http://127.0.0.1:{port}: Address already in use"]


def test_a_host_that_does_not_resolve_is_one_line_and_exit_1(
    table: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NB: resolving a bad name for real would ask the machine's DNS server, off loopback.
    async def unresolvable(self: HttpServer, host: str, port: int) -> int:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(HttpServer, "start", unresolvable)
    assert run("bidder", table, "--host", "0.0.0.0x") == 1
    assert errors(caplog) == ["cannot listen on http://0.0.0.0x:0: Name or service not known"]


def test_help_shows_the_defaults_of_the_common_flags() -> None:
    parser = argparse.ArgumentParser()
    bidder.configure(parser)
    text = " ".join(parser.format_help().split())
    for says in (
        "default 127.0.0.1, as in local mode",
        "routing file checks (default 0.05)",
        "(default X-Hotshard-Campaign)",
        "(default 65536)",
        "(default 0.25)",
    ):
        assert says in text


def test_the_operator_without_credentials_says_so_once_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hotshard_operator import cli

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert cli.main(parser.parse_args([])) == 2
    (line,) = errors(caplog)
    assert line.startswith(
        "hotshard operator: no Kubernetes credentials (in-cluster or kubeconfig)"
    )
