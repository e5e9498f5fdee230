"""The resource side of a demo pass: configuration changes, the bidders' cost records, the verdict.

A scenario such as ``advertiser-bug`` changes a campaign's configuration while traffic flows:
at its time, the change is PUT to every bidder of the fleet (``/campaigns/{id}/config``), as a
campaign-configuration service would push it. At the end of the pass every live bidder's
``/resources`` (cost per campaign and the containment events: anomaly, throttle, trip, config,
widen, promote, rollback) is collected. :func:`summarise_resources` turns those records, the
control loop's timeline and the load generators' counts into the figures ``summary.json``
carries: how fast the bad campaign was detected by its resource signal, what contained it
(the bidders' throttle and trip, the engine's move to the sandbox tier), whether and why it was
rolled back, how far each graduated rollout widened, its rate before and during (flat, by
design), and the cost per campaign.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from hotshard.control.timeline import Entry
from hotshard.local.scenario import ConfigChange
from hotshard.markdown import format_cell

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 2.0
"""A bidder that takes longer than this to store a config or report costs is busy or gone."""
TOP_CAMPAIGNS = 10
"""Campaigns listed in ``cost_per_campaign`` besides the changed ones, by CPU spent."""

AppliedChange = dict[str, Any]


async def apply_config_changes(
    changes: tuple[ConfigChange, ...],
    urls: Callable[[], Mapping[str, str]],
    during_starts_at: float,
    applied: list[AppliedChange],
) -> None:
    """PUT each change to every bidder when it is due; append what each shard stored."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for change in sorted(changes, key=lambda c: c.offset_seconds):
            await asyncio.sleep(max(0.0, during_starts_at + change.offset_seconds - time.time()))
            body = change.config.model_dump_json()
            sent_at = time.time()
            targets = dict(urls())
            answers = await asyncio.gather(
                *(
                    _put(session, f"{u}/campaigns/{change.campaign}/config", body)
                    for u in targets.values()
                )
            )
            versions = {n: v for n, v in zip(targets, answers, strict=True) if v is not None}
            applied.append(
                {
                    "time": sent_at,
                    "campaign": change.campaign,
                    "versions": versions,
                    "rollout": change.config.rollout,
                    "note": change.config.note,
                }
            )
            log.info(
                "campaign %s configuration changed on %d shards", change.campaign, len(versions)
            )


async def _put(session: aiohttp.ClientSession, url: str, body: str) -> int | None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        headers = {"Content-Type": "application/json"}
        async with session.put(url, data=body, headers=headers) as resp:
            if resp.status == 200:
                return int((await resp.json())["version"])
    return None


