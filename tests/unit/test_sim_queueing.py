"""The simulation's shard model: Erlang C, the bounded backlog and the latency histogram."""

from __future__ import annotations

import numpy as np
import pytest

from hotshard.sim.queueing import EDGES, erlang_c, latency_mass, percentile, step_shards


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
    hist, late = latency_mass(s, np.array([100.0]), np.array([0.003]), [(0.1, 1.0)])
    assert late == pytest.approx(100.0)  # a 0.195 s backlog wait: every request is late
    assert hist.sum() == pytest.approx(100.0)
    p99 = percentile(hist, 0.99)
    assert p99 is not None
    assert 0.1 <= p99 < 0.11


def test_late_requests_get_the_latency_the_queue_implies_up_to_their_own_deadline() -> None:
    # Overloaded at a known rate: 0.2 CPU-s a second on 0.15 core, with 0.03 CPU-s already
    # queued, leaves a full 0.0285 CPU-s backlog: the mean wait is (0.03 + 0.0285) / 2 / 0.15
    # = 0.195 s, and a request of 3 ms service answers at 0.198 s. The load generator sees
    # that 0.198 s for a request whose deadline is 500 ms, and the router's 504 at 100 ms for
    # one whose deadline is 100 ms.
    s = step_shards(np.array([0.2]), np.array([400.0]), np.array([0.03]), 0.15, 1, 0.19)
    assert s.queue_wait[0] == pytest.approx(0.195)
    hist, late = latency_mass(s, np.array([100.0]), np.array([0.003]), [(0.1, 0.6), (0.5, 0.4)])
    assert late == pytest.approx(60.0)
    assert hist.sum() == pytest.approx(100.0)
    at_deadline = int(np.searchsorted(EDGES, 0.1)) - 1  # the bin the 100 ms deadline is in
    at_queue = int(np.searchsorted(EDGES, 0.198)) - 1
    assert hist[at_deadline] == pytest.approx(60.0)
    assert hist[at_queue] == pytest.approx(40.0)
    p99 = percentile(hist, 0.99)
    assert p99 is not None
    assert 0.198 <= p99 < 0.198 * 1.07  # the queue's latency, not the 100 ms deadline


def test_a_request_that_meets_its_deadline_keeps_its_latency() -> None:
    # M/M/1 at 200 req/s with 3.33 ms service (rho 2/3, decay mu - lambda = 100/s): a request
    # misses a 100 ms deadline when its wait exceeds 96.7 ms, P = 2/3 e^(-9.67).
    s = step_shards(np.array([0.1]), np.array([200.0]), np.zeros(1), 0.15, 1, 0.19)
    service = np.array([0.1 / 200 / 0.15])
    hist, late = latency_mass(s, np.array([1e6]), service, [(0.1, 1.0)])
    assert late == pytest.approx(1e6 * 2 / 3 * np.exp(-100 * (0.1 - service[0])), rel=1e-9)
    assert hist.sum() == pytest.approx(1e6)  # no request is lost from the histogram
    # p99: service + the wait exceeded by 1 %, 2/3 e^(-100 t) = 0.01: 3.3 + 42.0 = 45.3 ms
    # (the percentile is the upper edge of its bin, under 7 % above).
    expected = service[0] + np.log(100 * 2 / 3) / 100
    p99 = percentile(hist, 0.99)
    assert p99 is not None
    assert expected <= p99 < expected * 1.07
    # With the same requests allowed 500 ms, fewer than one in a billion is late.
    _, late_500 = latency_mass(s, np.array([1e6]), service, [(0.5, 1.0)])
    assert late_500 < 1e-9 * 1e6


def test_an_idle_histogram_has_no_percentile() -> None:
    assert percentile(np.zeros(10), 0.99) is None
