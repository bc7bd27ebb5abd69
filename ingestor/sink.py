"""Writing Falcon events into Kafka: the exact bytes, keyed by feed, with falcon.* headers.

A full local producer queue makes the caller wait (backpressure reaches the HTTP read),
so nothing is ever dropped and memory stays bounded by the producer's queue limits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from falcon_lake import dead_letter
from falcon_lake import headers as headers_
from falcon_lake.partitioner import partition_for
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent, Malformed

log = logging.getLogger(__name__)


# Below the producer's message.max.bytes (1,000,000 by default), leaving room for key and headers.
DLQ_VALUE_LIMIT = 900_000


def _too_large(exc: KafkaException) -> bool:
    """Kafka refused the record for its size: retrying can never help."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


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
        self._partitions_header = b"%d" % partitions
        self.dlq_value_limit = DLQ_VALUE_LIMIT
        self._partition_of: dict[str, int] = {}
        self._feed_header: dict[str, bytes] = {}
        self._callbacks: dict[tuple[str, str], Callable[[KafkaError | None, Message], None]] = {}
        self.fatal: KafkaError | None = None

    def partition(self, feed: str) -> int:
        partition = self._partition_of.get(feed)
        if partition is None:
            partition = self._partition_of[feed] = partition_for(feed, self._partitions)
        return partition

    def send(self, feed: str, event: FalconEvent, abandon: threading.Event | None = None) -> bool:
        """Queue the event for Kafka; False when `abandon` was set while waiting for queue space.

        An event larger than Kafka accepts cannot ever be sent: it goes to the DLQ with that reason
        (and the wait for its delivery), so the feed moves on instead of failing on it forever.
        """
        headers = self._event_headers(feed, event)
        delivered = self._delivery_report(feed, event.event_type or "unknown")
        try:
            if self.fatal is None:
                try:
                    # The hot path: one call, no per-event allocations beyond the headers.
                    self._producer.produce(
                        self._topic, event.raw, feed, self.partition(feed), on_delivery=delivered, headers=headers
                    )
                    return True
                except BufferError:
                    pass
            return self._produce(self._topic, feed, event.raw, self.partition(feed), headers, delivered, abandon)
        except KafkaException as exc:
            if not _too_large(exc):
                raise
        reason = f"event of {len(event.raw)} bytes is larger than Kafka accepts"
        return self.dead_letter(feed, Malformed(event.raw, reason), None, abandon, "too_large", headers)

    def _event_headers(self, feed: str, event: FalconEvent) -> list[tuple[str, str | bytes | None]]:
        headers: list[tuple[str, str | bytes | None]] = [
            (headers_.FEED, self._feed_bytes(feed)),
            (headers_.OFFSET, b"%d" % event.offset),
            (headers_.EVENT_TYPE, event.event_type.encode()),
            (headers_.CID, event.cid.encode()),
        ]
        if event.created_ms is not None:
            headers.append((headers_.CREATED_MS, b"%d" % event.created_ms))
        headers.append((headers_.PARTITIONS, self._partitions_header))
        return headers

    def _feed_bytes(self, feed: str) -> bytes:
        value = self._feed_header.get(feed)
        if value is None:
            value = self._feed_header[feed] = feed.encode()
        return value

    def _delivery_report(self, feed: str, event_type: str) -> Callable[[KafkaError | None, Message], None]:
        """One callback per (feed, event type), made once: it counts into pre-labelled metrics."""
        key = (feed, event_type)
        callback = self._callbacks.get(key)
        if callback is None:
            events = self._metrics.events_produced.labels(feed, event_type)
            size = self._metrics.bytes_produced.labels(feed)

            def callback(err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    events.inc()
                    size.inc(len(msg))
                else:
                    self._failed(err)

            self._callbacks[key] = callback
        return callback

    def dead_letter(
        self,
        feed: str,
        bad: Malformed,
        last_good_offset: int | None,
        abandon: threading.Event | None = None,
        code: str = "undecodable",
        original: list[tuple[str, str | bytes | None]] | None = None,
    ) -> bool:
        """Write the bytes to the DLQ with the reason and wait until Kafka has them.

        `original`: the record's falcon.* headers when known (else just the feed). False when
        `abandon` was set while waiting (the record may still arrive). Bytes larger than Kafka
        accepts are cut to DLQ_VALUE_LIMIT, and the message says so.
        """
        falcon_headers = [(k, v) for k, v in original or [(headers_.FEED, feed.encode())] if isinstance(v, bytes)]
        offset = dict(falcon_headers).get(headers_.OFFSET)
        what = f"offset {offset.decode()}" if offset else f"line after offset {last_good_offset}"
        log.warning(
            "feed %s: %s %s (%s), %d bytes sent to %s", feed, code, what, bad.reason, len(bad.raw), self._dlq_topic
        )
        reason_label = bad.reason.split(":")[0][:40] if code == "undecodable" else code
        self._metrics.dead_lettered.labels(feed, reason_label).inc()
        done = threading.Event()

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._failed(err)
            done.set()

        value, message = bad.raw, bad.reason
        while True:
            headers = dead_letter.dlq_headers(
                "ingest", code, message, falcon_headers, last_good_offset=last_good_offset
            )
            try:
                if not self._produce(self._dlq_topic, feed, value, None, headers, delivered, abandon):
                    return False
                break
            except KafkaException as exc:
                if not _too_large(exc) or len(value) <= self.dlq_value_limit:
                    raise
                message = f"{bad.reason}; value cut to its first {self.dlq_value_limit} of {len(bad.raw)} bytes"
                value = bad.raw[: self.dlq_value_limit]
        # The DLQ is another partition: without this wait the events after the line could reach
        # Kafka first, and a kill -9 then would resume past a line the DLQ never got. Such lines are rare.
        while not done.is_set():
            if self.fatal is not None:
                raise ProducerFailed(self.fatal.str())
            if abandon is not None and abandon.is_set():
                return False
            self.poll(0.05)
        return True

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
                self.poll(0.1)

    def poll(self, timeout: float) -> None:
        """Serve delivery reports. The producer raises its fatal error from poll(): it stops the ingestor."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError):
                raise
            self._failed(err)

    def discard_unsent(self) -> int:
        """After a fatal error: drop what is queued instead of delivering it; how many were dropped.

        Delivering the records queued after a failed one would leave a gap below them, and the next
        start would resume past it (with enable.gapless.guarantee the producer fails them anyway).
        """
        queued = len(self._producer)
        with contextlib.suppress(KafkaException):  # a producer in its fatal state may refuse even this
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self.poll(0)  # serve the purged records' delivery reports
        return queued

    def _failed(self, err: KafkaError) -> None:
        if err.fatal() or not err.retriable():
            if self.fatal is None:
                log.error("Kafka producer failed: %s; stopping (a restart resumes from Kafka)", err.str())
            self.fatal = err
            self._stop.set()
        else:
            log.warning("Kafka delivery error (retried by the producer): %s", err.str())
