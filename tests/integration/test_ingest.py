"""`falcon-lake ingest` as a real process, against the Falcon emulator and a real Kafka broker.

What a user of the ingestor relies on: every event of every feed in the topic exactly once, in
order per feed, keyed by feed, byte for byte as Falcon sent it, with the falcon.* headers;
undecodable lines in the DLQ with the reason; the old gateway's SSM offsets honoured; a clean
SIGTERM; one clear line for a bad setting; no secret in the log; metrics and health endpoints.
Faults, kill -9 and a broker outage are in test_ingest_faults.py (helpers shared from here).
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from emulators.falcon import FalconEmulator, FalconEmulatorConfig, Faults
from falcon_lake.headers import as_bytes_pairs
from tests import processes
from tests.processes import Process
from tests.support import read_topic, wait_for

SECRET = "s3cr3t-XYZ-4f1c8a27d9e6b350"
APP_ID = "falconlaketest"
HEADERS = ("falcon.feed", "falcon.offset", "falcon.event_type", "falcon.cid", "falcon.created_ms")


# -- harness ---------------------------------------------------------------------------------------


@dataclass
class IngestHarness:
    """One test's world: its topic, emulators started in this process, ingestor processes."""

    kafka: str
    moto: str
    topic: str
    log_dir: Path
    emulators: list[FalconEmulator] = field(default_factory=list)
    started: list[Process] = field(default_factory=list)
    _counter: tuple[str, Consumer] | None = None

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def ssm_parameter(self) -> str:
        return f"/{self.topic}/last_seen_offsets"

    def emulator(self, **config: Any) -> FalconEmulator:
        """A Falcon emulator on a free port: 2 feeds, appId held 0.5 s after a drop, our secret."""
        config.setdefault("port", 0)
        config.setdefault("feeds", 2)
        config.setdefault("hold_seconds", 0.5)
        config.setdefault("client_secret", SECRET)
        emulator = FalconEmulator(FalconEmulatorConfig(**config)).start()
        self.emulators.append(emulator)
        return emulator

    def env(self, emulator: FalconEmulator | None, **overrides: str) -> dict[str, str]:
        env = processes.base_env(self.kafka, self.moto, self.topic)
        env.update(
            {
                "FALCON_CLIENT_ID": "demo",
                "FALCON_CLIENT_SECRET": SECRET,
                "FALCON_APPLICATION_ID": APP_ID,
                "SHUTDOWN_TIMEOUT_SECONDS": "10",
            }
        )
        if emulator is not None:
            env["FALCON_CLOUD_REGION"] = emulator.url
        env.update(overrides)
        return env

    def start(self, emulator: FalconEmulator | None, **overrides: str) -> Process:
        return self.launch(self.env(emulator, **overrides))

    def launch(self, env: dict[str, str]) -> Process:
        process = processes.start(["ingest"], env, self.log_dir)
        self.started.append(process)
        return process

    def count(self, topic: str | None = None) -> int:
        if self._counter is None or self._counter[0] != self.kafka:
            # One client for every poll: waiting loops ask often, and a new client per ask is slow.
            self._counter = (self.kafka, Consumer({"bootstrap.servers": self.kafka, "group.id": "ingest-test-size"}))
        return topic_size(self.kafka, topic or self.topic, self._counter[1])

    def wait_for_count(self, expected: int, process: Process | None = None, timeout: float = 60.0) -> int:
        """Wait until the topic holds at least `expected` records (failing early if the ingestor died)."""

        def reached() -> int:
            if process is not None and not process.alive():
                raise AssertionError(f"the ingestor exited ({process.proc.returncode}):\n{process.output()[-3000:]}")
            size = self.count()
            return size if size >= expected else 0

        counted: int = wait_for(reached, timeout=timeout, interval=0.1, what=f"{expected} records in {self.topic}")
        return counted

    def records(self, topic: str | None = None) -> list[Message]:
        """Every record of the topic (call once the ingestor has stopped)."""
        return read_topic(self.kafka, topic or self.topic, expected=None, timeout=60)


