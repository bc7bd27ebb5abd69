"""KafkaEventSink with a stand-in producer: what goes to Kafka, backpressure, failures, the DLQ wait."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from falcon_lake.partitioner import partition_for
from ingestor import sink as sink_module
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent, Malformed
from ingestor.sink import KafkaEventSink, ProducerFailed


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def __len__(self) -> int:
        return len(self._value)


class FakeProducer:
    """Records produce() calls; raises BufferError `full` times first; delivers on poll() when `deliver`."""

    def __init__(
        self, full: int = 0, deliver: bool = True, error: KafkaError | None = None, max_bytes: int = 10**9
    ) -> None:
        self.full = full
        self.max_bytes = max_bytes
        self.deliver = deliver
        self.error = error
        self.produced: list[dict[str, Any]] = []
        self.pending: list[tuple[Any, bytes]] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: str, partition: int = -1, **kwargs: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        if len(value) > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"))
        self.produced.append({"topic": topic, "value": value, "key": key, "partition": partition, **kwargs})
        self.pending.append((kwargs["on_delivery"], value))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if not self.deliver:
            return 0
        pending, self.pending = self.pending, []
        for callback, value in pending:
            callback(self.error, FakeMessage(value))
        return len(pending)


def event(offset: int, event_type: str = "AuthActivityAuditEvent", created: int | None = 1732608000123) -> FalconEvent:
    raw = b'{"metadata":{"offset":%d}, "x": "\xc3\xbc"}' % offset
    return FalconEvent(raw, offset, event_type, "0123456789abcdef0123456789abcdef", created)


def make_sink(producer: FakeProducer, partitions: int = 3) -> tuple[KafkaEventSink, IngestorMetrics, threading.Event]:
    metrics = IngestorMetrics()
    stop = threading.Event()
    sink = KafkaEventSink(producer, "falcon.events", "falcon.events.dlq", partitions, metrics, stop)  # type: ignore[arg-type]
    return sink, metrics, stop


def test_an_event_goes_to_its_feeds_partition_keyed_by_feed_with_exact_bytes_and_headers() -> None:
    producer = FakeProducer()
    sink, _, _ = make_sink(producer, partitions=6)
    assert sink.send("7", event(42)) is True
    [record] = producer.produced
    assert record["topic"] == "falcon.events"
    assert record["key"] == "7" and record["partition"] == partition_for("7", 6)
    assert record["value"] == event(42).raw
    assert record["headers"] == [
        ("falcon.feed", b"7"),
        ("falcon.offset", b"42"),
        ("falcon.event_type", b"AuthActivityAuditEvent"),
        ("falcon.cid", b"0123456789abcdef0123456789abcdef"),
        ("falcon.created_ms", b"1732608000123"),
        ("falcon.partitions", b"6"),  # what resume checks the topic's partition count against
    ]
    sink.send("7", event(43, created=None))
    assert [name for name, _ in producer.produced[1]["headers"]] == [
        "falcon.feed",
        "falcon.offset",
        "falcon.event_type",
        "falcon.cid",
        "falcon.partitions",
    ]


def test_delivery_reports_count_events_and_bytes_per_feed_and_type() -> None:
    producer = FakeProducer()
    sink, metrics, _ = make_sink(producer)
    for offset in range(5):
        sink.send("0", event(offset))
    sink.send("0", event(5, event_type=""))
    sink.send("1", event(6, event_type="DetectionSummaryEvent"))
    producer.poll()
    value = metrics.registry.get_sample_value
    assert value("falcon_lake_ingest_events_produced_total", {"feed": "0", "type": "AuthActivityAuditEvent"}) == 5
    assert value("falcon_lake_ingest_events_produced_total", {"feed": "0", "type": "unknown"}) == 1
    assert value("falcon_lake_ingest_events_produced_total", {"feed": "1", "type": "DetectionSummaryEvent"}) == 1
    assert value("falcon_lake_ingest_bytes_produced_total", {"feed": "0"}) == sum(len(event(o).raw) for o in range(6))


def test_a_full_queue_makes_send_wait_never_drop() -> None:
    producer = FakeProducer(full=3)
    sink, _, _ = make_sink(producer)
    assert sink.send("0", event(1)) is True
    assert len(producer.produced) == 1 and producer.polls >= 1  # it served the queue while waiting


def test_a_full_queue_gives_up_only_when_abandoned_and_produces_nothing() -> None:
    producer = FakeProducer(full=10**9)
    sink, _, _ = make_sink(producer)
    abandon = threading.Event()
    threading.Timer(0.3, abandon.set).start()
    assert sink.send("0", event(1), abandon=abandon) is False
    assert producer.produced == []


def test_a_fatal_delivery_error_stops_the_process_and_refuses_more_events() -> None:
    producer = FakeProducer(error=KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    sink, _, stop = make_sink(producer)
    sink.send("0", event(1))
    producer.poll()
    assert stop.is_set() and sink.fatal is not None
    with pytest.raises(ProducerFailed):
        sink.send("0", event(2))
        sink.send("0", event(3), abandon=threading.Event())  # the slow path refuses too


def test_dead_letter_carries_the_reason_headers_and_waits_until_kafka_has_it() -> None:
    producer = FakeProducer(deliver=False)
    sink, metrics, _ = make_sink(producer)
    result: list[bool] = []
    writer = threading.Thread(target=lambda: result.append(sink.dead_letter("3", Malformed(b'{"meta', "bad"), 41)))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive(), "dead_letter returned before the DLQ record was delivered"
    producer.deliver = True
    writer.join(5)
    assert result == [True]
    [record] = producer.produced
    assert record["topic"] == "falcon.events.dlq" and record["value"] == b'{"meta' and record["key"] == "3"
    headers = dict(record["headers"])
    assert headers["falcon.feed"] == b"3"
    assert headers["dlq.stage"] == b"ingest"
    assert headers["dlq.error_code"] == b"undecodable"
    assert headers["dlq.error_message"] == b"bad"
    assert headers["dlq.last_good_offset"] == b"41"
    assert metrics.registry.get_sample_value("falcon_lake_ingest_dead_lettered_total", {"feed": "3", "reason": "bad"})


def test_dead_letter_stops_waiting_when_abandoned() -> None:
    producer = FakeProducer(deliver=False)
    sink, _, _ = make_sink(producer)
    abandon = threading.Event()
    threading.Timer(0.2, abandon.set).start()
    assert sink.dead_letter("0", Malformed(b"x", "bad"), None, abandon=abandon) is False


def test_an_event_too_large_for_kafka_goes_to_the_dlq_cut_with_its_headers_and_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sink_module, "DLQ_VALUE_LIMIT", 500)
    producer = FakeProducer(max_bytes=1_000)
    sink, metrics, stop = make_sink(producer)
    big = FalconEvent(b"{" + b"x" * 1_498 + b"}", 77, "AuthActivityAuditEvent", "cid", 5)
    assert sink.send("2", big) is True  # handled: the feed moves on
    [record] = producer.produced
    assert record["topic"] == "falcon.events.dlq" and record["value"] == big.raw[:500]
    headers = dict(record["headers"])
    assert headers["falcon.feed"] == b"2" and headers["falcon.offset"] == b"77" and headers["falcon.cid"] == b"cid"
    assert headers["dlq.error_code"] == b"too_large"
    assert headers["dlq.error_message"] == (
        b"event of 1500 bytes is larger than Kafka accepts; value cut to its first 500 of 1500 bytes"
    )
    assert not stop.is_set()
    labels = {"feed": "2", "reason": "too_large"}
    assert metrics.registry.get_sample_value("falcon_lake_ingest_dead_lettered_total", labels) == 1
