"""The publisher's consumer loop: consume → filter → convert → batch → deliver → commit.

One thread owns the Kafka consumer, the offset tracker and the batches; sender threads
only deliver batches and hand results back through a queue. A record's offset is
committed (Kafka, then SSM) only once it and every record before it in its partition
were accepted by CloudTrail, dead-lettered (DLQ write acknowledged) or filtered by a
named rule.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from falcon_lake import dead_letter
from falcon_lake.headers import CREATED_MS, EVENT_TYPE, FEED, OFFSET, as_bytes_pairs, header_int, header_text
from falcon_lake.offset_store import SsmOffsetStore
from falcon_lake.settings import PublisherSettings
from publisher.batch import AuditEventBatch, BatchEntry, entry_size
from publisher.cloudtrail import Abandoned, ChannelHealth, CloudTrailSender, DeliveryResult
from publisher.convert import AuditEvent, Converter, Rejected
from publisher.filter import EventFilter, Filtered
from publisher.metrics import PublisherMetrics
from publisher.offset_tracker import OffsetTracker

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0
SUMMARY_EVERY_S = 30.0


@dataclass
class _PartitionState:
    generation: int
    open_batch: AuditEventBatch | None = None
    ready: deque[AuditEventBatch] = field(default_factory=deque)
    in_flight: int = 0
    batch_ids: set[str] = field(default_factory=set)
    committed: int | None = None


@dataclass
class _Completion:
    partition: int
    generation: int
    batch: AuditEventBatch
    result: DeliveryResult | None  # None: abandoned
    error: BaseException | None = None


class PublisherLoop:
    def __init__(
        self,
        settings: PublisherSettings,
        consumer: Consumer,
        dlq_producer: Producer,
        converter: Converter,
        event_filter: EventFilter,
        sender: CloudTrailSender,
        health: ChannelHealth,
        offset_store: SsmOffsetStore | None,
        metrics: PublisherMetrics,
        stop: threading.Event,
        reader_config: dict[str, Any],
    ) -> None:
        self.settings = settings
        self._reader_config = reader_config
        self._reader_consumer: Consumer | None = None
        self._store_stop = threading.Event()
        self.consumer = consumer
        self.dlq = dlq_producer
        self.converter = converter
        self.filter = event_filter
        self.sender = sender
        self.health = health
        self.store = offset_store
        self.metrics = metrics
        self.stop = stop
        self.tracker = OffsetTracker()
        self.partitions: dict[int, _PartitionState] = {}
        self._generation = 0
        self._completions: queue.Queue[_Completion] = queue.Queue()
        workers = min(64, max(4, settings.max_in_flight_per_partition * settings.kafka.topic_partitions))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver")
        self._paused: set[int] = set()
        self._abandon_all = False
        self._next_commit = time.monotonic() + COMMIT_EVERY_S
        self.fatal: str | None = None
        self.assigned_once = False
        self.counts = {"consumed": 0, "filtered": 0, "accepted": 0, "dead_lettered": 0, "requests": 0}

    # ---- readiness -------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self.stop.is_set():
            return False, "stopping"
        if not self.health.is_up:
            return False, f"CloudTrail channel unusable: {self.health.down_reason}"
        if not self.assigned_once:
            return False, "not yet in the consumer group"
        return True, "delivering"

    # ---- rebalance callbacks (called inside consume(), on this thread) ----------------------
    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned_once = True
        for tp in partitions:
            self._generation += 1
            self.partitions[tp.partition] = _PartitionState(self._generation)
            self.tracker.assign(tp.partition)
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions if tp.partition in self.partitions]
        if not revoked:
            return
        log.info(
            "partitions %s revoked: finishing in-flight work (up to %.0fs)", revoked, self.settings.revoke_timeout_s
        )
        deadline = time.monotonic() + self.settings.revoke_timeout_s
        while time.monotonic() < deadline and any(self.partitions[p].in_flight for p in revoked):
            self._drain(timeout=0.05)
            self.dlq.poll(0)
        self.dlq.flush(max(0.0, deadline - time.monotonic()))
        self._drain(timeout=0)
        self._commit(only=revoked, force_ssm=True)
        for p in revoked:
            left = self.tracker.unfinished(p)
            if left:
                log.warning("partition %d revoked with %d records unfinished; the next owner re-sends them", p, left)
            self.partitions.pop(p, None)
            self.tracker.revoke(p)
            self._paused.discard(p)

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [tp.partition for tp in partitions]
        log.warning("partitions %s lost (session timed out); dropping their state without committing", lost)
        for p in lost:
            self.partitions.pop(p, None)
            self.tracker.revoke(p)
            self._paused.discard(p)

    # ---- per record ---------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        partition, offset = msg.partition() or 0, msg.offset() or 0
        state = self.partitions.get(partition)
        if state is None:
            return
        headers = msg.headers()
        key = msg.key()
        feed = header_text(headers, FEED) or (key.decode("utf-8", "replace") if isinstance(key, bytes) else "0")
        falcon_offset = header_int(headers, OFFSET)
        self.tracker.add(partition, offset, feed, falcon_offset)
        self.metrics.consumed.labels(str(partition)).inc()
        self.counts["consumed"] += 1

        event_type = header_text(headers, EVENT_TYPE)
        outcome: AuditEvent | Filtered | Rejected | None = None
        if event_type is not None:
            outcome = self.filter.check_event_type(event_type)  # never parses JSON
        if outcome is None:
            outcome = self.converter.convert(msg.value() or b"", feed)
        if isinstance(outcome, Filtered):
            self.metrics.filtered.labels(outcome.rule).inc()
            self.counts["filtered"] += 1
            log.debug("filtered %s:%d (%s: %s)", feed, falcon_offset, outcome.rule, outcome.detail)
            self.tracker.finish(partition, offset)
        elif isinstance(outcome, Rejected):
            self._dead_letter(msg, "convert", outcome.code, outcome.message)
        else:
            self.metrics.converted.inc()
            created = header_int(headers, CREATED_MS)
            entry = BatchEntry(
                outcome.id,
                outcome.event_data,
                partition,
                offset,
                created,
                entry_size(outcome.id, outcome.event_data, self.settings.checksum),
            )
            self._add_to_batch(state, entry)

    def _add_to_batch(self, state: _PartitionState, entry: BatchEntry) -> None:
        batch = state.open_batch
        if batch is not None and (not batch.fits(entry) or entry.id in state.batch_ids):
            self._seal(state)
            batch = None
        if batch is None:
            batch = state.open_batch = AuditEventBatch(
                entry.partition, self.settings.batch_max_events, self.settings.batch_max_bytes
            )
            state.batch_ids = set()
        batch.add(entry)
        state.batch_ids.add(entry.id)
        if batch.full():
            self._seal(state)

    def _seal(self, state: _PartitionState) -> None:
        if state.open_batch is not None and len(state.open_batch):
            state.ready.append(state.open_batch)
        state.open_batch = None
        state.batch_ids = set()

    def _dead_letter(self, msg: Message, stage: str, code: str, message: str) -> None:
        partition, offset = msg.partition() or 0, msg.offset() or 0
        generation = self.partitions[partition].generation if partition in self.partitions else -1
        headers = dead_letter.dlq_headers(
            stage,
            code,
            message,
            original=as_bytes_pairs(msg.headers()),
            source_topic=msg.topic(),
            source_partition=partition,
            source_offset=offset,
        )
        log.warning("dead-lettering %s[%d]@%d: %s %s", msg.topic(), partition, offset, code, message[:200])

        def delivered(err: KafkaError | None, _m: Message) -> None:
            if err is not None:
                self.fatal = f"DLQ write failed: {err.str()}"
                self.stop.set()
                return
            self.metrics.dead_lettered.labels(stage, code).inc()
            self.counts["dead_lettered"] += 1
            state = self.partitions.get(partition)
            if state is not None and state.generation == generation:
                self.tracker.finish(partition, offset)

        while True:
            try:
                self.dlq.produce(
                    self.settings.kafka.dlq_topic,
                    key=msg.key(),
                    value=msg.value(),
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self.dlq.poll(0.1)

    # ---- delivery ---------------------------------------------------------------------------
    def _dispatch(self, force: bool = False) -> None:
        now = time.monotonic()
        linger = self.settings.linger_ms / 1000.0
        for p, state in self.partitions.items():
            batch = state.open_batch
            if batch is not None and len(batch) and (force or now - batch.opened_at >= linger):
                self._seal(state)
            while state.ready and state.in_flight < self.settings.max_in_flight_per_partition:
                if not self.health.is_up and state.in_flight > 0:
                    break  # the channel is down: the requests already out keep probing it
                batch = state.ready.popleft()
                state.in_flight += 1
                self.metrics.in_flight.inc()
                self.metrics.batch_size.observe(len(batch))
                self.metrics.sent.inc(len(batch))
                self._executor.submit(self._deliver, p, state.generation, batch)

    def _deliver(self, partition: int, generation: int, batch: AuditEventBatch) -> None:
        def abandon() -> bool:
            state = self.partitions.get(partition)
            return self._abandon_all or state is None or state.generation != generation

        try:
            result: DeliveryResult | None = self.sender.deliver(batch, abandon)
            error: BaseException | None = None
        except Abandoned:
            result, error = None, None
        except BaseException as exc:
            log.exception("delivery of a batch of partition %d failed unexpectedly", partition)
            result, error = None, exc
        self._completions.put(_Completion(partition, generation, batch, result, error))

    def _drain(self, timeout: float) -> None:
        try:
            completion = self._completions.get(timeout=timeout) if timeout > 0 else self._completions.get_nowait()
        except queue.Empty:
            return
        while True:
            self._complete(completion)
            try:
                completion = self._completions.get_nowait()
            except queue.Empty:
                return

    def _complete(self, done: _Completion) -> None:
        self.metrics.in_flight.dec()
        state = self.partitions.get(done.partition)
        current = state is not None and state.generation == done.generation
        if state is not None and current:
            state.in_flight -= 1
        if done.error is not None:
            self.fatal = f"delivery failed: {done.error}"
            self.stop.set()
            return
        if done.result is None or not current:
            return
        result = done.result
        self.counts["requests"] += result.requests
        self.metrics.retries.inc(result.retries)
        now = time.time()
        for entry in result.accepted:
            self.tracker.finish(entry.partition, entry.offset)
            if entry.created_ms is not None:
                self.metrics.event_age.observe(max(0.0, now - entry.created_ms / 1000))
        self.metrics.accepted.inc(len(result.accepted))
        self.counts["accepted"] += len(result.accepted)
        ids = [e.id for e in done.batch.entries]
        log.info(
            "partition %d: %d accepted, %d rejected in %d request(s) (ids %s .. %s, request %s)",
            done.partition,
            len(result.accepted),
            len(result.rejected),
            result.requests,
            ids[0],
            ids[-1],
            ",".join(r for r in result.request_ids if r)[-80:] or "-",
        )
        if result.rejected:
            records = {e.offset: e for e in done.batch.entries}
            for entry, code, message in result.rejected:
                self.metrics.failed.labels(code).inc()
                self._dead_letter_entry(records[entry.offset], code, message)

    def _dead_letter_entry(self, entry: BatchEntry, code: str, message: str) -> None:
        # The original record is needed for the DLQ (its bytes and headers): read it back.
        tp = TopicPartition(self.settings.kafka.topic, entry.partition, entry.offset)
        msg = self._fetch(tp)
        if msg is None:
            self.fatal = f"cannot re-read {tp.topic}[{tp.partition}]@{tp.offset} for the DLQ"
            self.stop.set()
            return
        self._dead_letter(msg, "deliver", code, message)

    def _fetch(self, tp: TopicPartition) -> Message | None:
        reader = self._reader()
        reader.assign([tp])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = reader.poll(1.0)
            if msg is not None and not msg.error() and msg.offset() == tp.offset:
                reader.unassign()
                return msg
        reader.unassign()
        return None

    def _reader(self) -> Consumer:
        if self._reader_consumer is None:
            self._reader_consumer = Consumer(
                {
                    **self._reader_config,
                    "group.id": f"{self.settings.kafka.group_id}-dlq-reader",
                    "enable.auto.commit": False,
                }
            )
        return self._reader_consumer

    # ---- flow control and commits -------------------------------------------------------------
    def _flow_control(self) -> None:
        self.metrics.channel_up.set(1 if self.health.is_up else 0)
        unfinished = self.tracker.unfinished()
        self.metrics.buffered.set(unfinished)
        limit = self.settings.max_buffered_records
        want_paused: set[int] = set()
        if not self.health.is_up or unfinished >= limit or self.stop.is_set():
            want_paused = set(self.partitions)
        elif self._paused and unfinished > limit // 2:
            want_paused = set(self._paused) & set(self.partitions)
        topic = self.settings.kafka.topic
        to_pause = want_paused - self._paused
        to_resume = (self._paused - want_paused) & set(self.partitions)
        if to_pause:
            self.consumer.pause([TopicPartition(topic, p) for p in to_pause])
        if to_resume:
            self.consumer.resume([TopicPartition(topic, p) for p in to_resume])
        self._paused = (self._paused | to_pause) - to_resume

    def _commit(self, only: list[int] | None = None, force_ssm: bool = False) -> None:
        topic = self.settings.kafka.topic
        offsets = []
        for p, commit_at in self.tracker.commit_offsets().items():
            state = self.partitions.get(p)
            if state is None or (only is not None and p not in only):
                continue
            if state.committed is None or commit_at > state.committed:
                offsets.append(TopicPartition(topic, p, commit_at))
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("Kafka commit failed (%s); retried at the next commit", exc)
                return
            for tp in offsets:
                self.partitions[tp.partition].committed = tp.offset
                self.metrics.committed.labels(str(tp.partition)).set(tp.offset)
        if self.store is not None:
            self.store.advance(self.tracker.feed_offsets())
            if force_ssm:
                self.store.flush(force=True)  # otherwise the store's own thread writes when due

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        if self.store is not None:
            self.store.run_in_background(self._store_stop)
        self.consumer.subscribe(
            [self.settings.kafka.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
        )
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while not self.stop.is_set():
            messages = self.consumer.consume(num_messages=500, timeout=0.05)
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consume: %s", error.str())
                    continue
                self._handle(msg)
            self._dispatch()
            self.dlq.poll(0)
            self._drain(timeout=0 if messages else 0.02)
            self._flow_control()
            now = time.monotonic()
            if now >= self._next_commit:
                self._next_commit = now + COMMIT_EVERY_S
                self._commit()
            if now >= next_summary:
                next_summary = now + SUMMARY_EVERY_S
                log.info("summary: %s, unfinished %d", self.counts, self.tracker.unfinished())
        return self._shutdown()

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        log.info("stopping: delivering what was consumed (up to %.0fs)", self.settings.shutdown_timeout_s)
        if self.fatal is None:
            self._flow_control()  # pause every partition: nothing new is read
            while time.monotonic() < deadline and self.tracker.unfinished() > 0:
                self._dispatch(force=True)
                self.dlq.poll(0)
                self._drain(timeout=0.05)
            self.dlq.flush(max(0.0, deadline - time.monotonic()))
            self._drain(timeout=0)
        self._abandon_all = True
        left = self.tracker.unfinished()
        self._store_stop.set()
        self._commit(force_ssm=True)  # safe even after a fatal error: only finished records count
        self._executor.shutdown(wait=True, cancel_futures=True)
        # Revocation during close must not commit again or wait for anything.
        self.partitions.clear()
        self.consumer.close()
        if self._reader_consumer is not None:
            self._reader_consumer.close()
        if self.fatal is not None:
            log.error("stopped on a fatal error: %s", self.fatal)
            return 1
        if left:
            log.warning("%d records were not finished by the deadline; they are re-sent after restart", left)
        log.info("stopped: %s", self.counts)
        return 0


def make_filter(settings: PublisherSettings) -> EventFilter:
    f = settings.filter

    def given(values: tuple[str, ...]) -> tuple[str, ...] | None:
        return values or None

    return EventFilter.from_options(
        f.preset,
        event_types=given(f.event_types),
        include_services=given(f.include_services),
        exclude_services=given(f.exclude_services),
        include_operations=given(f.include_operations),
        exclude_operations=given(f.exclude_operations),
        max_age_days=f.max_age_days,
    )
