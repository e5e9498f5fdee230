"""Admission control: bounded in-flight work, refusals counted, no queue."""

from __future__ import annotations

import asyncio

from hotshard_bidder.admission import Admission


def test_the_request_beyond_the_limit_is_refused_and_leaving_makes_room() -> None:
    gate = Admission(limit=2)
    gate.enter()
    gate.enter()
    assert not gate.overloaded()
    gate.enter()
    assert gate.overloaded()
    assert gate.refused == 1
    gate.leave()
    assert not gate.overloaded()
    assert gate.inflight == 2


async def test_concurrent_handlers_see_each_other_after_one_yield() -> None:
    gate = Admission(limit=3)
    verdicts: list[bool] = []

    async def handler() -> None:
        gate.enter()
        try:
            await asyncio.sleep(0)
            verdicts.append(gate.overloaded())
            await asyncio.sleep(0)
        finally:
            gate.leave()

    await asyncio.gather(*(handler() for _ in range(5)))
    # All five entered before any checked, so every one saw 5 in flight over a limit of 3.
    assert verdicts == [True] * 5
    assert gate.inflight == 0
    assert gate.refused == 5
