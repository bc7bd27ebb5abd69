"""Writing Falcon events into Kafka: the exact bytes, keyed by feed, with falcon.* headers.

A full local producer queue makes the caller wait (backpressure reaches the HTTP read),
so nothing is ever dropped and memory stays bounded by the producer's queue limits.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from falcon_lake import dead_letter
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent, Malformed
from ingestor.resume import partition_for

log = logging.getLogger(__name__)


class ProducerFailed(RuntimeError):
    """The idempotent producer hit a fatal error; the process must restart (it resumes from Kafka)."""


class KafkaEventSink:
    def __init__(
        self,
        producer: Producer,
        topic: str,
        dlq_topic: str,
        partitions: int,
        metrics: IngestorMetrics,
        stop: threading.Event,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._dlq_topic = dlq_topic
        self._partitions = partitions
        self._metrics = metrics
        self._stop = stop
        self._partition_of: dict[str, int] = {}
        self.fatal: KafkaError | None = None

    def partition(self, feed: str) -> int:
        partition = self._partition_of.get(feed)
        if partition is None:
            partition = self._partition_of[feed] = partition_for(feed, self._partitions)
        return partition

    def send(self, feed: str, event: FalconEvent, abandon: threading.Event | None = None) -> bool:
        """Queue the event for Kafka; False when `abandon` was set while waiting for queue space."""
        headers = [
            ("falcon.feed", feed.encode()),
            ("falcon.offset", str(event.offset).encode()),
            ("falcon.event_type", event.event_type.encode()),
            ("falcon.cid", event.cid.encode()),
        ]
        if event.created_ms is not None:
            headers.append(("falcon.created_ms", str(event.created_ms).encode()))
        size = len(event.raw)
        event_type = event.event_type or "unknown"

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._metrics.events_produced.labels(feed, event_type).inc()
                self._metrics.bytes_produced.labels(feed).inc(size)
            else:
                self._failed(err)

        return self._produce(self._topic, feed, event.raw, self.partition(feed), headers, delivered, abandon)

    def dead_letter(
        self, feed: str, bad: Malformed, last_good_offset: int | None, abandon: threading.Event | None = None
    ) -> bool:
        """Queue the undecodable bytes for the DLQ; False when `abandon` was set while waiting."""
        headers = dead_letter.dlq_headers(
            stage="ingest",
            code="undecodable",
            message=bad.reason,
            original=[("falcon.feed", feed.encode())],
            last_good_offset=last_good_offset,
        )
        log.warning(
            "feed %s: undecodable line after offset %s (%s), %d bytes sent to %s",
            feed,
            last_good_offset,
            bad.reason,
            len(bad.raw),
            self._dlq_topic,
        )
        self._metrics.dead_lettered.labels(feed, bad.reason.split(":")[0][:40]).inc()

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._failed(err)

        return self._produce(self._dlq_topic, feed, bad.raw, None, headers, delivered, abandon)

    def _produce(
        self,
        topic: str,
        key: str,
        value: bytes,
        partition: int | None,
        headers: Any,
        cb: Any,
        abandon: threading.Event | None,
    ) -> bool:
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": cb}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            if self.fatal is not None:
                raise ProducerFailed(self.fatal.str())
            try:
                self._producer.produce(topic, **kwargs)
                return True
            except BufferError:
                # The local queue is full (slow or absent broker): wait, never drop.
                if abandon is not None and abandon.is_set():
                    return False
                self._producer.poll(0.1)

    def _failed(self, err: KafkaError) -> None:
        if err.fatal() or not err.retriable():
            if self.fatal is None:
                log.error("Kafka producer failed: %s; stopping (a restart resumes from Kafka)", err.str())
            self.fatal = err
            self._stop.set()
        else:
            log.warning("Kafka delivery error (retried by the producer): %s", err.str())
