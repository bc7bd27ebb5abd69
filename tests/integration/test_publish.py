"""`falcon-lake publish` as a real process: the real Kafka broker, the CloudTrail Lake emulator, moto for SSM.

Events are put in the topic the way the ingestor writes them (key = feed id, the exact bytes
the Falcon stream serves, falcon.* headers, the murmur2 partition of the feed). What should
arrive is computed by running the publisher's own Converter over the same bytes; what did
arrive is read from the emulator's stored rows, the group's committed offsets, the SSM
parameter and the DLQ topic, which is what a user of the pipeline would look at.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from emulators.cloudtrail import CloudTrailEmulator, CloudTrailEmulatorConfig
from emulators.cloudtrail_validation import event_data_checksum
from emulators.falcon import FalconEmulator, FalconEmulatorConfig
from falcon_lake.dead_letter import read_dead_letter
from falcon_lake.partitioner import partition_for
from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter
from tests.processes import Process, base_env, start
from tests.support import create_topic, free_port, read_topic, wait_for

CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
PARTITIONS = 3
FEEDS = 5  # feeds "0".."4" land on partitions 2, 0, 2, 2, 1: every partition has work
BATCH = 100


@dataclass(frozen=True)
class Record:
    """A Falcon event as the ingestor puts it in the topic."""

    feed: str
    offset: int
    raw: bytes
    headers: tuple[tuple[str, bytes], ...] | None

    @property
    def partition(self) -> int:
        return partition_for(self.feed, PARTITIONS)


def falcon_records(per_feed: int, seed: int, first_offset: int = 1) -> list[Record]:
    """`per_feed` events of each feed, the exact bytes the Falcon emulator serves, in arrival order."""
    falcon = FalconEmulator(
        FalconEmulatorConfig(
            port=0, feeds=FEEDS, events=first_offset + per_feed, seed=seed, start_time=time.time() - 600
        )
    )
    records = []
    for offset in range(first_offset, first_offset + per_feed):
        for feed in falcon.feeds:
            raw = falcon.event_line(feed, offset)
            metadata = json.loads(raw)["metadata"]
            headers = (
                ("falcon.feed", feed.encode()),
                ("falcon.offset", str(offset).encode()),
                ("falcon.event_type", metadata["eventType"].encode()),
                ("falcon.cid", metadata["customerIDString"].encode()),
                ("falcon.created_ms", str(metadata["eventCreationTime"]).encode()),
            )
            records.append(Record(feed, offset, raw, headers))
    return records


def expected_ids(records: list[Record], preset: str) -> set[str]:
    """The ids the publisher must deliver: what its own Converter makes of the same bytes."""
    converter = Converter(CHANNEL_ARN, EventFilter.from_preset(preset))
    ids = set()
    for record in records:
        outcome = converter.convert(record.raw, record.feed)
        if isinstance(outcome, AuditEvent):
            ids.add(outcome.id)
    return ids


def last_offsets(records: list[Record]) -> dict[str, int]:
    last: dict[str, int] = {}
    for record in records:
        last[record.feed] = max(last.get(record.feed, 0), record.offset)
    return last


class RejectingEmulator(CloudTrailEmulator):
    """The emulator, but the events whose ids are in `reject` arrive as if addressed to another
    account, so the service itself refuses them (InvalidRecipient) while the rest pass: a
    per-event data error the converter cannot foresee."""

    def __init__(self, config: CloudTrailEmulatorConfig, reject: set[str]) -> None:
        super().__init__(config)
        self.reject = reject

    def put_audit_events(self, method: str, target: str, headers: Any, body: bytes | None, body_length: int) -> Any:
        if body:
            payload = json.loads(body)
            for entry in payload.get("auditEvents", []):
                if entry.get("id") in self.reject:
                    data = json.loads(entry["eventData"])
                    data["recipientAccountId"] = "999999999999"
                    entry["eventData"] = json.dumps(data)
                    entry["eventDataChecksum"] = event_data_checksum(entry["eventData"])
            body = json.dumps(payload).encode()
            body_length = len(body)
        return super().put_audit_events(method, target, headers, body, body_length)


class Pipeline:
    """One topic, its DLQ, one publisher group, one SSM parameter, one emulator: a test's world."""

    def __init__(
        self, bootstrap: str, moto: str, topic: str, group: str, emulator: CloudTrailEmulator, log_dir: Path
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dlq_topic = f"{topic}.dlq"
        self.group = group
        self.emulator = emulator
        self.log_dir = log_dir
        self.base_env = base_env(bootstrap, moto, topic)
        self.parameter = self.base_env["SSM_OFFSETS_PARAMETER"]
        self.ssm = boto3.session.Session().client(
            "ssm",
            region_name="us-east-1",
            endpoint_url=moto,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.processes: list[Process] = []
        self._ports: dict[int, int] = {}

    # -- the publisher -------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **self.base_env,
            "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL_ARN,
            "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": self.emulator.url,
            "KAFKA_GROUP_ID": self.group,
            "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
        }
        env.update(extra)
        return env

    def start_publisher(self, **extra: str) -> Process:
        """`falcon-lake publish`, once it is in the group."""
        env = self.env(METRICS_PORT=str(free_port()), **extra)  # each process its own port
        process = start(["publish"], env, self.log_dir)
        self.processes.append(process)
        self._ports[process.pid] = int(env["METRICS_PORT"])
        process.wait_for_log(r"assigned partitions \[", timeout=60)
        return process

    def readyz(self, process: Process) -> int:
        return requests.get(f"http://127.0.0.1:{self._ports[process.pid]}/readyz", timeout=5).status_code

    # -- the topic -------------------------------------------------------------------------------
    def produce(self, records: list[Record]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        for record in records:
            producer.produce(
                self.topic,
                key=record.feed.encode(),
                value=record.raw,
                headers=list(record.headers) if record.headers is not None else None,
                partition=record.partition,
            )
            producer.poll(0)
        assert producer.flush(30) == 0

    def end_offsets(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{self.group}-probe"})
        try:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in range(PARTITIONS)
            }
        finally:
            consumer.close()

    def committed(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            found = consumer.committed([TopicPartition(self.topic, p) for p in range(PARTITIONS)], timeout=10)
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in found}

    def reset_group_to_beginning(self) -> None:
        """What `replay` does: the group's offsets back to 0 (the group must be stopped)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        request = ConsumerGroupTopicPartitions(
            self.group, [TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)]
        )
        for future in admin.alter_consumer_group_offsets([request]).values():
            future.result(timeout=30)

    def dead_letters(self) -> list[Message]:
        return read_topic(self.bootstrap, self.dlq_topic)

    # -- what arrived ------------------------------------------------------------------------------
    def rows(self) -> Counter[str]:
        """How many times each id is stored in the emulator's lake."""
        return Counter(event.id for event in self.emulator.events())

    def wait_rows(self, ids: set[str], timeout: float = 60.0) -> Counter[str]:
        try:
            wait_for(lambda: ids <= set(self.rows()), timeout=timeout, what=f"{len(ids)} ids in the lake")
        except AssertionError as exc:
            stored = len(ids & set(self.rows()))
            raise AssertionError(f"{exc}; {stored} stored\n{self.log_tails()}") from None
        return self.rows()

    def ssm_offsets(self) -> dict[str, int]:
        value = self.ssm.get_parameter(Name=self.parameter)["Parameter"]["Value"]
        offsets: dict[str, int] = json.loads(value)
        return offsets

    def ssm_writes(self) -> int:
        history = self.ssm.get_parameter_history(Name=self.parameter, MaxResults=50)
        count = len(history["Parameters"])
        while history.get("NextToken"):
            history = self.ssm.get_parameter_history(Name=self.parameter, MaxResults=50, NextToken=history["NextToken"])
            count += len(history["Parameters"])
        return count

    def wait_committed_to_end(self, timeout: float = 30.0) -> None:
        end = self.end_offsets()
        seen: list[dict[int, int]] = [{}]

        def at_end() -> bool:
            seen[0] = self.committed()
            return seen[0] == end

        try:
            wait_for(at_end, timeout=timeout, what=f"committed offsets {end}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last committed {seen[0]}\n{self.log_tails()}") from None

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every publisher's log, to tell from a failure what each was doing."""
        return "\n".join(
            f"--- {process.log_path.name} ---\n" + "\n".join(process.output().splitlines()[-lines:])
            for process in self.processes
        )

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.kill()


@pytest.fixture
def make_pipeline(
    kafka_bootstrap: str, moto_endpoint: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    made: list[tuple[Pipeline, CloudTrailEmulator]] = []

    def make(emulator: CloudTrailEmulator | None = None, **faults: Any) -> Pipeline:
        topic = unique_name("publish")
        create_topic(kafka_bootstrap, topic, PARTITIONS)
        create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
        if emulator is None:
            emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, latency_ms="20", seed=5))
        emulator.start()
        if faults:
            emulator.set_faults(**faults)
        pipeline = Pipeline(kafka_bootstrap, moto_endpoint, topic, unique_name("group"), emulator, tmp_path / "logs")
        made.append((pipeline, emulator))
        return pipeline

    yield make
    for pipeline, emulator in made:
        pipeline.close()
        emulator.stop()


# ---- delivery ------------------------------------------------------------------------------------


def test_a_mixed_stream_ends_as_the_user_activity_subset_once_then_a_replay_sends_it_again(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    records = falcon_records(per_feed=600, seed=21)  # 3,000 events of every kind
    expected = expected_ids(records, "all-user-activity")
    assert 0 < len(expected) < len(records)  # a real mix: some delivered, some filtered
    pipeline.produce(records)
    publisher = pipeline.start_publisher(FILTER_PRESET="all-user-activity")

    rows = pipeline.wait_rows(expected)
    pipeline.wait_committed_to_end()
    assert set(rows) == expected, "only the preset's subset, with the ids the converter gives"
    assert max(rows.values()) == 1, "each event once"
    stats = pipeline.emulator.stats()
    assert stats["requests"] / len(expected) <= 0.02, f"{stats['requests']} calls for {len(expected)} events"
    assert pipeline.dead_letters() == []
    assert pipeline.readyz(publisher) == 200

    assert publisher.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(records)
    assert pipeline.committed() == pipeline.end_offsets()

    # Replay: the group's offsets back to the beginning re-deliver everything, with the same ids.
    pipeline.reset_group_to_beginning()
    assert pipeline.committed() == dict.fromkeys(range(PARTITIONS), 0)
    replay = pipeline.start_publisher(FILTER_PRESET="all-user-activity")
    wait_for(lambda: set(pipeline.rows().values()) == {2}, timeout=60, what="every id stored twice")
    pipeline.wait_committed_to_end()
    assert set(pipeline.rows()) == expected
    assert replay.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(records), "SSM never moves backwards, nor forwards past the end"


def test_per_event_throttling_and_internal_failures_are_resent_until_accepted(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(throttle_rate=0.2, internal_failure_rate=0.2)
    records = falcon_records(per_feed=400, seed=22)
    expected = expected_ids(records, "gateway")
    pipeline.produce(records)
    publisher = pipeline.start_publisher()

    rows = pipeline.wait_rows(expected)
    pipeline.wait_committed_to_end()
    assert set(rows) == expected and max(rows.values()) == 1, "nothing lost, nothing stored twice"
    failed = pipeline.emulator.stats()["events_failed_by_code"]
    assert failed.get("Throttling", 0) > 20 and failed.get("InternalFailure", 0) > 20, failed
    assert pipeline.dead_letters() == [], "retryable failures never go to the DLQ"
    assert publisher.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(records)


def test_data_errors_and_unconvertible_records_go_to_the_dlq_with_reasons_and_the_rest_arrives(
    make_pipeline: Callable[..., Pipeline], kafka_bootstrap: str
) -> None:
    records = falcon_records(per_feed=200, seed=23)
    expected = expected_ids(records, "gateway")
    refused = set(sorted(expected)[:: max(1, len(expected) // 6)][:6])
    # It rewrites bodies before the signature check, so it takes any signature.
    config = CloudTrailEmulatorConfig(port=0, latency_ms="10", seed=6, accept_any_signature=True)
    pipeline = make_pipeline(RejectingEmulator(config, refused))
    source_of = {}
    for record in records:
        outcome = Converter(CHANNEL_ARN, EventFilter.from_preset("gateway")).convert(record.raw, record.feed)
        if isinstance(outcome, AuditEvent) and outcome.id in refused:
            source_of[outcome.id] = record
    auth_headers = records[1].headers
    garbage = [
        Record("0", 90_001, b"\xff\xfe not even UTF-8", auth_headers),  # headers say: a login event
        Record("1", 90_002, b'{"metadata": {"eventType": "AuthActivityAuditEvent"}, "event": 42}', None),
        Record("4", 90_003, b"", None),
    ]
    pipeline.produce(records[:300] + garbage + records[300:])
    publisher = pipeline.start_publisher()

    rows = pipeline.wait_rows(expected - refused)
    wait_for(lambda: len(pipeline.dead_letters()) >= len(refused) + len(garbage), timeout=30, what="the DLQ")
    pipeline.wait_committed_to_end()
    assert set(rows) == expected - refused and max(rows.values()) == 1

    dead = pipeline.dead_letters()
    assert len(dead) == len(refused) + len(garbage)
    by_value = {msg.value(): msg for msg in dead}
    source = {(m.partition(), m.offset()): m for m in read_topic(kafka_bootstrap, pipeline.topic)}
    for record in garbage:
        letter = read_dead_letter(by_value[record.raw].headers())  # type: ignore[arg-type]
        assert letter.stage == "convert"
        assert letter.code in ("undecodable", "invalid-event") and letter.message
        assert (letter.source_topic, letter.source_partition) == (pipeline.topic, record.partition)
        assert source[(record.partition, letter.source_offset)].value() == record.raw
    for audit_id in refused:
        record = source_of[audit_id]
        letter = read_dead_letter(by_value[record.raw].headers())  # type: ignore[arg-type]
        assert (letter.stage, letter.code) == ("deliver", "InvalidRecipient")
        assert "recipientAccountId" in letter.message
        assert (letter.feed, letter.falcon_offset) == (record.feed, record.offset), "original headers kept"
        assert (letter.source_topic, letter.source_partition) == (pipeline.topic, record.partition)
        assert source[(record.partition, letter.source_offset)].value() == record.raw
    assert publisher.terminate() == 0


# ---- channel, crashes, groups ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_removed_channel_stops_commits_and_readiness_until_it_is_back(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline()
    first = falcon_records(per_feed=100, seed=24)
    pipeline.produce(first)
    publisher = pipeline.start_publisher()
    pipeline.wait_rows(expected_ids(first, "gateway"))
    pipeline.wait_committed_to_end()
    assert pipeline.readyz(publisher) == 200

    pipeline.emulator.set_channel_present(CHANNEL_ARN, False)
    later = falcon_records(per_feed=100, seed=24, first_offset=101)
    pipeline.produce(later)
    wait_for(lambda: pipeline.readyz(publisher) == 503, timeout=20, what="/readyz 503")
    time.sleep(1.0)  # anything finished before the channel went is committed by now
    committed, stored = pipeline.committed(), len(pipeline.emulator.events())
    time.sleep(4.0)
    assert pipeline.committed() == committed, "nothing more is committed while the channel is gone"
    assert len(pipeline.emulator.events()) == stored
    assert committed != pipeline.end_offsets(), "the new events are not committed"
    assert pipeline.readyz(publisher) == 503
    assert "CloudTrail channel unusable: ChannelNotFound" in publisher.output()

    pipeline.emulator.set_channel_present(CHANNEL_ARN, True)
    everything = expected_ids(first + later, "gateway")
    rows = pipeline.wait_rows(everything, timeout=90)
    pipeline.wait_committed_to_end()
    assert set(rows) == everything and max(rows.values()) == 1
    wait_for(lambda: pipeline.readyz(publisher) == 200, timeout=10, what="/readyz 200 again")
    assert publisher.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(first + later)


@pytest.mark.slow
@pytest.mark.parametrize("in_flight", [1, 4])
def test_kill_9_mid_batch_then_restart_delivers_everything_with_few_duplicates(
    make_pipeline: Callable[..., Pipeline], in_flight: int
) -> None:
    pipeline = make_pipeline(CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, latency_ms="60-120", seed=7)))
    records = falcon_records(per_feed=1200, seed=25)
    expected = expected_ids(records, "all-user-activity")
    pipeline.produce(records)
    settings = {"FILTER_PRESET": "all-user-activity", "MAX_IN_FLIGHT_PER_PARTITION": str(in_flight)}
    first = pipeline.start_publisher(**settings)
    wait_for(lambda: len(pipeline.emulator.events()) >= len(expected) // 3, timeout=60, what="a third delivered")
    first.kill()  # SIGKILL: requests in flight, nothing flushed
    assert len(pipeline.emulator.events()) < len(expected)

    second = pipeline.start_publisher(**settings)
    rows = pipeline.wait_rows(expected, timeout=90)
    pipeline.wait_committed_to_end()
    assert set(rows) == expected, "every event delivered"
    duplicates: Counter[int] = Counter()
    for audit_id, count in rows.items():
        duplicates[partition_for(audit_id.split("-")[1], PARTITIONS)] += count - 1
    # Re-sent after the crash: the requests in flight (the service may have stored them) and what
    # was accepted but not yet committed: at most a batch per request in flight, per partition.
    print(f"in flight {in_flight}: duplicates per partition {dict(duplicates)}")
    assert all(n <= in_flight * BATCH for n in duplicates.values()), duplicates
    assert second.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(records)


def test_two_publishers_share_the_partitions_and_one_leaving_hands_over_without_loss(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    first_wave = falcon_records(per_feed=300, seed=26)
    a = pipeline.start_publisher()
    b = pipeline.start_publisher()
    b.wait_for_log(r"assigned partitions \[\d", timeout=30)
    pipeline.produce(first_wave)
    pipeline.wait_rows(expected_ids(first_wave, "gateway"))

    def served(process: Process) -> set[int]:
        return {int(p) for p in re.findall(r"partition (\d+): \d+ accepted", process.output())}

    assert served(a) and served(b), "both publishers delivered"
    assert not served(a) & served(b), "no partition served by both"

    assert b.terminate() == 0  # drains, commits and leaves: its partitions go to a
    second_wave = falcon_records(per_feed=300, seed=26, first_offset=301)
    pipeline.produce(second_wave)
    everything = expected_ids(first_wave + second_wave, "gateway")
    rows = pipeline.wait_rows(everything)
    pipeline.wait_committed_to_end()
    assert set(rows) == everything and max(rows.values()) == 1, "handed over without loss or re-send"
    assert served(a) == set(range(PARTITIONS))
    assert a.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(first_wave + second_wave)


def test_sigterm_drains_what_was_consumed_commits_it_and_exits_0(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline(CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, latency_ms="80", seed=8)))
    records = falcon_records(per_feed=1000, seed=27)
    expected = expected_ids(records, "all-user-activity")
    pipeline.produce(records)
    # A small buffer, so that the backlog is far from consumed when SIGTERM comes.
    publisher = pipeline.start_publisher(FILTER_PRESET="all-user-activity", PUBLISH_MAX_BUFFERED_RECORDS="300")
    wait_for(lambda: len(pipeline.emulator.events()) >= 500, timeout=60, what="deliveries under way")
    assert publisher.terminate(timeout=30) == 0
    assert "stopped:" in publisher.output()
    delivered = pipeline.rows()
    assert max(delivered.values()) == 1
    assert len(delivered) < len(expected), "stopped before the end of the backlog"

    # What the drained publisher committed is exactly what it delivered: the next one re-sends nothing.
    restarted = pipeline.start_publisher(FILTER_PRESET="all-user-activity")
    rows = pipeline.wait_rows(expected)
    pipeline.wait_committed_to_end()
    assert set(rows) == expected and max(rows.values()) == 1
    assert restarted.terminate() == 0


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": ""}, "CLOUDTRAIL_LAKE_CHANNEL_ARN"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": "arn:aws:cloudtrail:us-east-1:1234:channel/x"}, "CLOUDTRAIL_LAKE_CHANNEL_ARN"),
        ({"BATCH_MAX_EVENTS": "500"}, "BATCH_MAX_EVENTS"),
        ({"FILTER_PRESET": "everything"}, "FILTER_PRESET"),
        ({"FILTER_EVENT_TYPES": "DetectionSummaryEvent"}, "FILTER_EVENT_TYPES"),
        ({"KAFKA_SECURITY": "tls", "KAFKA_TLS_CA_FILE": "/nonexistent/ca.pem"}, "KAFKA_"),
        ({"MAX_IN_FLIGHT_PER_PARTITION": "many"}, "MAX_IN_FLIGHT_PER_PARTITION"),
    ],
)
def test_a_configuration_error_is_one_line_naming_the_variable_and_exit_2(
    kafka_bootstrap: str, moto_endpoint: str, tmp_path: Path, change: dict[str, str], named: str
) -> None:
    env = {
        **base_env(kafka_bootstrap, moto_endpoint, "publish-config"),
        "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL_ARN,
        **change,
    }
    process = start(["publish"], env, tmp_path)
    assert process.wait(30) == 2
    lines = process.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("falcon-lake publish: ") and named in lines[0]


# ---- SSM write rate ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ssm_is_written_at_most_once_per_interval_under_steady_load(make_pipeline: Callable[..., Pipeline]) -> None:
    # The old gateway wrote SSM per event. With SSM_WRITE_INTERVAL_SECONDS at 1 s instead of the default
    # 5 s, 15 s of steady load shows the same bound as a minute at the default: one write per interval.
    pipeline = make_pipeline()
    records = falcon_records(per_feed=1200, seed=28)  # 6,000 events: 400/s for 15 s
    expected = expected_ids(records, "gateway")
    publisher = pipeline.start_publisher(SSM_WRITE_INTERVAL_SECONDS="1")
    started = time.monotonic()
    for second in range(15):
        pipeline.produce(records[second * 400 : (second + 1) * 400])
        time.sleep(max(0.0, started + second + 1 - time.monotonic()))
    rows = pipeline.wait_rows(expected)
    pipeline.wait_committed_to_end()
    elapsed = time.monotonic() - started
    assert set(rows) == expected and max(rows.values()) == 1
    writes = pipeline.ssm_writes()
    metric = requests.get(f"http://127.0.0.1:{pipeline._ports[publisher.pid]}/metrics", timeout=5).text
    reported = float(re.search(r"^falcon_lake_publish_ssm_writes_total (\S+)$", metric, re.M).group(1))  # type: ignore[union-attr]
    assert reported == writes
    assert 3 <= writes <= elapsed + 1, f"{writes} SSM writes in {elapsed:.0f}s"
    # Written every interval, not per event: it catches up with the last offsets by itself.
    wait_for(lambda: pipeline.ssm_offsets() == last_offsets(records), timeout=10, what="SSM at the last offsets")
    assert publisher.terminate() == 0
