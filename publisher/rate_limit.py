"""A client-side request rate limit: a token bucket that backs off when CloudTrail throttles.

PutAuditEvents allows 100 requests/s per account and region, not adjustable, for every
writer together. The group's budget (PUT_RATE_LIMIT, default 95/s) is split between the
publishers (`publisher.flow.rate_share`); each one's limiter runs at its share.

A token bucket, not even spacing: a slot that no request used is not lost (up to a small
burst, `burst_s` of tokens), so the limiter reaches its rate when requests finish unevenly,
yet never sends more than rate * t + burst in any t seconds. On a throttle the rate is cut
multiplicatively; it then recovers linearly over `recover_s`, up to the ceiling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class AdaptiveRateLimiter:
    def __init__(
        self,
        max_rate: float,
        min_rate: float = 1.0,
        decrease: float = 0.7,
        burst_s: float = 0.05,
        recover_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self._cut_to = max_rate  # the rate right after the last throttle
        self._cut_at = float("-inf")
        self._decrease = decrease
        self._burst_s = burst_s
        self._recover_s = recover_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 1.0
        self._last = clock()

    @property
    def rate(self) -> float:
        """The current rate: the ceiling, or on its way back to it after a throttle."""
        with self._lock:
            return self._rate(self._clock())

    def _rate(self, now: float) -> float:
        recovered = (now - self._cut_at) / self._recover_s * self.max_rate
        return min(self.max_rate, self._cut_to + max(0.0, recovered))

    def _burst(self, rate: float) -> float:
        return max(1.0, rate * self._burst_s)

    def acquire(self) -> None:
        """Block until this caller may send one request (callers queue in arrival order)."""
        with self._lock:
            now = self._clock()
            rate = self._rate(now)
            self._tokens = min(self._burst(rate), self._tokens + (now - self._last) * rate) - 1.0
            self._last = now
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def set_max_rate(self, max_rate: float) -> None:
        """A new ceiling (this publisher's share of the group's rate changed)."""
        with self._lock:
            now = self._clock()
            current = self._rate(now)
            self.max_rate = max(0.01, max_rate)
            self.min_rate = min(self.min_rate, self.max_rate)
            if now - self._cut_at < self._recover_s:  # still recovering from a throttle: no jump
                self._cut_to, self._cut_at = min(current, self.max_rate), now

    def throttled(self) -> None:
        with self._lock:
            now = self._clock()
            self._cut_to = max(self.min_rate, self._rate(now) * self._decrease)
            self._cut_at = now

    def succeeded(self) -> None:
        """Kept for the sender's symmetry: recovery follows time, not the number of successes."""
