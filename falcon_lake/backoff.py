"""Retry backoff: exponential, capped, with jitter. The one policy every retry loop uses (the
ingestor's reconnects, the CloudTrail sender's re-sends, the SSM offset store's reads).

The delay before retry `attempt` (0 for the first) is drawn from [ceiling / 2, ceiling] where
ceiling = min(cap, base * 2**attempt): "equal jitter", so retries of many processes spread out
yet never come back sooner than half the ceiling. A server's own hint (Retry-After) is a floor.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `attempt` (0, 1, 2, ...); at most cap_s."""
    ceiling = min(cap_s, base_s * 2 ** min(max(attempt, 0), 32))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Backoff:
    """The delays of one retry loop: each `next_delay` doubles the ceiling up to `cap_s`;
    `reset` after a success starts again from `base_s`."""

    def __init__(self, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The next delay, never below `retry_after` (the server's hint) when one is given."""
        delay = backoff_delay(self.attempt, self.base_s, self.cap_s, self._rng)
        self.attempt = min(self.attempt + 1, 32)
        return max(delay, retry_after or 0.0)

    def reset(self) -> None:
        self.attempt = 0
