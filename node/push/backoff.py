"""When to try central again: exponential backoff with full jitter, and a circuit breaker.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the n-th retry waits
`uniform(0, min(cap, base * 2**n))`. Spreading retries over the whole interval keeps a fleet of nodes
from hammering central in lockstep after an outage. A `Retry-After` from central wins over the computed
delay (capped at `backoff_max_s`: a broken proxy announcing a day must not stall the node for a day).

The breaker protects central and the node while central is down. It counts consecutive failed attempts
(`transient`, `auth`, `misconfigured`, `throttled`); after `threshold` of them (default 5) it opens: calls
are refused until the probe time (now + the current backoff delay). Then exactly one call is let through
(half-open); its outcome closes the breaker or opens it again with a longer delay. A `throttled`
outcome opens it at once for the Retry-After time: central asked everyone to wait, not just one batch.
Any answer showing central works (`ok`, `rejected`, `too_large`) closes it.

Both classes take an injected clock and random source (tests); neither sleeps nor does I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from node.push.outcome import OutcomeKind, PushOutcome

if TYPE_CHECKING:
    from node.settings import CentralSection

Clock = Callable[[], float]
Uniform = Callable[[float, float], float]
"""Like random.uniform(a, b): a float in [a, b]."""

DEFAULT_THRESHOLD = 5
_MAX_EXPONENT = 62  # 2**62 * any sane base is far above any cap; avoids float overflow for huge attempts

FAILURE_KINDS = frozenset({OutcomeKind.TRANSIENT, OutcomeKind.AUTH, OutcomeKind.MISCONFIGURED,
                           OutcomeKind.THROTTLED})
"""Outcomes that count as a failed attempt of the endpoint (the breaker counts them)."""
WORKING_KINDS = frozenset({OutcomeKind.OK, OutcomeKind.REJECTED, OutcomeKind.TOO_LARGE})
"""Outcomes that prove central is up and answering sensibly (they close the breaker)."""


def full_jitter(attempt: int, base_s: float, cap_s: float, uniform: Uniform = random.uniform) -> float:
    """`uniform(0, min(cap_s, base_s * 2**attempt))`; attempt 0 is the first retry."""
    return uniform(0.0, min(cap_s, base_s * 2 ** min(max(attempt, 0), _MAX_EXPONENT)))


class Backoff:
    """Retry delays: full jitter over an exponentially growing, capped interval; Retry-After wins.

    :param base_s: the interval of the first retry (`backoff_initial_s`).
    :param cap_s: the largest delay ever returned, Retry-After included (`backoff_max_s`).
    :param uniform: random source, `random.uniform` by default (tests pass a seeded Random's uniform).
    """

    def __init__(self, base_s: float = 1.0, cap_s: float = 300.0, *, uniform: Uniform | None = None) -> None:
        if base_s <= 0 or cap_s <= 0:
            raise ValueError("backoff base and cap must be positive")
        self.base_s = base_s
        self.cap_s = cap_s
        self._uniform = uniform or random.uniform

    @classmethod
    def from_settings(cls, section: CentralSection, *, uniform: Uniform | None = None) -> Backoff:
        return cls(section.backoff_initial_s, section.backoff_max_s, uniform=uniform)

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the `attempt`-th delay: min(cap, base * 2**attempt)."""
        return min(self.cap_s, self.base_s * 2 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based): Retry-After when given (capped),
        else full jitter."""
        if retry_after_s is not None:
            return min(self.cap_s, max(0.0, retry_after_s))
        return full_jitter(attempt, self.base_s, self.cap_s, self._uniform)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""Numeric values for a gauge (edge_node_push_breaker_state)."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The breaker's state for metrics and /readyz."""

    state: BreakerState
    consecutive_failures: int
    retry_delay_s: float
    """The current retry delay: the wait chosen after the last failure (0.0 after a success)."""
    next_probe_in_s: float
    """Seconds until a call is let through again (0.0 when closed)."""


class CircuitBreaker:
    """A circuit breaker over push outcomes; see the module docstring.

    Use: `if breaker.allow(): outcome = await sink.post_transaction(...); breaker.record(outcome)`,
    else wait `breaker.wait_s()`. A caller that was allowed through but sends nothing (cancelled) calls
    `abandon()`, so a half-open breaker does not wait for a probe that never reports.

    :param threshold: consecutive failures that open the breaker.
    :param probe_timeout_s: a half-open probe that has not reported after this long is given up and
        another call is let through (a safety net; `abandon()` is the normal way).
    """

    def __init__(self, backoff: Backoff, *, threshold: int = DEFAULT_THRESHOLD, clock: Clock = time.monotonic,
                 probe_timeout_s: float = 900.0) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._backoff = backoff
        self._threshold = threshold
        self._clock = clock
        self._probe_timeout_s = probe_timeout_s
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._retry_delay_s = 0.0
        self._probe_at = 0.0
        """OPEN: when the next probe may go. HALF_OPEN: when the probe in flight went."""

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def retry_delay_s(self) -> float:
        return self._retry_delay_s

    def allow(self) -> bool:
        """May a call go to central now? In the open state the first call at or after the probe time
        goes through as the probe (the breaker turns half-open); until it reports, others are refused."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now < self._probe_at:
                return False
        elif now < self._probe_at + self._probe_timeout_s:  # half-open: a probe is in flight
            return False
        self._state = BreakerState.HALF_OPEN
        self._probe_at = now
        return True

    def wait_s(self) -> float:
        """Seconds until `allow()` may say yes (0.0 when closed)."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.OPEN:
            return max(0.0, self._probe_at - now)
        return max(0.0, self._probe_at + self._probe_timeout_s - now)

    def record(self, outcome: PushOutcome | OutcomeKind) -> None:
        """Account for the outcome of a call that `allow()` let through."""
        kind = outcome.kind if isinstance(outcome, PushOutcome) else outcome
        if kind in WORKING_KINDS:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._retry_delay_s = 0.0
            return
        if kind not in FAILURE_KINDS:
            return
        retry_after = outcome.retry_after_s if isinstance(outcome, PushOutcome) else None
        self._failures += 1
        self._retry_delay_s = self._backoff.delay(self._failures - 1, retry_after)
        if self._state is BreakerState.OPEN:
            return  # a straggler that went before the breaker opened: the probe time stands
        if (self._state is BreakerState.HALF_OPEN or kind is OutcomeKind.THROTTLED
                or self._failures >= self._threshold):
            self._state = BreakerState.OPEN
            self._probe_at = self._clock() + self._retry_delay_s

    def abandon(self) -> None:
        """A call let through by `allow()` sent nothing: a half-open breaker lets the next call probe."""
        if self._state is BreakerState.HALF_OPEN:
            self._state = BreakerState.OPEN
            self._probe_at = self._clock()

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(self._state, self._failures, self._retry_delay_s, self.wait_s())
