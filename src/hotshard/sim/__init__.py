"""``hotshard simulate``: a time-stepped model of a 10M-requests/s fleet, running the real engine.

No machine can run a 10M-rps bidding fleet, so this package models one: arrivals from the real
traces, per-shard queues with a stated model, and the five strategies of :mod:`hotshard.strategies`
side by side, with :class:`hotshard.engine.core.Engine` deciding every simulated second for the
hotshard ones. Everything is aggregated per partition and per shard per step, never per request.
The assumptions are listed in ``docs/simulation.md``.
"""
