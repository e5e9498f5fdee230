"""The simulation's shard model: Erlang C, the bounded backlog and the latency histogram."""

from __future__ import annotations

import numpy as np
import pytest

from hotshard.sim.queueing import erlang_c, latency_mass, percentile, step_shards


def test_erlang_c_matches_textbook_values() -> None:
    assert erlang_c(1, np.array([0.5]))[0] == pytest.approx(0.5)  # M/M/1: rho
    assert erlang_c(2, np.array([1.0]))[0] == pytest.approx(1 / 3)  # M/M/2 at a = 1
    assert erlang_c(2, np.array([2.5]))[0] == 1.0  # overloaded: everyone waits


def test_an_overloaded_shard_fills_its_backlog_then_refuses() -> None:
    # 0.2 CPU-s of work on a 0.15-core shard whose queue holds 0.19 s of work (0.0285 CPU-s).
    s = step_shards(np.array([0.2]), np.array([400.0]), np.zeros(1), 0.15, 1, 0.19)
    assert s.served[0] == pytest.approx(0.15)
    assert s.backlog[0] == pytest.approx(0.0285)
    assert s.refused_share[0] == pytest.approx((0.05 - 0.0285) / 0.2)
    assert s.queue_wait[0] == pytest.approx(0.0285 / 2 / 0.15)


def test_mm1_mean_latency_is_service_over_one_minus_rho() -> None:
    # 200 req/s of 0.5 ms CPU on 0.15 core: service 3.33 ms, rho 2/3, mean 10 ms.
    s = step_shards(np.array([0.1]), np.array([200.0]), np.zeros(1), 0.15, 1, 0.19)
    assert s.mean_latency[0] == pytest.approx(0.01)


def test_requests_past_the_deadline_are_timeouts_recorded_at_the_deadline() -> None:
    s = step_shards(np.array([0.2]), np.array([400.0]), np.array([0.03]), 0.15, 1, 0.19)
    hist, late = latency_mass(s, np.array([100.0]), np.array([0.003]), 0.1)
    assert late == pytest.approx(100.0)  # a 0.195 s backlog wait: every request is late
    assert hist.sum() == pytest.approx(100.0)
    p99 = percentile(hist, 0.99)
    assert p99 is not None
    assert 0.1 <= p99 < 0.11


def test_an_idle_histogram_has_no_percentile() -> None:
    assert percentile(np.zeros(10), 0.99) is None
