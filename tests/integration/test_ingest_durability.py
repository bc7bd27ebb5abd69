"""What a failed produce, a changed partition count or a redrive must not do to the ingestor's resume point.

Real broker throughout: a topic whose max.message.bytes is smaller than an event, the
idempotent producer with its gapless guarantee, a topic given more partitions, and a DLQ
redrive larger than the resume scan window.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)

from emulators.falcon import Faults
from falcon_lake.dead_letter import dlq_headers
from falcon_lake.ops import dlq
from falcon_lake.partitioner import partition_for
from ingestor import resume
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent
from ingestor.resume import check_partition_count, last_offset_in_topic, resume_points
from ingestor.sink import KafkaEventSink
from tests.integration.test_ingest import IngestHarness, assert_exactly_once, falcon_offsets_by_feed, header_map
from tests.support import create_topic, read_topic, wait_for

CID = "0123456789abcdef0123456789abcdef"
TOPIC_LIMIT = 20_000


def _event(offset: int, padding: int = 0) -> bytes:
    event: dict[str, object] = {
        "metadata": {
            "customerIDString": CID,
            "offset": offset,
            "eventType": "AuthActivityAuditEvent",
            "eventCreationTime": 1_732_608_000_000 + offset,
            "version": "1.0",
        },
        "event": {"UserId": f"user{offset}@example.com", "OperationName": "userAuthenticate"},
    }
    if padding:
        # Random bytes do not compress: the record stays over the topic's limit once compressed.
        event["event"]["Attributes"] = {"blob": base64.b64encode(os.urandom(padding)).decode()}  # type: ignore[index]
    return json.dumps(event).encode()


def _event_file(path: Path, count: int, big: int) -> Path:
    path.write_bytes(b"".join(_event(o, 40_000 if o == big else 0) + b"\n" for o in range(1, count + 1)))
    return path


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "durability-test", "enable.auto.commit": False})


# -- a produce the topic refuses --------------------------------------------------------------------


def test_an_event_over_the_topics_max_message_bytes_goes_to_the_dlq_and_no_offset_is_skipped(
    harness: IngestHarness, tmp_path: Path
) -> None:
    create_topic(harness.kafka, harness.topic, partitions=1, config={"max.message.bytes": str(TOPIC_LIMIT)})
    events, big = 400, 200
    emulator = harness.emulator(feeds=1, from_file=_event_file(tmp_path / "events.ndjson", events, big))
    ingest = harness.start(emulator)
    harness.wait_for_count(events - 1, ingest)
    wait_for(lambda: harness.count(harness.dlq_topic) == 1, what="the big event in the DLQ")
    assert ingest.alive()
    assert ingest.terminate() == 0

    assert falcon_offsets_by_feed(harness.records()) == {"0": [o for o in range(1, events + 1) if o != big]}
    [dead] = harness.records(harness.dlq_topic)
    headers = header_map(dead)
    assert headers["falcon.offset"] == str(big).encode() and headers["dlq.error_code"] == b"too_large"
    assert "larger than Kafka accepts" in headers["dlq.error_message"].decode()
    assert f"takes records up to {TOPIC_LIMIT} bytes" in ingest.output()


def test_a_produce_the_broker_refuses_mid_run_stops_the_sink_with_no_later_event_in_kafka(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """The producer's own size check is off here, so the broker refuses the record: the gapless
    guarantee and the purge leave only a contiguous prefix, and resume starts at or below the failed event."""
    topic = unique_name("gapless")
    create_topic(kafka_bootstrap, topic, partitions=1, config={"max.message.bytes": str(TOPIC_LIMIT)})
    create_topic(kafka_bootstrap, f"{topic}.dlq", partitions=1)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "enable.idempotence": True,
            "enable.gapless.guarantee": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 10_000,
            "message.timeout.ms": 0,
            "error_cb": lambda _err: None,  # as the ingestor's client_config
        }
    )
    stop = threading.Event()
    sink = KafkaEventSink(producer, topic, f"{topic}.dlq", 1, IngestorMetrics(), stop)
    events, big = 3_000, 1_500
    for offset in range(1, events + 1):
        raw = _event(offset, 40_000 if offset == big else 0)
        try:
            sink.send("0", FalconEvent(raw, offset, "AuthActivityAuditEvent", CID, None))
        except Exception:
            break  # the sink refuses once the producer has failed
        sink.poll(0)

    def failed() -> bool:
        sink.poll(0.1)
        return sink.fatal is not None

    wait_for(failed, timeout=60, what="the failure")
    assert stop.is_set()
    assert sink.fatal is not None and sink.fatal.code() == KafkaError._GAPLESS_GUARANTEE, sink.fatal
    sink.discard_unsent()

    offsets = falcon_offsets_by_feed(read_topic(kafka_bootstrap, topic, expected=None))
    got = offsets.get("0", [])
    assert got == list(range(1, len(got) + 1)), "a gap below the last event in Kafka"
    assert len(got) < big, f"events after the refused offset {big} reached Kafka: {got[-3:]}"
    consumer = _consumer(kafka_bootstrap)
    try:
        points = resume_points(consumer, topic, 1, ["0"], {}, "earliest")
    finally:
        consumer.close()
    assert points["0"].offset is not None and points["0"].offset <= big


# -- the partition count ----------------------------------------------------------------------------


def test_more_partitions_than_the_records_were_written_for_stops_the_ingestor_with_one_line(
    harness: IngestHarness,
) -> None:
    create_topic(harness.kafka, harness.topic, partitions=2)
    emulator = harness.emulator(events=300)
    first = harness.start(emulator)
    harness.wait_for_count(600, first)
    assert first.terminate() == 0
    assert {header_map(m)["falcon.partitions"] for m in harness.records()} == {b"2"}

    admin = AdminClient({"bootstrap.servers": harness.kafka})
    for future in admin.create_partitions([NewPartitions(harness.topic, 3)]).values():
        future.result(timeout=30)
    wait_for(lambda: len(admin.list_topics(harness.topic, timeout=10).topics[harness.topic].partitions) == 3)

    second = harness.start(emulator)
    assert second.wait(60) == 2
    [line] = [line for line in second.output().splitlines() if line.startswith("falcon-lake ingest:")]
    assert f"topic {harness.topic} has 3 partitions but its records were written when it had 2" in line
    assert "Never add partitions to the raw topic" in line
    assert "Traceback" not in second.output()
    assert harness.count() == 600  # nothing written by the refused start


def test_watermarks_wait_for_a_partition_whose_leader_is_not_known_yet(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    # The ingestor reads watermarks right after creating its topic, before every broker knows the
    # new partitions' leader (seen: NOT_LEADER_FOR_PARTITION): that is waited out, not a failed start.
    topic = unique_name("leaderless")
    consumer = _consumer(kafka_bootstrap)
    try:
        with pytest.raises(KafkaException, match=r"Unknown partition|Unknown topic"):
            resume.watermarks(consumer, topic, 0, timeout_s=2)
        later = threading.Timer(1.5, create_topic, args=(kafka_bootstrap, topic, 2))
        later.start()
        try:
            assert resume.watermarks(consumer, topic, 1, timeout_s=30) == (0, 0)
        finally:
            later.join()
    finally:
        consumer.close()


def test_check_partition_count_passes_records_without_the_header_and_an_empty_topic(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("counts")
    create_topic(kafka_bootstrap, topic, partitions=2)
    consumer = _consumer(kafka_bootstrap)
    try:
        check_partition_count(consumer, topic, 2)  # empty: nothing to compare
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topic, b"old", key=b"0", partition=0, headers=[("falcon.feed", b"0")])
        producer.produce(topic, b"new", key=b"1", partition=1, headers=[("falcon.partitions", b"2")])
        assert producer.flush(30) == 0
        check_partition_count(consumer, topic, 2)
        producer.produce(topic, b"moved", key=b"1", partition=1, headers=[("falcon.partitions", b"1")])
        assert producer.flush(30) == 0
        with pytest.raises(resume.PartitionCountChanged, match=r"has 2 partitions but .* when it had 1"):
            check_partition_count(consumer, topic, 2)
    finally:
        consumer.close()


# -- a redrive at the tail ---------------------------------------------------------------------------


def test_resume_passes_over_a_redrive_larger_than_its_scan_window(
    kafka_bootstrap: str, unique_name: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_name("redriven")
    dlq_topic = f"{topic}.dlq"
    partitions, feed = 3, "0"
    create_topic(kafka_bootstrap, topic, partitions=partitions)
    create_topic(kafka_bootstrap, dlq_topic, partitions=1)
    partition = partition_for(feed, partitions)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})

    def falcon_headers(offset: int) -> list[tuple[str, bytes]]:
        return [
            ("falcon.feed", feed.encode()),
            ("falcon.offset", b"%d" % offset),
            ("falcon.event_type", b"AuthActivityAuditEvent"),
            ("falcon.cid", CID.encode()),
            ("falcon.partitions", b"%d" % partitions),
        ]

    last_ingested = 5_000
    for offset in range(4_001, last_ingested + 1):  # what the ingestor wrote
        producer.produce(topic, _event(offset), key=feed.encode(), partition=partition, headers=falcon_headers(offset))
    redriven = resume.SCAN_WINDOW + 500
    for offset in range(1, redriven + 1):  # what publishers dead-lettered long ago
        headers = dlq_headers("deliver", "InvalidData", "rejected", falcon_headers(offset), topic, partition, offset)
        producer.produce(dlq_topic, _event(offset), key=feed.encode(), headers=headers)
        if offset % 1_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0

    env: Mapping[str, str] = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    env = {**env, "KAFKA_DLQ_TOPIC": dlq_topic, "KAFKA_GROUP_ID": unique_name("publisher")}
    assert dlq.main(["redrive", "--execute"], env) == 0
    assert f"re-sent {redriven} of {redriven}" in capsys.readouterr().out

    records = read_topic(kafka_bootstrap, topic, expected=None, timeout=60)
    tail = [header_map(m) for m in records][-redriven:]
    assert all("falcon.redriven_from" in h and h["falcon.feed"] == b"0" for h in tail)  # publishers see them
    consumer = _consumer(kafka_bootstrap)
    try:
        assert last_offset_in_topic(consumer, topic, partition, feed) == last_ingested
        points = resume_points(consumer, topic, partitions, [feed], {feed: 4_500}, "earliest")
        check_partition_count(consumer, topic, partitions)  # the redrive wrote the count it used
    finally:
        consumer.close()
    assert points[feed].offset == last_ingested + 1 and points[feed].source == "kafka"


# -- a clean end without a final newline ------------------------------------------------------------


def test_streams_that_end_cleanly_after_an_event_without_newline_lose_and_repeat_nothing(
    harness: IngestHarness,
) -> None:
    events, per_stream = 1_000, 250
    emulator = harness.emulator(feeds=1, events=events, faults=Faults(end_without_newline_every=per_stream))
    ingest = harness.start(emulator)
    harness.wait_for_count(events, ingest)
    wait_for(lambda: emulator.stats()["streams_opened"] >= events // per_stream + 1, what="the reconnect at the end")
    assert ingest.terminate() == 0

    assert_exactly_once(harness.records(), emulator, {"0": range(1, events + 1)})
    stats = emulator.stats()
    assert stats["faults_injected"]["end_without_newline_every"] == events // per_stream
    assert stats["events_served"] == {"0": events}  # each stream's last event was taken, not read again
    assert "stream ended inside a line" not in ingest.output()


def test_a_topic_limit_lowered_mid_run_stops_the_ingestor_and_the_restart_skips_nothing(
    harness: IngestHarness, tmp_path: Path
) -> None:
    """The broker refuses a batch the producer thought fine: the ingestor exits 1 with nothing after
    the refused event in Kafka, and the restart (which reads the new limit) dead-letters it and goes on."""
    create_topic(harness.kafka, harness.topic, partitions=1)
    events, big, first_part = 600, 400, 300
    emulator = harness.emulator(
        feeds=1,
        from_file=_event_file(tmp_path / "events.ndjson", events, big),
        faults=Faults(idle_gap_every=first_part, idle_gap_seconds=4.0),
    )
    first = harness.start(emulator)
    harness.wait_for_count(first_part, first)
    admin = AdminClient({"bootstrap.servers": harness.kafka})
    limit = ConfigEntry("max.message.bytes", str(TOPIC_LIMIT), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, harness.topic, incremental_configs=[limit])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    assert first.wait(60) == 1, first.output()[-3000:]
    assert "unable to satisfy gap-less guarantee" in first.output()
    assert "not sent after the failure" in first.output()  # purged, not flushed

    got = falcon_offsets_by_feed(harness.records()).get("0", [])
    assert got == list(range(1, len(got) + 1)) and first_part <= len(got) < big, got[-3:]

    second = harness.start(emulator)
    harness.wait_for_count(events - 1, second, timeout=90)
    wait_for(lambda: harness.count(harness.dlq_topic) == 1, what="the big event in the DLQ")
    assert second.terminate() == 0
    assert falcon_offsets_by_feed(harness.records()) == {"0": [o for o in range(1, events + 1) if o != big]}
    assert header_map(harness.records(harness.dlq_topic)[0])["falcon.offset"] == str(big).encode()
