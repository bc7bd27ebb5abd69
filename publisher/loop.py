"""The publisher's consumer loop: consume → filter → convert → batch → deliver → commit.

An imperative shell around `publisher.flow.FlowControl`, which decides what to read, send,
hold, probe and commit. One thread owns the Kafka consumer and the flow control; sender
threads only deliver batches and hand results back through a queue, and conversion runs in
a worker process (`Conversions`). A record's offset is committed (Kafka, then SSM once the
broker acknowledged the commit) only once it and every record before it in its partition
were accepted by CloudTrail, dead-lettered (DLQ write acknowledged) or filtered by a rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from falcon_lake import dead_letter
from falcon_lake.headers import CREATED_MS, EVENT_TYPE, FEED, OFFSET, as_bytes_pairs, first_values, int_of, text_of
from falcon_lake.offset_store import SsmOffsetStore
from falcon_lake.settings import PublisherSettings, drain_seconds
from publisher.batch import BatchEntry
from publisher.cloudtrail import ChannelHealth, CloudTrailSender, delivery_workers
from publisher.committer import Committer
from publisher.conversion import AUDIT_EVENT, FILTERED, Conversions, Converted
from publisher.convert import Converter
from publisher.deliveries import Completion, Deliveries
from publisher.filter import EventFilter, Filtered
from publisher.flow import FlowConfig, FlowControl, Send
from publisher.group_lag import GroupLag
from publisher.membership import MembershipWatch, close_within
from publisher.metrics import PublisherMetrics
from publisher.rate_limit import AdaptiveRateLimiter

log = logging.getLogger(__name__)

# Records read (and converted) together: small enough that a chunk is converted in a few ms.
CONSUME_CHUNK = 250
SUMMARY_EVERY_S = 30.0
# How long consume() may block while requests are out: a finished request waits at most this
# long for its partition's next batch.
BUSY_WAIT_S = 0.005
IDLE_WAIT_S = 0.05
# With the budget used up (the normal state of a drain at the API's ceiling) consume() is still
# called this often for one record: it serves commit acknowledgements, which move the send
# window, and rebalance callbacks. The records so taken exceed the budget by at most one per
# call until the flow control pauses everything (FlowConfig.keepalive_s).
SERVE_EVERY_S = 0.01
CLOSE_STUCK_S = 10.0  # closing a consumer that fell out of its group


@dataclass(frozen=True, slots=True)
class _Converting:
    """A consumed record waiting for its conversion result."""

    msg: Message
    partition: int
    generation: int
    offset: int
    created_ms: int | None


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
        limiter: AdaptiveRateLimiter | None = None,
        lag: GroupLag | None = None,
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
        self.metrics = metrics
        self.stop = stop
        self.limiter = limiter
        self.lag = lag
        self.flow = FlowControl(FlowConfig.from_settings(settings, CONSUME_CHUNK), settings.kafka.topic_partitions)
        self._deliveries = Deliveries(sender, delivery_workers(settings))
        self.commits = Committer(consumer, settings.kafka.topic, self.flow, offset_store, metrics)
        self._paused: set[int] = set()  # partitions this loop paused and did not resume
        self._abandon_all = False
        self._lag_seen = 0
        self._last_consume = 0.0
        self._share = -1.0
        self.fatal: str | None = None
        self.membership = MembershipWatch()
        self.out_of_group = False
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

    # ---- rebalance and commit callbacks (called inside consume(), on this thread) -------------
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned_once = True
        mine = [tp for tp in partitions if tp.topic == self.settings.kafka.topic]
        # librdkafka keeps an application pause across unassign/assign: a partition that comes
        # back to this member would stay paused for good. Assignment always starts unpaused;
        # the flow control pauses it again at once if it must (channel down, stopping).
        if mine:
            consumer.resume(mine)
        self._paused -= {tp.partition for tp in mine}
        self.flow.assigned([tp.partition for tp in mine])
        self.commits.assigned([tp.partition for tp in mine])  # read their commits' feed offsets (for SSM)
        log.info("assigned partitions %s", sorted(tp.partition for tp in mine))
        self._apply_pauses()
        self._update_share()

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions if self.flow.generation(tp.partition) is not None]
        if not revoked:
            return
        log.info(
            "partitions %s revoked: finishing in-flight work (up to %.0fs)", revoked, self.settings.revoke_timeout_s
        )
        deadline = time.monotonic() + self.settings.revoke_timeout_s
        while time.monotonic() < deadline and self.flow.in_flight(revoked):
            self._drain(timeout=0.05)
            self.dlq.poll(0)
        self.dlq.flush(max(0.0, deadline - time.monotonic()))
        self._drain(timeout=0)
        self.commits.commit_now(only=revoked)
        for p in revoked:
            left = self.flow.unfinished(p)
            if left:
                log.warning("partition %d revoked with %d records unfinished; the next owner re-sends them", p, left)
        self.flow.revoked(revoked)
        self._paused -= set(revoked)
        self._update_share()

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [tp.partition for tp in partitions]
        log.warning("partitions %s lost (session timed out); dropping their state without committing", lost)
        self.flow.lost(lost)
        self._paused -= set(lost)
        self._update_share()

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.commits.on_commit(err, partitions)

    # ---- per record ---------------------------------------------------------------------------
    def _accept(self, messages: list[Message]) -> None:
        """Track every consumed record, finish what the event-type header rules out without
        reading its value, and send the rest to conversion as one chunk (`_collect` applies
        the results in order)."""
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
            headers = first_values(msg.headers())
            key = msg.key()
            feed = text_of(headers.get(FEED)) or (key.decode("utf-8", "replace") if isinstance(key, bytes) else "0")
            generation = self.flow.consumed(partition, offset, feed, int_of(headers.get(OFFSET)))
            if generation is None:
                continue
            consumed[partition] = consumed.get(partition, 0) + 1
            event_type = text_of(headers.get(EVENT_TYPE))
            if event_type is not None:
                filtered = self.filter.check_event_type(event_type)  # never parses JSON
                if filtered is not None:
                    self._filtered(partition, generation, offset, filtered)
                    continue
            chunk.append((msg.value() or b"", feed))
            waiting.append(_Converting(msg, partition, generation, offset, int_of(headers.get(CREATED_MS))))
        for partition, count in consumed.items():
            self.metrics.consumed.labels(str(partition)).inc(count)
            self.counts["consumed"] += count
        if chunk:
            self._converting.append((waiting, self.conversions.submit(chunk)))

    def _collect(self) -> None:
        """Apply the conversion results that are ready, in consume order."""
        now = time.monotonic()
        self.conversions.poll()
        if self.conversions.dead is not None and self.fatal is None:
            self._fail(f"conversion failed: {self.conversions.dead}")
            return
        while self._converting and self._converting[0][1].done():
            waiting, future = self._converting.popleft()
            try:
                results = future.result()
            except Exception as exc:  # the worker process died: nothing converts any more
                self._fail(f"conversion failed: {type(exc).__name__}: {exc}")
                return
            converted = 0
            for record, (kind, first, second, size) in zip(waiting, results, strict=True):
                if self.flow.generation(record.partition) != record.generation:
                    continue  # revoked meanwhile: the next owner reads it again
                if kind == AUDIT_EVENT:
                    converted += 1
                    entry = BatchEntry(
                        first, second, record.partition, record.offset, record.created_ms, size, record.msg
                    )
                    self.flow.converted(record.generation, entry, now)
                elif kind == FILTERED:
                    self._filtered(record.partition, record.generation, record.offset, Filtered(first, second))
                else:
                    self._dead_letter(record.msg, record.generation, "convert", first, second)
            self.metrics.converted.inc(converted)

    def _filtered(self, partition: int, generation: int, offset: int, filtered: Filtered) -> None:
        self.metrics.filtered.labels(filtered.rule).inc()
        self.counts["filtered"] += 1
        log.debug("filtered [%d]@%d (%s: %s)", partition, offset, filtered.rule, filtered.detail)
        self.flow.finished(partition, generation, offset)

    def _dead_letter(self, msg: Message, generation: int, stage: str, code: str, message: str) -> None:
        """Write the record to the DLQ; it finishes when the broker acknowledged the write. Any
        failure to write is fatal: nothing past the record is committed, the process exits 1."""
        partition, offset = msg.partition() or 0, msg.offset() or 0
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
                self._fail(f"DLQ write of {msg.topic()}[{partition}]@{offset} failed: {err.str()}")
                return
            self.metrics.dead_lettered.labels(stage, code).inc()
            self.counts["dead_lettered"] += 1
            self.flow.finished(partition, generation, offset)

        while self.fatal is None:
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
            except KafkaException as exc:
                self._fail(f"DLQ write of {msg.topic()}[{partition}]@{offset} failed: {exc}")
                return

    def _fail(self, reason: str) -> None:
        if self.fatal is None:
            log.error("%s; stopping without committing past it", reason)
            self.fatal = reason
        self.stop.set()

    # ---- delivery ---------------------------------------------------------------------------
    def _dispatch(self, force: bool = False) -> None:
        for send in self.flow.sends(time.monotonic(), force=force):
            self.metrics.in_flight.inc()
            if send.batch is not None:
                self.metrics.batch_size.observe(len(send.batch))
                self.metrics.sent.inc(len(send.batch))
            if send.probe:
                log.info(
                    "probing the CloudTrail channel with %s",
                    "a request that stores nothing"
                    if send.batch is None
                    else f"the oldest held batch of partition {send.partition}",
                )
            self._deliveries.submit(send, self._abandon_check(send))

    def _abandon_check(self, send: Send) -> Callable[[], bool]:
        return lambda: self._abandon_all or self.flow.generation(send.partition) != send.generation

    def _drain(self, timeout: float) -> None:
        for done in self._deliveries.completed(timeout):
            self._complete(done)

    def _complete(self, done: Completion) -> None:
        self.metrics.in_flight.dec()
        send, result = done.send, done.result
        current = self.flow.generation(send.partition) == send.generation
        rejected = self.flow.request_finished(send, result, time.monotonic())
        self._publish_channel()
        if done.error is not None:
            self._fail(f"delivery failed: {done.error}")
            return
        if result is None:
            return
        self.counts["requests"] += result.requests
        self.metrics.retries.inc(result.retries)
        if send.batch is None or not current:
            return
        now = time.time()
        for entry in result.accepted:
            if entry.created_ms is not None:
                self.metrics.event_age.observe(max(0.0, now - entry.created_ms / 1000))
        self.metrics.accepted.inc(len(result.accepted))
        self.counts["accepted"] += len(result.accepted)
        if result.accepted or result.rejected:
            ids = [e.id for e in send.batch.entries]
            log.info(
                "partition %d: %d accepted, %d rejected in %d request(s) (ids %s .. %s, request %s)",
                send.partition,
                len(result.accepted),
                len(result.rejected),
                result.requests,
                ids[0],
                ids[-1],
                ",".join(r for r in result.request_ids if r)[-80:] or "-",
            )
        for entry, code, message in rejected:
            self.metrics.failed.labels(code).inc()
            if entry.record is None:
                self._fail(f"no source record for rejected event {entry.id}")
                return
            self._dead_letter(entry.record, send.generation, "deliver", code, message)

    def _publish_channel(self) -> None:
        """Mirror the flow control's channel state for /readyz, the metric and the log."""
        reason = self.flow.down_reason
        if reason is not None and reason != self.health.down_reason:
            self.health.down(reason)
        elif reason is None and self.health.down_reason is not None:
            self.health.up()
        self.metrics.channel_up.set(1 if reason is None else 0)

    # ---- flow control and commits -------------------------------------------------------------
    def _apply_pauses(self) -> None:
        """Pause and resume so that librdkafka's state is the flow control's."""
        want = self.flow.paused()
        topic = self.settings.kafka.topic
        to_pause, to_resume = want - self._paused, self._paused - want
        if to_pause:
            log.debug("pausing partitions %s: %s", sorted(to_pause), self.flow.pause_reason())
            self.consumer.pause([TopicPartition(topic, p) for p in sorted(to_pause)])
        if to_resume:
            log.debug("resuming partitions %s", sorted(to_resume))
            self.consumer.resume([TopicPartition(topic, p) for p in sorted(to_resume)])
        self._paused = set(want)

    def _update_share(self) -> None:
        """This member's share of the group's PUT_RATE_LIMIT; each new reading also feeds MembershipWatch."""
        if self.lag is not None:
            reading = self.lag.latest()
            if reading is not None and reading.seq != self._lag_seen:
                self._lag_seen = reading.seq
                self.flow.group_backlog(reading.backlog, reading.partitions)
                member = self.consumer.memberid()
                stuck = self.membership.observe(time.monotonic(), bool(self.flow.owned), member, reading.members)
                if stuck is not None:
                    self.out_of_group = True
                    self._fail(stuck)
        share = self.flow.rate_share(self.settings.rate_limit_rps)
        if self.limiter is not None and abs(share - self._share) > 0.01:
            log.info("request rate share %.1f/s of the group's %.0f/s", share, self.settings.rate_limit_rps)
            self._share = share
            self.limiter.set_max_rate(share)

    def _step(self) -> None:
        """One turn of the loop: read, convert, batch, send, collect results, commit."""
        now = time.monotonic()
        self.commits.catch_up(now)
        self.flow.tick(now)
        self._apply_pauses()
        budget = self.flow.consume_budget()
        busy = self.flow.in_flight() > 0 or bool(self._converting)
        messages: list[Message] = []
        if budget > 0 or self.flow.must_poll():
            # While paused (channel down, budget used up for a while) consume() returns nothing of
            # the paused partitions; it serves callbacks and keeps this member in the group.
            wait = BUSY_WAIT_S if busy else IDLE_WAIT_S
            messages = self.consumer.consume(num_messages=max(1, budget or CONSUME_CHUNK), timeout=wait)
            self._last_consume = now
        elif now - self._last_consume >= SERVE_EVERY_S:
            messages = self.consumer.consume(num_messages=1, timeout=0)
            self._last_consume = now
        else:
            self._drain(timeout=BUSY_WAIT_S)  # the budget is used up: wait for a request instead
        self._accept(messages)
        self._collect()
        self._dispatch()
        self.dlq.poll(0)
        self._drain(timeout=0)
        self._collect()
        self._dispatch()
        self.commits.commit_async()
        self._update_share()
        self.metrics.buffered.set(self.flow.unfinished())
        self._publish_channel()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        if self.commits.store is not None:
            self.commits.store.run_in_background(self._store_stop)
        if self.lag is not None:
            self.lag.start()
        self.consumer.subscribe(
            [self.settings.kafka.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
        )
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while not self.stop.is_set():
            self._step()
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + SUMMARY_EVERY_S
                log.info(
                    "summary: %s, unfinished %d, channel %s; %s",
                    self.counts,
                    self.flow.unfinished(),
                    "up" if self.flow.channel_up else f"down ({self.flow.down_reason})",
                    self.flow.describe(),
                )
        return self._shutdown()

    def _shutdown(self) -> int:
        deadline = time.monotonic() + drain_seconds(self.settings.shutdown_timeout_s)
        log.info("stopping: delivering what was consumed (up to %.0fs)", self.settings.shutdown_timeout_s)
        self.flow.stop()
        self._apply_pauses()  # pause every partition: nothing new is read
        if self.fatal is None:
            while time.monotonic() < deadline and not (self.flow.idle() and not self._converting):
                self._collect()
                self._dispatch(force=True)
                self.dlq.poll(0)
                self._drain(timeout=0.05)
                # Commit acknowledgements, and stay in the group (paused: no new records).
                self._accept(self.consumer.consume(num_messages=CONSUME_CHUNK, timeout=0))
                self.commits.commit_async()
                if self.fatal is not None:
                    break
            self.dlq.flush(max(0.0, deadline - time.monotonic()))
            self._drain(timeout=0)
        self._abandon_all = True
        left = self.flow.unfinished()
        self._store_stop.set()
        if self.lag is not None:
            self.lag.stop()
        self.commits.commit_now()  # safe even after a fatal error: only finished records count
        self._deliveries.shutdown()
        self.conversions.close()
        # Revocation during close must not commit again or wait for anything.
        self.flow.revoked(self.flow.owned)
        if not self.out_of_group:
            self.consumer.close()
        elif not close_within(self.consumer, CLOSE_STUCK_S):  # its LeaveGroup may never be answered
            log.warning("the Kafka consumer did not close within %.0fs; exiting without it", CLOSE_STUCK_S)
        if self.fatal is not None:
            log.error("stopped on a fatal error: %s", self.fatal)
            return 1
        if left:
            log.warning("%d records were not finished by the deadline; they are re-sent after restart", left)
        log.info("stopped: %s", self.counts)
        return 0
