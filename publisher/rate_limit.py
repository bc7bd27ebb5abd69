"""A client-side request rate limit that backs off when CloudTrail throttles and recovers slowly.

PutAuditEvents allows 100 requests/s per account and region, not adjustable; staying a
little under it (default 90/s) avoids throttling in the first place. On a throttle the
rate is cut multiplicatively; every success adds back a little (AIMD), up to the ceiling.
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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.rate = max_rate
        self._decrease = decrease
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = clock()

    def acquire(self) -> None:
        """Block until this caller may send one request."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.rate
        wait = slot - now
        if wait > 0:
            self._sleep(wait)

    def throttled(self) -> None:
        with self._lock:
            self.rate = max(self.min_rate, self.rate * self._decrease)

    def succeeded(self) -> None:
        with self._lock:
            if self.rate < self.max_rate:
                self.rate = min(self.max_rate, self.rate + max(0.05, self.max_rate * 0.005))
