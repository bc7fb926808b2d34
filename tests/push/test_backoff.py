"""Backoff with full jitter and the circuit breaker, with an injected random source and clock."""

from __future__ import annotations

import random

import pytest

from node.push.backoff import (
    BREAKER_STATE_VALUES,
    Backoff,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    full_jitter,
)
from node.push.outcome import OutcomeKind, PushOutcome
from node.settings import CentralSection


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def transient() -> PushOutcome:
    return PushOutcome(OutcomeKind.TRANSIENT, "HTTP 502", 502)


def throttled(seconds: float | None) -> PushOutcome:
    return PushOutcome(OutcomeKind.THROTTLED, "HTTP 429", 429, retry_after_s=seconds)


# -- backoff ----------------------------------------------------------------------------------------------


def test_the_interval_doubles_per_attempt_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, uniform=highest)
    assert [backoff.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60.0  # no overflow for absurd attempt numbers


def test_full_jitter_draws_from_zero_to_the_interval() -> None:
    rng = random.Random(1234)
    backoff = Backoff(0.5, 300.0, uniform=rng.uniform)
    delays = [backoff.delay(4) for _ in range(2000)]  # interval min(300, 0.5 * 16) = 8
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert min(delays) < 0.2 and max(delays) > 7.8  # the whole interval, not just its upper half
    assert 3.5 < sum(delays) / len(delays) < 4.5
    assert Backoff(0.5, 300.0, uniform=lowest).delay(4) == 0.0


def test_full_jitter_function_matches_the_formula() -> None:
    seen: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        seen.append((low, high))
        return high / 2

    assert full_jitter(3, 2.0, 10.0, uniform) == 5.0
    assert seen == [(0.0, 10.0)]


def test_retry_after_wins_over_the_computed_delay_and_is_capped() -> None:
    backoff = Backoff(1.0, 300.0, uniform=highest)
    assert backoff.delay(0, retry_after_s=42.0) == 42.0
    assert backoff.delay(9, retry_after_s=3.0) == 3.0
    assert backoff.delay(0, retry_after_s=86_400.0) == 300.0
    assert backoff.delay(0, retry_after_s=-5.0) == 0.0


def test_backoff_from_the_settings() -> None:
    backoff = Backoff.from_settings(CentralSection(backoff_initial_s=2.0, backoff_max_s=20.0), uniform=highest)
    assert [backoff.delay(n) for n in range(5)] == [2, 4, 8, 16, 20]


def test_invalid_backoff_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(0.0, 10.0)
    with pytest.raises(ValueError):
        CircuitBreaker(Backoff(), threshold=0)


# -- circuit breaker --------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(Backoff(1.0, 300.0, uniform=highest), threshold=5, clock=clock)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record(transient())


def test_the_breaker_opens_after_k_consecutive_transient_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 4
    assert breaker.retry_delay_s == 8.0  # the 4th failure: interval 1 * 2**3, drawn at its top

    fail(breaker, 1)

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.wait_s() == 16.0


def test_a_success_in_between_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    breaker.record(PushOutcome(OutcomeKind.OK, "HTTP 200", 200))
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 4


def test_one_probe_after_the_wait_closes_the_breaker_on_success(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    clock.now += 15.9
    assert not breaker.allow()

    clock.now += 0.1
    assert breaker.allow(), "the probe"
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(), "only one probe at a time"

    breaker.record(PushOutcome(OutcomeKind.OK, "HTTP 200", 200))

    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert breaker.snapshot().retry_delay_s == 0.0 and breaker.consecutive_failures == 0


def test_a_failed_probe_opens_the_breaker_again_for_longer(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    clock.now += 16
    assert breaker.allow()

    breaker.record(transient())

    assert breaker.state is BreakerState.OPEN
    assert breaker.wait_s() == 32.0
    clock.now += 32
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN


def test_a_rejected_batch_proves_central_works(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    clock.now += 16
    assert breaker.allow()
    breaker.record(PushOutcome(OutcomeKind.REJECTED, "HTTP 400", 400))
    assert breaker.state is BreakerState.CLOSED


def test_throttling_opens_the_breaker_at_once_for_retry_after(breaker: CircuitBreaker, clock: FakeClock) -> None:
    assert breaker.allow()
    breaker.record(throttled(7.0))

    assert breaker.state is BreakerState.OPEN and breaker.wait_s() == 7.0
    clock.now += 7
    assert breaker.allow()


def test_throttling_without_retry_after_uses_the_backoff(breaker: CircuitBreaker) -> None:
    breaker.record(throttled(None))
    assert breaker.state is BreakerState.OPEN and breaker.wait_s() == 1.0


def test_stragglers_do_not_move_the_probe_time(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    probe_at = clock.now + breaker.wait_s()
    breaker.record(transient())  # sent before the breaker opened, answered now
    assert breaker.state is BreakerState.OPEN
    assert clock.now + breaker.wait_s() == probe_at


def test_an_abandoned_probe_lets_the_next_call_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    clock.now += 16
    assert breaker.allow()
    breaker.abandon()
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN


def test_a_probe_that_never_reports_times_out(clock: FakeClock) -> None:
    breaker = CircuitBreaker(Backoff(1.0, 300.0, uniform=highest), threshold=1, clock=clock, probe_timeout_s=60)
    fail(breaker, 1)
    clock.now += 1
    assert breaker.allow()
    clock.now += 59
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_auth_and_misconfiguration_count_like_transient_failures(breaker: CircuitBreaker) -> None:
    for kind in (OutcomeKind.AUTH, OutcomeKind.MISCONFIGURED, OutcomeKind.AUTH, OutcomeKind.AUTH):
        breaker.record(kind)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(OutcomeKind.MISCONFIGURED)
    assert breaker.state is BreakerState.OPEN


def test_the_snapshot_is_metrics_friendly(breaker: CircuitBreaker, clock: FakeClock) -> None:
    assert breaker.snapshot() == BreakerSnapshot(BreakerState.CLOSED, 0, 0.0, 0.0)
    fail(breaker, 5)
    clock.now += 6
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.consecutive_failures, snapshot.retry_delay_s, snapshot.next_probe_in_s) == (
        "open", 5, 16.0, 10.0)
    assert BREAKER_STATE_VALUES[snapshot.state] == 2
