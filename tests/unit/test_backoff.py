"""The one retry backoff every loop uses: doubling, capped, jittered, with the server's hint as a floor."""

from __future__ import annotations

import random

from falcon_lake.backoff import Backoff, backoff_delay


def test_each_delay_lies_between_half_and_all_of_its_doubling_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (5, 5.0), (40, 5.0)]:
        delays = [backoff_delay(attempt, 0.2, 5.0, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10  # jittered, so many clients spread out


def test_backoff_doubles_until_the_cap_and_starts_again_after_reset() -> None:
    backoff = Backoff(base_s=1, cap_s=8, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(6)]
    assert [0.5 <= delays[0] <= 1, 1 <= delays[1] <= 2, 2 <= delays[2] <= 4] == [True, True, True]
    assert all(4 <= d <= 8 for d in delays[3:])
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_a_servers_retry_hint_is_a_floor_never_a_ceiling() -> None:
    backoff = Backoff(base_s=1, cap_s=8, rng=random.Random(1))
    assert backoff.next_delay(retry_after=30.0) == 30.0
    assert backoff.next_delay(retry_after=0.1) >= 1.0