async def collect_resources(urls: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every reachable bidder's ``/resources`` report, by shard name."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, url in urls.items():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(f"{url}/resources") as resp:
                    out[name] = await resp.json()
    return out


def merge_costs(reports: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cost per campaign over every shard that served it."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports.values():
        for campaign, c in report.get("campaigns", {}).items():
            m = merged.setdefault(
                campaign, {"requests": 0, "cpu_seconds": 0.0, "throttled": 0, "tripped": 0}
            )
            for key in ("requests", "cpu_seconds", "throttled", "tripped"):
                m[key] += c.get(key, 0)
    for m in merged.values():
        m["cpu_seconds"] = round(m["cpu_seconds"], 4)
        m["us_per_request"] = (
            round(m["cpu_seconds"] / m["requests"] * 1e6, 1) if m["requests"] else None
        )
    return merged


def _quarantines(timeline: list[Entry], campaign: str | None = None) -> list[tuple[Entry, str]]:
    """Every commit that put a campaign (``campaign``, or any) on a sandbox shard, with the
    action's words."""
    found = []
    for e in timeline:
        if e.kind not in ("commit", "final"):
            continue
        for a in e.actions:
            if a.startswith("quarantine") and (campaign is None or repr(campaign) in a):
                found.append((e, a))
    return found


def _quarantined(timeline: list[Entry], campaign: str, after: float, until: float) -> Entry | None:
    """The first commit in ``[after, until)`` that put ``campaign`` on a sandbox shard."""
    return next((e for e, _ in _quarantines(timeline, campaign) if after <= e.time < until), None)


def _engine_detect(
    timeline: list[Entry], campaign: str, after: float, until: float
) -> Entry | None:
    for e in timeline:
        resource = any(f"/{campaign} (cpu_per_request)" in h for h in e.hot)
        if after <= e.time < until and resource:
            return e
    return None


def _sandbox_events(timeline: list[Entry]) -> list[dict[str, Any]]:
    """The engine's quarantines as containment events, beside the bidders' own."""
    events = []
    for e, action in _quarantines(timeline):
        if e.kind != "final":
            continue
        campaign = action.split("'")[1] if action.count("'") >= 2 else ""
        events.append(
            {"time": e.time, "shard": "engine", "kind": "sandbox", "campaign": campaign}
            | {"reason": action.split(": ", 1)[-1]}
        )
    return events


def summarise_resources(
    applied: list[AppliedChange],
    reports: Mapping[str, dict[str, Any]],
    timeline: list[Entry],
    rates: Mapping[str, float],
) -> dict[str, Any]:
    """The resource figures of one pass, keyed as ``summary.json`` carries them."""
    events = sorted(
        [e for r in reports.values() for e in r.get("events", [])] + _sandbox_events(timeline),
        key=lambda e: e["time"],
    )
    costs = merge_costs(reports)
    changes = []
    for i, change in enumerate(applied):
        campaign, at = change["campaign"], change["time"]
        later = [c["time"] for c in applied[i + 1 :] if c["campaign"] == campaign]
        until = later[0] if later else float("inf")
        mine = [e for e in events if e["campaign"] == campaign and at <= e["time"] < until]
        anomaly = next((e for e in mine if e["kind"] == "anomaly"), None)
        engine = _engine_detect(timeline, campaign, at, until)
        sandbox = _quarantined(timeline, campaign, at, until)
        rollback = next((e for e in mine if e["kind"] == "rollback"), None)
        contained = sorted({e["kind"] for e in mine if e["kind"] in ("throttle", "trip")})
        if sandbox is not None:
            contained.append("sandbox")
        widened = [e.get("to", 0.0) for e in mine if e["kind"] == "widen"]
        detected = [t for t in (anomaly and anomaly["time"], engine and engine.time) if t]
        changes.append(
            {
                "campaign": campaign,
                "rollout": change["rollout"],
                "note": change["note"],
                "shards_told": len(change["versions"]),
                "resource_detect_seconds": round(min(detected) - at, 2) if detected else None,
                "bidder_detect_seconds": round(anomaly["time"] - at, 2) if anomaly else None,
                "engine_detect_seconds": round(engine.time - at, 2) if engine else None,
                "contained_by": contained,
                "sandbox_seconds": round(sandbox.time - at, 2) if sandbox else None,
                "rolled_back": rollback is not None,
                "rollback_seconds": round(rollback["time"] - at, 2) if rollback else None,
                "rollback_reason": rollback["reason"] if rollback else None,
                "rollback_share": rollback.get("share") if rollback else None,
                "widened_to": max(widened, default=None),
                "promoted": any(e["kind"] == "promote" for e in mine),
                "cost": costs.get(campaign),
            }
        )
    top = sorted(costs.items(), key=lambda kv: -kv[1]["cpu_seconds"])[:TOP_CAMPAIGNS]
    changed = {c["campaign"] for c in changes}
    listed = dict(top) | {k: v for k, v in costs.items() if k in changed}
    # NB: the headline figures are those of the first change that caused a spike: rolled back,
    # else detected (a campaign's cold start on a fresh shard can look anomalous), else the last.
    spiked = [c for c in changes if c["rolled_back"]] or [
        c for c in changes if c["resource_detect_seconds"] is not None
    ]
    first = spiked[0] if spiked else (changes[-1] if changes else {})
    return {
        "config_changes": changes,
        "resource_detect_seconds": first.get("resource_detect_seconds"),
        "contained_by": first.get("contained_by", []),
        "rolled_back": first.get("rolled_back", False),
        "changed_campaign_rate": dict(rates),
        "cost_per_campaign": listed,
        "containment_events": [
            {k: e[k] for k in ("time", "shard", "kind", "campaign", "reason")}
            for e in events
            if e["kind"] != "config"
        ][:50],
    }


def render_resources(summary: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """The report's section on configuration changes, containment and cost per campaign."""
    lines = ["", "## Resource hot spots", "", "| change | measure | with hotshard | baseline |"]
    lines.append("| --- | --- | --- | --- |")
    # NB: both passes replay one scenario, so their changes pair up in order.
    theirs = list(baseline.get("config_changes") or [])
    for i, change in enumerate(summary["config_changes"]):
        other = theirs[i] if i < len(theirs) else {}
        label = f"{i + 1}. {change['campaign']} ({change['rollout']})"
        for key in (
            "resource_detect_seconds",
            "bidder_detect_seconds",
            "engine_detect_seconds",
            "contained_by",
            "sandbox_seconds",
            "rolled_back",
            "rollback_seconds",
            "rollback_share",
            "widened_to",
            "promoted",
        ):
            lines.append(
                f"| {label} | {key} | {format_cell(change.get(key))} | "
                f"{format_cell(other.get(key))} |"
            )
        if change.get("rollback_reason"):
            why = format_cell(change["rollback_reason"])
            lines.append(f"| {label} | rollback_reason | {why} | - |")
    lines += ["", "| campaign | requests | CPU s | µs/request | throttled | tripped |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, c in summary["cost_per_campaign"].items():
        lines.append(
            f"| {name} | {c['requests']} | {c['cpu_seconds']} | {c['us_per_request']} | "
            f"{c['throttled']} | {c['tripped']} |"
        )
    lines += [
        "",
        "| t (s after the first action) | shard | action | campaign | reason |",
        "| --- | --- | --- | --- | --- |",
    ]
    events = summary["containment_events"]
    first = min((e["time"] for e in events), default=0.0)
    for e in events:
        reason = format_cell(e["reason"])
        lines.append(
            f"| {e['time'] - first:.2f} | {e['shard']} | {e['kind']} | {e['campaign']} | {reason} |"
        )
    return lines
