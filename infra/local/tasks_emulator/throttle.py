"""How fast a queue may dispatch: its rate limits, system throttling and ramp-up. No I/O.

Cloud Tasks documents three things beyond the queue's own `rate_limits` (v2 `HttpRequest`
reference, "System throttling"; the issues-and-limitations page, "Backoff errors and enforced
rates"):

* it backs off on errors, and uses a higher backoff when the worker answers 429 or 503 - for
  HTTP targets any 5xx - or when the rate of errors is high, "slowing down execution until
  errors stop"; the `Retry-After` response header is considered;
* "dispatches ramp up slowly when the queue is newly created or idle";
* user settings are not changed: the *enforced* rate drops, `GetQueue` still shows the
  configured one.

The service publishes no numbers for these, so the emulator's are its own, chosen to be
visible in a test and configurable (`ThrottlePolicy`): each backoff error halves the enforced
rate (down to `floor_rate`) and holds the queue for one interval at that rate or for the
`Retry-After`, whichever is longer; each success brings it back up by `recovery`; a new or
idle queue starts at `ramp_start_rate` and doubles every `ramp_step_s`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThrottlePolicy:
    """The emulator's system-throttling and ramp-up numbers; `OFF` turns both off."""

    throttle: bool = True
    floor_rate: float = 0.5  #: dispatches/s the enforced rate never drops below
    recovery: float = 1.5  #: the enforced rate grows by this factor per success
    error_window: int = 20  #: outcomes remembered for the error rate
    high_error_rate: float = 0.5  #: this share of errors in a full window throttles too
    max_hold_s: float = 300.0  #: a Retry-After longer than this is read as this
    ramp_up: bool = True
    ramp_start_rate: float = 10.0  #: dispatches/s of a new or idle queue
    ramp_step_s: float = 1.0  #: the ramp doubles every this many seconds
    idle_after_s: float = 60.0  #: a queue that dispatched nothing this long ramps up again


OFF = ThrottlePolicy(throttle=False, ramp_up=False)


def is_backoff_error(http_status: int | None) -> bool:
    """429, 503, and for an HTTP target every 5xx (issues-and-limitations page)."""
    return http_status is not None and (http_status == 429 or 500 <= http_status < 600)


@dataclass
class QueueFlow:
    """One queue's token bucket under its configured rate, throttling and ramp-up."""

    policy: ThrottlePolicy
    max_rate: float  #: rate_limits.max_dispatches_per_second
    max_burst: float  #: rate_limits.max_burst_size
    tokens: float = 0.0
    updated_at: float = 0.0
    throttle_factor: float = 1.0  #: enforced rate = configured rate * this (throttling)
    hold_until: float = 0.0  #: nothing is dispatched before this (monotonic)
    ramp_started_at: float | None = None
    last_dispatch_at: float | None = None
    outcomes: deque[bool] = field(default_factory=deque)  #: True = error

    @classmethod
    def start(
        cls, policy: ThrottlePolicy, max_rate: float, max_burst: float, now: float
    ) -> QueueFlow:
        flow = cls(policy=policy, max_rate=max_rate, max_burst=max_burst, updated_at=now)
        flow.tokens = flow._capacity(now)
        return flow

    def enforced_rate(self, now: float) -> float:
        rate = self.max_rate * self.throttle_factor
        if self.policy.throttle:
            rate = max(rate, min(self.policy.floor_rate, self.max_rate))
        if self.policy.ramp_up:
            rate = min(rate, self._ramp_rate(now))
        return rate

    def _ramp_rate(self, now: float) -> float:
        started = self.ramp_started_at
        idle = (
            self.last_dispatch_at is None or now - self.last_dispatch_at > self.policy.idle_after_s
        )
        if started is None or idle:
            return self.policy.ramp_start_rate  # the ramp restarts with the next dispatch
        steps = min((now - started) / self.policy.ramp_step_s, 64.0)
        rate: float = self.policy.ramp_start_rate * pow(2.0, steps)
        return rate

    def _capacity(self, now: float) -> float:
        # About one second of traffic at the enforced rate, never more than the queue's burst.
        return max(1.0, min(self.max_burst, self.enforced_rate(now)))

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one may be taken."""
        if now < self.hold_until:
            return self.hold_until - now
        rate = self.enforced_rate(now)
        self.tokens = min(self._capacity(now), self.tokens + (now - self.updated_at) * rate)
        self.updated_at = now
        if self.tokens < 1:
            return (1 - self.tokens) / rate
        self.tokens -= 1
        if self.policy.ramp_up and (
            self.last_dispatch_at is None or now - self.last_dispatch_at > self.policy.idle_after_s
        ):
            self.ramp_started_at = now
            self.tokens = min(self.tokens, self._capacity(now) - 1)
        self.last_dispatch_at = now
        return 0.0

    def record(self, now: float, http_status: int | None, retry_after_s: float | None) -> None:
        """Account for one attempt's outcome (None: no HTTP response arrived)."""
        if not self.policy.throttle:
            return
        failed = http_status is None or not 200 <= http_status < 300
        self.outcomes.append(failed)
        while len(self.outcomes) > self.policy.error_window:
            self.outcomes.popleft()
        if not failed:
            self.throttle_factor = min(1.0, self.throttle_factor * self.policy.recovery)
            return
        window_full = len(self.outcomes) >= self.policy.error_window
        high_rate = window_full and sum(self.outcomes) / len(self.outcomes) >= (
            self.policy.high_error_rate
        )
        if not (is_backoff_error(http_status) or high_rate):
            return
        # Never below the floor, so that successes bring the queue back within a few dispatches.
        lowest = min(1.0, self.policy.floor_rate / self.max_rate) if self.max_rate > 0 else 1.0
        self.throttle_factor = max(self.throttle_factor / 2.0, lowest)
        hold = 1.0 / self.enforced_rate(now)
        if retry_after_s is not None:
            hold = max(hold, min(retry_after_s, self.policy.max_hold_s))
        self.hold_until = max(self.hold_until, now + hold)
        self.tokens = min(self.tokens, 0.0)
