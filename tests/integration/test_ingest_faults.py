"""`falcon-lake ingest` under faults: Falcon misbehaving, kill -9 of the ingestor, the broker going away.

Every case ends the same way for the user: each event of each feed exactly once in the topic, in
order, and the log says what went wrong and that the ingestor reconnected.
"""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import pytest

from emulators.falcon import Faults
from tests import processes
from tests.conftest import LocalKafka
from tests.integration.test_ingest import (
    IngestHarness,
    assert_exactly_once,
    metric_samples,
    metric_sum,
)
from tests.support import wait_for

# name: (emulator settings, the fault counter that must have hit, the log line naming the recovery)
FAULTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "disconnect": (
        {"faults": Faults(disconnect_every=700)},
        "disconnect_every",
        r"stream connection-error: feed \d: Response ended prematurely; reconnecting",
    ),
    "feed 401": (
        {"faults": Faults(feed_401_every=4, disconnect_every=1_200)},
        "feed_401_every",
        r"stream stream-401: feed \d: stream: HTTP 401 .*; reconnecting",
    ),
    "refresh 404": (
        {"rate": 1_500, "refresh_interval": 1, "session_ttl": 5.0, "faults": Faults(refresh_404=2)},
        "refresh_404",
        r"stream refresh-404: feed \d: refresh: HTTP 404 .*; reconnecting",
    ),
    "session expiry": (
        {"rate": 1_500, "faults": Faults(expire_sessions_after=1.0)},
        "expire_sessions_after",
        r"stream stream-end: feed \d: the server closed the stream; reconnecting",
    ),
    "429 with X-Ratelimit-Retryafter": (
        {"faults": Faults(rate_limit_every=5, disconnect_every=1_000)},
        "rate_limit_every",
        r"stream [a-z]+-429: .*HTTP 429 .*; reconnecting",
    ),
    "token 5xx": (
        # Tokens live 1 s and every refresh (0.9 s) and reconnect needs one: the token endpoint is asked often.
        {
            "rate": 1_500,
            "token_ttl": 1,
            "refresh_interval": 1,
            "session_ttl": 30.0,
            "faults": Faults(token_5xx_every=2, disconnect_every=800),
        },
        "token_5xx_every",
        r"stream token-503: .*token: HTTP 503 .*; reconnecting",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_event_arrives_once_through_falcon_faults_and_the_log_names_the_recovery(
    harness: IngestHarness, fault: str
) -> None:
    settings, counter, recovery = FAULTS[fault]
    events = 2_500
    emulator = harness.emulator(events=events, **settings)
    ingest = harness.start(emulator)
    harness.wait_for_count(2 * events, ingest, timeout=90)
    ingest.wait_for_log(recovery, timeout=30)  # a timed fault may strike only once the backlog is in
    assert ingest.terminate() == 0
    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    assert emulator.stats()["faults_injected"][counter] >= 1, emulator.stats()
    log = ingest.output()
    if fault == "429 with X-Ratelimit-Retryafter":
        # The epoch second Falcon names (at least 1 s after the 429) is a floor for the next attempt.
        after_429 = re.findall(r"-429: .*\n.*reconnecting in ([\d.]+)s", log)
        assert after_429 and all(float(delay) >= 0.9 for delay in after_429), after_429


@pytest.mark.slow
def test_kill_9_at_three_points_then_restart_leaves_no_gap_and_no_duplicate(harness: IngestHarness) -> None:
    per_feed = 15_000
    total = 2 * per_feed
    # Events appear at 3,000/s per feed, so the kills land while the ingestor is busy.
    emulator = harness.emulator(events=per_feed, rate=3_000)
    env = harness.env(emulator)
    ingest = harness.launch(env)
    kills = []
    for share in (0.2, 0.45, 0.7):
        harness.wait_for_count(int(total * share), ingest, timeout=60)
        ingest.kill()  # SIGKILL: no flush, no goodbye
        kills.append(harness.count())
        ingest = harness.launch(env)
    assert kills[0] < kills[1] < kills[2] < total, kills
    harness.wait_for_count(total, ingest, timeout=90)
    assert ingest.terminate() == 0
    assert_exactly_once(harness.records(), emulator, {"0": range(1, per_feed + 1), "1": range(1, per_feed + 1)})
    # Each restart resumed from what Kafka held, not from the start.
    resumed = re.findall(r"feed 0 resumes at (\d+) \(kafka last (\d+)", "".join(p.output() for p in harness.started))
    assert len(resumed) == 3 and all(int(at) == int(last) + 1 for at, last in resumed), resumed


@pytest.mark.slow
def test_broker_stopped_20s_mid_stream_then_restarted_loses_nothing_and_sigterm_without_it_exits_in_time(
    private_kafka: LocalKafka, harness: IngestHarness
) -> None:
    harness.kafka = private_kafka.bootstrap
    per_feed = 16_000
    emulator = harness.emulator(events=per_feed, rate=600)  # still producing when the broker returns
    # A small producer queue, so the outage fills it and backpressure reaches the HTTP reads.
    env = harness.env(emulator, INGEST_MAX_BUFFERED_EVENTS="2000", SHUTDOWN_TIMEOUT_SECONDS="5")
    ingest = harness.launch(env)
    harness.wait_for_count(1_000, ingest)
    private_kafka.stop()
    stopped = time.monotonic()
    time.sleep(8)
    early = metric_samples(env["METRICS_PORT"])
    time.sleep(20 - (time.monotonic() - stopped))
    late = metric_samples(env["METRICS_PORT"])
    assert ingest.alive(), ingest.output()[-3000:]
    private_kafka.start()
    assert time.monotonic() - stopped >= 20
    # The full producer queue stopped the reads instead of buffering the outage in memory.
    read = "falcon_lake_ingest_events_read_total"
    assert metric_sum(late, read) == metric_sum(early, read) < 2 * per_feed
    assert metric_sum(late, "falcon_lake_ingest_producer_queue") >= 1_900
    harness.wait_for_count(2 * per_feed, ingest, timeout=120)
    assert_exactly_once(harness.records(), emulator, {"0": range(1, per_feed + 1), "1": range(1, per_feed + 1)})

    # Now SIGTERM while the broker is away with events waiting for it: exit 0 within the timeout anyway.
    private_kafka.stop()
    emulator.add_events(300)
    wait_for(
        lambda: metric_sum(metric_samples(env["METRICS_PORT"]), read) == 2 * (per_feed + 300),
        timeout=20,
        what="the new events read",
    )
    signalled = time.monotonic()
    ingest.proc.send_signal(signal.SIGTERM)
    code = processes.wait_exit(ingest, timeout=30)
    took = time.monotonic() - signalled
    assert code == 0 and took < 5.0, f"exit {code} after {took:.2f}s\n{ingest.output()[-2500:]}"
    assert "600 events were not yet in Kafka at exit; the next start reads them again" in ingest.output()
