"""Kafka commits and the SSM writes that follow them, run on the publisher loop's thread.

What may be committed is decided by `FlowControl`; this carries it out: asynchronous commits
each turn, a synchronous one at revocation and shutdown, the broker's acknowledgements back
into the flow control (which moves the send window), SSM advanced from the feed offsets an
acknowledged commit covers, and, for newly assigned partitions, SSM caught up from the feed
offsets stored with the previous owner's commits (`publisher.commits`).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from falcon_lake.offset_store import SsmOffsetStore
from publisher.commits import commit_list, committed_feeds
from publisher.flow import FlowControl
from publisher.metrics import PublisherMetrics

log = logging.getLogger(__name__)

# At revocation and shutdown the SSM write is retried this long (a transient SSM error must not
# leave the parameter behind what Kafka has committed).
SSM_LAST_WRITE_S = 5.0
# Reading the commits of newly assigned partitions (for SSM): how long to wait, when to retry.
CATCH_UP_TIMEOUT_S, CATCH_UP_RETRY_S = 2.0, 5.0


class Committer:
    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        flow: FlowControl,
        store: SsmOffsetStore | None,
        metrics: PublisherMetrics,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.flow = flow
        self.store = store
        self.metrics = metrics
        self._catch_up: set[int] = set()  # assigned partitions whose commit metadata is not read yet
        self._catch_up_at = 0.0

    def assigned(self, partitions: list[int]) -> None:
        """Read these partitions' last commits for their feed offsets (on a later turn)."""
        self._catch_up |= set(partitions)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to a commit: the send window moves only with acknowledged commits."""
        now = time.monotonic()
        mine = [tp for tp in partitions if tp.topic == self.topic]
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("Kafka commit failed (%s); asked again shortly, sending waits", err.str())
            for tp in mine:
                self.flow.commit_failed(tp.partition, now)
            return
        for tp in mine:
            if tp.error is not None:
                log.warning("Kafka commit of partition %d failed (%s)", tp.partition, tp.error.str())
                self.flow.commit_failed(tp.partition, now)
                continue
            self._acknowledged(tp.partition, tp.offset)

    def commit_async(self) -> None:
        """Commit what the flow control allows now; the answer comes to `on_commit`."""
        offsets = self.flow.commits(time.monotonic())
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=commit_list(self.topic, offsets, self._feeds(offsets)), asynchronous=True)
        except KafkaException as exc:
            log.warning("Kafka commit failed (%s); asked again shortly", exc)
            for p in offsets:
                self.flow.commit_failed(p, time.monotonic())

    def commit_now(self, only: list[int] | None = None) -> None:
        """Commit synchronously (revocation, shutdown), then write SSM at once."""
        offsets = self.flow.commits(time.monotonic(), only=only, urgent=True)
        if offsets:
            try:
                done = self.consumer.commit(
                    offsets=commit_list(self.topic, offsets, self._feeds(offsets)), asynchronous=False
                )
            except KafkaException as exc:
                log.warning("Kafka commit failed (%s); the next owner re-sends from the last commit", exc)
                done = []
            for tp in done or []:
                if tp.error is None and tp.topic == self.topic:
                    self._acknowledged(tp.partition, tp.offset)
        if self.store is not None:
            self.store.flush_before_exit(SSM_LAST_WRITE_S)

    def catch_up(self, now: float) -> None:
        """When due: write SSM from the feed offsets stored with the commits of newly assigned
        partitions (an owner killed before its SSM write), and carry them on in this member's commits."""
        if not self._catch_up or now < self._catch_up_at:
            return
        partitions = sorted(p for p in self._catch_up if self.flow.generation(p) is not None)
        self._catch_up_at = now + CATCH_UP_RETRY_S
        found = committed_feeds(self.consumer, self.topic, partitions, CATCH_UP_TIMEOUT_S)
        if found is None:
            return
        self._catch_up.clear()
        for partition, feeds in found.items():
            self.flow.tracker.seed_feeds(partition, feeds)
            if feeds and self.store is not None:
                self.store.advance(feeds)

    def _acknowledged(self, partition: int, offset: int) -> None:
        feeds = self.flow.commit_acknowledged(partition, offset)
        self.metrics.committed.labels(str(partition)).set(offset)
        if feeds and self.store is not None:
            self.store.advance(feeds)

    def _feeds(self, offsets: dict[int, int]) -> dict[int, dict[str, int]]:
        return {p: self.flow.commit_feeds(p, o) for p, o in offsets.items()}
