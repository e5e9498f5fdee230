"""The queueing model of one shard for one simulated second, for every shard at once.

Stated model (``docs/simulation.md``): a shard is an M/M/c queue whose ``c`` servers are its
whole cores (a fractional quota is one server slowed to the quota), with a mean service time
from the CPU its requests cost, plus a fluid backlog for the seconds it is overloaded:

- arrivals beyond what the cores serve fill a backlog, bounded by the bidder's in-flight limit
  expressed as seconds of work; what does not fit is refused at once with a 429;
- while the backlog is non-empty every admitted request waits for it to drain (its mean over
  the second); otherwise the wait follows Erlang C: ``P(W > t) = C(c, a) exp(-(c mu - lambda) t)``;
- a request's latency is its own service time plus that wait; past its deadline it is a
  timeout, recorded at the deadline: the router (or the proxy in front of the shards) answers
  504 then, and the load generator records that answer's latency. Deadlines differ by request
  (a body's tmax, clamped), so the mass past each deadline moves to that deadline.

Latencies go into a log-spaced histogram per group (hot, other), from which a phase's p99 is
read. Requests refused with a 429 take no part in the percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EDGES = np.concatenate([[0.0], np.geomspace(1e-5, 10.0, 240)])
"""Histogram bin edges in seconds: 10 µs to 10 s, 240 log-spaced bins (about 6 % apart)."""


@dataclass(frozen=True)
class ShardSecond:
    """What every shard did in one second (arrays indexed by shard)."""

    served: np.ndarray
    """Work served, CPU-seconds."""
    refused_share: np.ndarray
    """Share of arrivals refused with a 429 (the queue was full)."""
    backlog: np.ndarray
    """Backlog at the end of the second, CPU-seconds of work."""
    queue_wait: np.ndarray
    """Deterministic wait from the backlog (s), zero when the shard kept up."""
    erlang_c: np.ndarray
    """Probability of waiting in the M/M/c regime (zero when overloaded)."""
    decay: np.ndarray
    """``c mu - lambda`` per second, the rate of the wait's exponential tail."""
    mean_latency: np.ndarray
    """Mean latency of an admitted request, seconds (the engine's latency signal)."""


def erlang_c(servers: int, offered: np.ndarray) -> np.ndarray:
    """Probability an arrival waits in an M/M/c queue, for offered loads ``a = lambda / mu``.

    Example:
        >>> float(erlang_c(1, np.array([0.5]))[0])  # M/M/1: P(wait) = rho
        0.5
    """
    a = np.asarray(offered, dtype=np.float64)
    rho = a / servers
    # Erlang B by its stable recurrence, then C from B.
    b = np.ones_like(a)
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    c = b / (1.0 - rho * (1.0 - b))
    return np.where(rho < 1.0, np.clip(c, 0.0, 1.0), 1.0)


def step_shards(
    work: np.ndarray,
    rate: np.ndarray,
    backlog: np.ndarray,
    cores: float,
    servers: int,
    queue_bound_s: float,
) -> ShardSecond:
    """Advance every shard by one second given its arrivals' ``work`` (CPU-s) and ``rate``."""
    bound = queue_bound_s * cores
    offered = backlog + work
    served = np.minimum(offered, cores)
    left = offered - served
    refused_work = np.maximum(left - bound, 0.0)
    new_backlog = left - refused_work
    with np.errstate(divide="ignore", invalid="ignore"):
        refused_share = np.where(work > 0, refused_work / work, 0.0)
        mean_cost = np.where(rate > 0, work / rate, 0.0)  # CPU-s per request
    speed = cores / servers
    service = mean_cost / speed  # seconds on one server
    overloaded = (new_backlog > 0) | (backlog > 0)
    queue_wait = np.where(overloaded, (backlog + new_backlog) / 2.0 / cores, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(service > 0, 1.0 / service, 0.0)
        offered_erl = np.where(mu > 0, rate / np.maximum(mu, 1e-12), 0.0)
    c = np.where(overloaded, 0.0, erlang_c(servers, offered_erl))
    decay = np.maximum(servers * mu - rate, 1e-9)
    mean_wait = queue_wait + np.where(overloaded, 0.0, c / decay)
    return ShardSecond(
        served=served,
        refused_share=refused_share,
        backlog=new_backlog,
        queue_wait=queue_wait,
        erlang_c=c,
        decay=decay,
        mean_latency=service + mean_wait,
    )


def latency_mass(
    state: ShardSecond,
    admitted: np.ndarray,
    service: np.ndarray,
    deadlines: Sequence[tuple[float, float]],
) -> tuple[np.ndarray, float]:
    """Histogram counts of ``admitted`` requests per shard with own ``service`` time, and the
    number that missed their deadline.

    ``deadlines`` are (seconds, share of requests) pairs. A request that misses its deadline is
    recorded at the deadline, which is what the load generator sees: the router gives up and
    answers 504 then. One that meets it is recorded at its modelled latency, however long.
    """
    base = service + state.queue_wait  # latency with no M/M/c wait
    t = EDGES[None, :] - base[:, None]
    tail = state.erlang_c[:, None] * np.exp(-state.decay[:, None] * np.maximum(t, 0.0))
    # Requests (over all shards) whose latency is at most each edge.
    below = (np.where(t >= 0, 1.0 - tail, 0.0) * admitted[:, None]).sum(axis=0)
    total = float(admitted.sum())
    hist = np.zeros(len(EDGES) - 1)
    late = 0.0
    for deadline, share in deadlines:
        t_dead = deadline - base
        missed = np.where(
            t_dead >= 0, state.erlang_c * np.exp(-state.decay * np.maximum(t_dead, 0.0)), 1.0
        )
        late += share * float((missed * admitted).sum())
        # NB: every request is answered by its deadline, so the CDF reaches the total there;
        # the late ones fill the bin the deadline falls in. Past 10 s: the last bin.
        capped = np.where(deadline > EDGES, below, total)
        capped[-1] = total
        hist += share * np.diff(capped)
    return hist, late


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram, in seconds (upper edge of its bin)."""
    total = float(hist.sum())
    if total <= 0:
        return None
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(EDGES[min(idx + 1, len(EDGES) - 1)])