@contextlib.contextmanager
def ingest_harness(kafka: str, moto: str, topic: str, log_dir: Path) -> Iterator[IngestHarness]:
    """An IngestHarness whose processes, emulators and topics are gone afterwards."""
    world = IngestHarness(kafka, moto, topic, log_dir)
    try:
        yield world
    finally:
        for process in world.started:
            process.kill()
        for emulator in world.emulators:
            emulator.stop()
        if world._counter is not None:
            world._counter[1].close()
        # The broker may be shared with other engineers: leave nothing behind (a private one goes whole).
        if world.kafka == kafka:
            deleting = AdminClient({"bootstrap.servers": kafka, "socket.timeout.ms": 5000})
            for future in deleting.delete_topics([world.topic, world.dlq_topic], operation_timeout=5).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=10)


# -- reading what arrived -----------------------------------------------------------------------------


def topic_size(bootstrap: str, topic: str, consumer: Consumer | None = None) -> int:
    """Records in a topic that started empty: the sum of its partitions' high watermarks (0 if absent)."""
    own = consumer is None
    client = consumer or Consumer({"bootstrap.servers": bootstrap, "group.id": "ingest-test-size"})
    try:
        metadata = client.list_topics(topic, timeout=10)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return 0
        return sum(
            client.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in described.partitions
        )
    except KafkaException:
        return 0
    finally:
        if own:
            client.close()


def header_map(msg: Message) -> dict[str, bytes]:
    return dict(as_bytes_pairs(msg.headers()))


def falcon_offsets_by_feed(records: list[Message]) -> dict[str, list[int]]:
    """Per feed (record key), the Falcon offsets in the order Kafka holds them (one partition per feed)."""
    by_feed: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for msg in records:
        feed = (msg.key() or b"").decode()
        by_feed[feed].append((msg.partition() or 0, msg.offset() or 0, int(header_map(msg)["falcon.offset"])))
    result: dict[str, list[int]] = {}
    for feed, items in by_feed.items():
        partitions = {p for p, _, _ in items}
        assert len(partitions) == 1, f"feed {feed} is spread over partitions {sorted(partitions)}"
        result[feed] = [offset for _, _, offset in sorted(items)]
    return result


def describe_mismatch(feed: str, got: list[int], want: range) -> str:
    """A short account of how a feed's offsets differ from the expected run (lists can be 30k long)."""
    seen: dict[int, int] = defaultdict(int)
    for offset in got:
        seen[offset] += 1
    missing = [o for o in want if o not in seen]
    duplicates = sorted(o for o, n in seen.items() if n > 1)
    extra = sorted(o for o in seen if o not in want)
    out_of_order = next((i for i in range(1, len(got)) if got[i] <= got[i - 1]), None)
    return (
        f"feed {feed}: {len(got)} records, expected {len(want)} ({want.start}..{want.stop - 1}); "
        f"missing {missing[:10]}{'...' if len(missing) > 10 else ''} ({len(missing)}), "
        f"duplicated {duplicates[:10]} ({len(duplicates)}), unexpected {extra[:10]} ({len(extra)}), "
        f"first out of order at index {out_of_order}"
    )


def assert_exactly_once(
    records: list[Message], emulator: FalconEmulator, expected: dict[str, range], check_bytes: bool = True
) -> None:
    """Each feed holds exactly its expected offsets, in order, once, keyed by feed, with the served bytes."""
    got = falcon_offsets_by_feed(records)
    assert sorted(got) == sorted(expected), f"feeds in the topic: {sorted(got)}, expected {sorted(expected)}"
    for feed, want in expected.items():
        assert got[feed] == list(want), describe_mismatch(feed, got[feed], want)
    if check_bytes:
        for msg in records:
            headers = header_map(msg)
            feed = headers["falcon.feed"].decode()
            assert msg.key() == feed.encode()
            offset = int(headers["falcon.offset"])
            assert msg.value() == emulator.event_line(feed, offset), f"bytes of feed {feed} offset {offset} differ"


