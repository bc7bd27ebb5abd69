"""The publisher's consumer loop: consume → filter → convert → batch → deliver → commit.

One thread owns the Kafka consumer, the offset tracker and the batches; sender threads
only deliver batches and hand results back through a queue, and conversion runs in a
worker process (`Conversions`) so that it competes neither with the consumer thread nor,
through the GIL, with the senders. A record's offset is committed (Kafka, then SSM) only
once it and every record before it in its partition were accepted by CloudTrail,
dead-lettered (DLQ write acknowledged) or filtered by a named rule; it is committed as
soon as that is so, which keeps a crash's re-sends to the requests that were in flight.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from falcon_lake import dead_letter
from falcon_lake.headers import CREATED_MS, EVENT_TYPE, FEED, OFFSET, as_bytes_pairs, header_int, header_text
from falcon_lake.offset_store import SsmOffsetStore
from falcon_lake.settings import PublisherSettings
from publisher.batch import AuditEventBatch, BatchEntry
from publisher.cloudtrail import Abandoned, ChannelHealth, CloudTrailSender, DeliveryResult
from publisher.conversion import AUDIT_EVENT, FILTERED, Conversions, Converted
from publisher.convert import Converter
from publisher.filter import EventFilter, Filtered
from publisher.metrics import PublisherMetrics
from publisher.offset_tracker import OffsetTracker

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0
# Records read (and converted) together: small enough that a chunk is converted in a few ms.
CONSUME_CHUNK = 250
SUMMARY_EVERY_S = 30.0


@dataclass
class _PartitionState:
    generation: int
    open_batch: AuditEventBatch | None = None
    ready: deque[AuditEventBatch] = field(default_factory=deque)
    in_flight: int = 0
    # Batches sent, oldest first, until every older one finished too: their records can be
    # stored by CloudTrail yet not committable, so this window bounds a crash's re-sends.
    window: deque[AuditEventBatch] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)  # id() of finished batches still in the window
    batch_ids: set[str] = field(default_factory=set)
    committed: int | None = None  # acknowledged by a synchronous commit
    commit_sent: int | None = None  # asked for, perhaps asynchronously


@dataclass(frozen=True, slots=True)
class _Converting:
    """A consumed record waiting for its conversion result."""

    msg: Message
    partition: int
    generation: int
    offset: int
    created_ms: int | None


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
        conversions: Conversions | None = None,
    ) -> None:
        self.settings = settings
        self.conversions = conversions or Conversions(settings, converter, processes=0)
        self._converting: deque[tuple[list[_Converting], Future[list[Converted]]]] = deque()
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
        self._executor = ThreadPoolExecutor(max_workers=delivery_workers(settings), thread_name_prefix="deliver")
        self._paused: set[int] = set()
        self._abandon_all = False
        self._next_commit = time.monotonic() + COMMIT_EVERY_S
        self._progress = False  # something became committable since the last commit
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
    def _accept(self, messages: list[Message]) -> None:
        """Track every consumed record, drop what the event-type header rules out, and send the
        rest to conversion as one chunk (results are applied in order by `_collect`)."""
        chunk: list[tuple[bytes, str]] = []
        waiting: list[_Converting] = []
        consumed: dict[int, int] = {}
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume: %s", error.str())
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            state = self.partitions.get(partition)
            if state is None:
                continue
            headers = msg.headers()
            key = msg.key()
            feed = header_text(headers, FEED) or (key.decode("utf-8", "replace") if isinstance(key, bytes) else "0")
            falcon_offset = header_int(headers, OFFSET)
            self.tracker.add(partition, offset, feed, falcon_offset)
            consumed[partition] = consumed.get(partition, 0) + 1
            event_type = header_text(headers, EVENT_TYPE)
            if event_type is not None:
                filtered = self.filter.check_event_type(event_type)  # never parses JSON
                if filtered is not None:
                    self._filtered(partition, offset, filtered)
                    continue
            chunk.append((msg.value() or b"", feed))
            waiting.append(_Converting(msg, partition, state.generation, offset, header_int(headers, CREATED_MS)))
        for partition, count in consumed.items():
            self.metrics.consumed.labels(str(partition)).inc(count)
            self.counts["consumed"] += count
        if chunk:
            self._converting.append((waiting, self.conversions.submit(chunk)))

    def _collect(self) -> None:
        """Apply the conversion results that are ready, in consume order."""
        while self._converting and self._converting[0][1].done():
            waiting, future = self._converting.popleft()
            try:
                results = future.result()
            except Exception as exc:  # the worker process died: nothing converts any more
                self.fatal = f"conversion failed: {type(exc).__name__}: {exc}"
                self.stop.set()
                return
            for record, (kind, first, second, size) in zip(waiting, results, strict=True):
                state = self.partitions.get(record.partition)
                if state is None or state.generation != record.generation:
                    continue  # revoked meanwhile: the next owner reads it again
                if kind == AUDIT_EVENT:
                    self.metrics.converted.inc()
                    entry = BatchEntry(
                        first, second, record.partition, record.offset, record.created_ms, size, record.msg
                    )
                    self._add_to_batch(state, entry)
                elif kind == FILTERED:
                    self._filtered(record.partition, record.offset, Filtered(first, second))
                else:
                    self._dead_letter(record.msg, "convert", first, second)

    def _filtered(self, partition: int, offset: int, filtered: Filtered) -> None:
        self.metrics.filtered.labels(filtered.rule).inc()
        self.counts["filtered"] += 1
        log.debug("filtered [%d]@%d (%s: %s)", partition, offset, filtered.rule, filtered.detail)
        self.tracker.finish(partition, offset)
        self._progress = True

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
                self._progress = True

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
            # At most max_in_flight batches from the oldest unfinished one on, not just in flight:
            # one slow request must not let later ones run ahead (stored, not committable) unboundedly.
            while state.ready and len(state.window) < self.settings.max_in_flight_per_partition:
                if not self.health.is_up and state.in_flight > 0:
                    break  # the channel is down: the requests already out keep probing it
                batch = state.ready.popleft()
                state.window.append(batch)
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
            state.finished.add(id(done.batch))
            while state.window and id(state.window[0]) in state.finished:
                state.finished.discard(id(state.window.popleft()))
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
        self._progress = True
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
        for entry, code, message in result.rejected:
            self.metrics.failed.labels(code).inc()
            if entry.record is None:
                self.fatal = f"no source record for rejected event {entry.id}"
                self.stop.set()
                return
            self._dead_letter(entry.record, "deliver", code, message)

    # ---- flow control and commits -------------------------------------------------------------
    def _flow_control(self) -> None:
        self.metrics.channel_up.set(1 if self.health.is_up else 0)
        self.metrics.buffered.set(self.tracker.unfinished())
        want_paused: set[int] = set()
        if not self.health.is_up or self.stop.is_set():
            want_paused = set(self.partitions)
        elif self.partitions:
            # Each partition gets its share of the buffer: one busy partition must not fill it and
            # leave the others (and their in-flight slots) idle. Resume at three quarters of the
            # share, while the partition still has batches enough to send until new records are
            # fetched and converted (at half, its senders ran dry every time).
            share = max(self.settings.batch_max_events, self.settings.max_buffered_records // len(self.partitions))
            for p in self.partitions:
                unfinished = self.tracker.unfinished(p)
                if unfinished >= share or (p in self._paused and unfinished > share * 3 // 4):
                    want_paused.add(p)
        topic = self.settings.kafka.topic
        to_pause = want_paused - self._paused
        to_resume = (self._paused - want_paused) & set(self.partitions)
        if to_pause:
            self.consumer.pause([TopicPartition(topic, p) for p in to_pause])
        if to_resume:
            self.consumer.resume([TopicPartition(topic, p) for p in to_resume])
        self._paused = (self._paused | to_pause) - to_resume

    def _commit(self, only: list[int] | None = None, force_ssm: bool = False, asynchronous: bool = False) -> None:
        """Commit every partition's finished prefix. Synchronous commits (every COMMIT_EVERY_S,
        at revocation and shutdown) confirm it and then advance the SSM offsets; asynchronous
        ones go out as soon as anything is finished, so that a crash re-sends little."""
        topic = self.settings.kafka.topic
        offsets = []
        for p, commit_at in self.tracker.commit_offsets().items():
            state = self.partitions.get(p)
            if state is None or (only is not None and p not in only):
                continue
            done = state.commit_sent if asynchronous else state.committed
            if done is None or commit_at > done:
                offsets.append(TopicPartition(topic, p, commit_at))
        if offsets:
            try:
                if asynchronous:
                    self.consumer.commit(offsets=offsets, asynchronous=True)
                else:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("Kafka commit failed (%s); retried at the next commit", exc)
                return
            for tp in offsets:
                state = self.partitions[tp.partition]
                state.commit_sent = max(tp.offset, state.commit_sent or 0)
                if not asynchronous:
                    state.committed = tp.offset
                    self.metrics.committed.labels(str(tp.partition)).set(tp.offset)
        if self.store is not None and not asynchronous:
            self.store.advance(self.tracker.feed_offsets())
            if force_ssm:
                self.store.flush(force=True)  # otherwise the store's own thread writes when due

    def _step(self, consume_timeout: float) -> None:
        """One turn of the loop: read, convert, batch, send, collect results, commit."""
        messages = self.consumer.consume(num_messages=CONSUME_CHUNK, timeout=consume_timeout)
        self._accept(messages)
        self._collect()
        self._dispatch()
        self.dlq.poll(0)
        self._drain(timeout=0 if messages or self._converting else 0.02)
        self._collect()
        self._flow_control()
        now = time.monotonic()
        if now >= self._next_commit:
            self._next_commit = now + COMMIT_EVERY_S
            self._progress = False
            self._commit()
        elif self._progress:
            self._progress = False
            self._commit(asynchronous=True)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        if self.store is not None:
            self.store.run_in_background(self._store_stop)
        self.consumer.subscribe(
            [self.settings.kafka.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
        )
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while not self.stop.is_set():
            self._step(consume_timeout=0.005 if self._converting else 0.05)
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + SUMMARY_EVERY_S
                log.info("summary: %s, unfinished %d", self.counts, self.tracker.unfinished())
        return self._shutdown()

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        log.info("stopping: delivering what was consumed (up to %.0fs)", self.settings.shutdown_timeout_s)
        if self.fatal is None:
            self._flow_control()  # pause every partition: nothing new is read
            while time.monotonic() < deadline and (self.tracker.unfinished() > 0 or self._converting):
                self._collect()
                self._dispatch(force=True)
                self.dlq.poll(0)
                self._drain(timeout=0.05)
                if self.fatal is not None:
                    break
            self.dlq.flush(max(0.0, deadline - time.monotonic()))
            self._drain(timeout=0)
        self._abandon_all = True
        left = self.tracker.unfinished()
        self._store_stop.set()
        self._commit(force_ssm=True)  # safe even after a fatal error: only finished records count
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.conversions.close()
        # Revocation during close must not commit again or wait for anything.
        self.partitions.clear()
        self.consumer.close()
        if self.fatal is not None:
            log.error("stopped on a fatal error: %s", self.fatal)
            return 1
        if left:
            log.warning("%d records were not finished by the deadline; they are re-sent after restart", left)
        log.info("stopped: %s", self.counts)
        return 0


def delivery_workers(settings: PublisherSettings) -> int:
    """Sender threads: enough for every request that may be in flight, within reason."""
    return min(64, max(4, settings.max_in_flight_per_partition * settings.kafka.topic_partitions))