def stopped_positions(process: Process) -> dict[str, int]:
    """The next offsets the ingestor logged when it stopped cleanly."""
    match = re.search(r"stopped in [0-9.]+s; next offsets (\{.*\})", process.output())
    assert match is not None, f"no 'stopped in ...; next offsets' line:\n{process.output()[-2000:]}"
    positions: dict[str, int] = ast.literal_eval(match.group(1))
    return positions


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_samples(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def hold_app_id(emulator: FalconEmulator) -> requests.Response:
    """Open a stream of APP_ID as 'another consumer' would (at the newest offset, so it stays idle)."""
    http = requests.Session()
    token = http.post(f"{emulator.url}/oauth2/token", data={"client_id": "demo", "client_secret": SECRET}, timeout=5)
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    found = http.get(
        f"{emulator.url}/sensors/entities/datafeed/v2", params={"appId": APP_ID}, headers=bearer, timeout=5
    )
    resource = found.json()["resources"][0]
    stream = http.get(
        f"{resource['dataFeedURL']}&whence=2",
        headers={"Authorization": f"Token {resource['sessionToken']['token']}"},
        stream=True,
        timeout=5,
    )
    assert stream.status_code == 200
    return stream


# -- the contract -----------------------------------------------------------------------------------


def test_every_event_of_two_feeds_arrives_once_in_order_with_exact_bytes_and_headers(harness: IngestHarness) -> None:
    events = 2_000
    emulator = harness.emulator(events=events)
    ingest = harness.start(emulator)
    ingest.wait_for_log(r"feed 0: connected at offset 0")
    harness.wait_for_count(2 * events, ingest)
    assert ingest.terminate() == 0

    records = harness.records()
    assert_exactly_once(records, emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    for msg in records:
        headers = header_map(msg)
        assert set(HEADERS) <= set(headers), f"headers {sorted(headers)}"
        metadata = json.loads(msg.value() or b"")["metadata"]
        assert headers["falcon.event_type"].decode() == metadata["eventType"]
        assert headers["falcon.cid"].decode() == metadata["customerIDString"] == emulator.cid
        assert int(headers["falcon.created_ms"]) == metadata["eventCreationTime"]
        assert int(headers["falcon.offset"]) == metadata["offset"]
    assert len({header_map(m)["falcon.event_type"] for m in records}) > 3  # the mix really has several types
    assert harness.count(harness.dlq_topic) == 0
    assert emulator.stats()["streams_opened"] == 2  # one connection per feed, nothing re-read


def test_malformed_lines_go_to_the_dlq_with_their_reason_and_every_good_event_arrives(harness: IngestHarness) -> None:
    events = 1_500
    emulator = harness.emulator(events=events, faults=Faults(malformed_every=100))
    ingest = harness.start(emulator)
    harness.wait_for_count(2 * events, ingest)
    assert ingest.terminate() == 0

    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    served_bad = emulator.stats()["malformed_served"]
    assert sum(served_bad.values()) >= 25
    dead = harness.records(harness.dlq_topic)
    assert len(dead) == sum(served_bad.values())
    per_feed: dict[str, int] = defaultdict(int)
    for msg in dead:
        headers = header_map(msg)
        feed = headers["falcon.feed"].decode()
        per_feed[feed] += 1
        assert headers["dlq.stage"] == b"ingest"
        assert headers["dlq.error_code"] == b"undecodable"
        assert headers["dlq.error_message"].startswith(b"invalid JSON")
        last_good = int(headers["dlq.last_good_offset"])
        # The emulator's malformed line is the first half of the event that follows it.
        line = emulator.event_line(feed, last_good + 1)
        assert msg.value() == line[: len(line) // 2].decode("utf-8", "ignore").encode()
    assert dict(per_feed) == {f: n for f, n in served_bad.items() if n}
    assert "undecodable line after offset" in ingest.output()


def test_first_start_resumes_after_the_old_gateways_ssm_offset(harness: IngestHarness) -> None:
    ssm = boto3.client("ssm", endpoint_url=harness.moto, region_name="us-east-1")
    ssm.put_parameter(Name=harness.ssm_parameter, Value="{'0': 1234}", Type="String")
    events = 2_000
    emulator = harness.emulator(events=events)
    ingest = harness.start(emulator)
    ingest.wait_for_log(r"feed 0 resumes at 1235 \(kafka last None, ssm last 1234")
    harness.wait_for_count((events - 1234) + events, ingest)
    assert ingest.terminate() == 0
    # Feed 0 starts right after the gateway's offset; feed 1, unknown to it, from the earliest event.
    assert_exactly_once(harness.records(), emulator, {"0": range(1235, events + 1), "1": range(1, events + 1)})


def test_sigterm_exits_0_within_the_shutdown_timeout_with_everything_read_in_the_topic(
    harness: IngestHarness,
) -> None:
    emulator = harness.emulator(events=100_000, rate=1_500)  # never finishes during the test
    ingest = harness.start(emulator, SHUTDOWN_TIMEOUT_SECONDS="5")
    harness.wait_for_count(2_000, ingest)
    signalled = time.monotonic()
    ingest.proc.send_signal(signal.SIGTERM)
    code = processes.wait_exit(ingest, timeout=15)
    took = time.monotonic() - signalled
    assert code == 0, ingest.output()[-2000:]
    assert took < 5.0, f"exit took {took:.1f}s"
    assert "received SIGTERM" in ingest.output()
    positions = stopped_positions(ingest)
    assert positions["0"] > 500 and positions["1"] > 500
    # Everything read before the signal is in the topic: exactly offsets 1 .. next - 1 of each feed.
    assert_exactly_once(harness.records(), emulator, {f: range(1, n) for f, n in positions.items()}, check_bytes=False)
    wait_for(lambda: emulator.stats()["streams_active"] == 0, timeout=5, what="the streams closed")


def test_app_id_held_by_another_connection_waits_not_ready_then_proceeds_when_released(
    harness: IngestHarness,
) -> None:
    events = 1_000
    emulator = harness.emulator(events=events)
    other = hold_app_id(emulator)
    env = harness.env(emulator)
    ops = f"http://127.0.0.1:{env['METRICS_PORT']}"
    ingest = harness.launch(env)
    ingest.wait_for_log(r"stream appid-held: .*another consumer holds it.*waiting for it to be released; reconnecting")
    assert get(f"{ops}/readyz") == (503, "not connected to Falcon\n")
    assert get(f"{ops}/healthz")[0] == 200
    assert harness.count() == 0
    other.close()  # the other consumer lets go; the emulator keeps the appId 0.5 s more
    harness.wait_for_count(2 * events, ingest, timeout=60)
    wait_for(lambda: get(f"{ops}/readyz") == (200, "streaming\n"), timeout=10, what="/readyz 200")
    assert ingest.terminate() == 0
    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    assert emulator.stats()["empty_discoveries"] >= 1


CONFIG_ERRORS: dict[str, tuple[dict[str, str], str]] = {
    "no client id": ({"FALCON_CLIENT_ID": ""}, "FALCON_CLIENT_ID"),
    "no client secret": ({"FALCON_CLIENT_SECRET": ""}, "FALCON_CLIENT_SECRET"),
    "unknown cloud": ({"FALCON_CLOUD_REGION": "mars-1"}, "FALCON_CLOUD_REGION"),
    "bad app id": ({"FALCON_APPLICATION_ID": "has spaces!"}, "FALCON_APPLICATION_ID"),
    "bad start": ({"EVENTS_START": "yesterday"}, "EVENTS_START"),
    "bad metrics port": ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    "bad kafka security": ({"KAFKA_SECURITY": "sasl"}, "KAFKA_SECURITY"),
    "bad shutdown timeout": ({"SHUTDOWN_TIMEOUT_SECONDS": "soon"}, "SHUTDOWN_TIMEOUT_SECONDS"),
    "missing secret": (
        {"FALCON_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"},
        "FALCON_SECRET_ARN",
    ),
}


def test_each_configuration_error_is_one_line_naming_the_variable_and_exit_2(harness: IngestHarness) -> None:
    started = {
        case: harness.launch({**harness.env(None, FALCON_CLOUD_REGION="http://127.0.0.1:9"), **overrides})
        for case, (overrides, _) in CONFIG_ERRORS.items()
    }
    for case, process in started.items():
        variable = CONFIG_ERRORS[case][1]
        code = processes.wait_exit(process, timeout=60)
        lines = [line for line in process.output().splitlines() if line.strip()]
        assert code == 2, f"{case}: exit {code}\n{process.output()}"
        assert len(lines) == 1, f"{case}: expected one line, got:\n{process.output()}"
        assert lines[0].startswith("falcon-lake ingest: ") and variable in lines[0], f"{case}: {lines[0]}"
        assert SECRET not in lines[0]


def test_secret_never_logged_even_at_debug_and_metrics_health_ready_answer(harness: IngestHarness) -> None:
    events = 2_500
    # Reconnects (disconnects, a refused feed) exercise the error paths that log the most.
    emulator = harness.emulator(events=events, faults=Faults(disconnect_every=900, feed_401_every=4))
    env = harness.env(emulator, LOG_LEVEL="DEBUG")
    ingest = harness.launch(env)
    harness.wait_for_count(2 * events, ingest)
    port = env["METRICS_PORT"]
    ops = f"http://127.0.0.1:{port}"

    def caught_up() -> bool:
        samples = metric_samples(port)
        return all(
            metric_sum(samples, "falcon_lake_ingest_events_produced_total", feed=f) == events for f in ("0", "1")
        )

    wait_for(caught_up, timeout=10, what="events_produced to count every event")
    samples = metric_samples(port)
    for feed in ("0", "1"):
        assert metric_sum(samples, "falcon_lake_ingest_events_read_total", feed=feed) == events
        assert metric_sum(samples, "falcon_lake_ingest_last_offset", feed=feed) == events
        assert metric_sum(samples, "falcon_lake_ingest_bytes_produced_total", feed=feed) == sum(
            len(emulator.event_line(feed, o)) for o in range(1, events + 1)
        )
    auth_read = metric_sum(samples, "falcon_lake_ingest_events_read_total", type="AuthActivityAuditEvent")
    assert 0 < auth_read < 2 * events
    assert metric_sum(samples, "falcon_lake_ingest_reconnects_total", cause="connection-error") >= 2
    assert metric_sum(samples, "falcon_lake_ingest_reconnects_total", cause="stream-401") >= 1
    assert metric_sum(samples, "falcon_lake_ingest_api_requests_total", kind="token", status="201") >= 1
    assert get(f"{ops}/healthz") == (200, "ok\n")
    # Ready again once reconnected (a refused feed open may just have ended a session).
    wait_for(lambda: get(f"{ops}/readyz") == (200, "streaming\n"), timeout=10, what="/readyz 200")
    assert get(f"{ops}/nothing")[0] == 404
    assert ingest.terminate() == 0

    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    log = ingest.output()
    assert " DEBUG " in log  # the level really was DEBUG
    assert SECRET not in log
    assert "stream connection-error" in log and "stream stream-401" in log


def test_credentials_from_a_secrets_manager_secret(harness: IngestHarness) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=harness.moto, region_name="us-east-1")
    arn = secrets.create_secret(
        Name=f"{harness.topic}-falcon", SecretString=json.dumps({"client_id": "demo", "client_secret": SECRET})
    )["ARN"]
    events = 500
    emulator = harness.emulator(events=events)
    ingest = harness.start(emulator, FALCON_CLIENT_ID="", FALCON_CLIENT_SECRET="", FALCON_SECRET_ARN=arn)
    harness.wait_for_count(2 * events, ingest)
    assert ingest.terminate() == 0
    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1), "1": range(1, events + 1)})
    assert emulator.stats()["token_failures"] == 0
    assert SECRET not in ingest.output()
