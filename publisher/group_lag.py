"""Which partitions of the topic have records the publisher group has not committed yet, and
which members the group has.

Read every few seconds on a thread of its own, with clients of its own (they never join the
group: they only ask for the group's committed offsets, the partitions' high watermarks and
the group's description), so a slow broker never stalls the consumer loop. The loop hands the
latest reading to the flow control, which turns it into this member's share of the group's
request rate, and to `MembershipWatch` (publisher/membership.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

READ_EVERY_S = 5.0


@dataclass(frozen=True)
class LagReading:
    seq: int
    backlog: set[int]  # partitions with records past the group's committed offset
    partitions: int  # partitions of the topic
    members: frozenset[str] | None = None  # member ids of the group on the broker; None: not read


def backlog_of(committed: dict[int, int], low: dict[int, int], high: dict[int, int]) -> set[int]:
    """Partitions whose high watermark lies past the committed offset (or past the low
    watermark when the group committed nothing there)."""
    out = set()
    for p, end in high.items():
        start = committed.get(p, -1)
        if start < 0:
            start = low.get(p, 0)
        if end > start:
            out.add(p)
    return out


class GroupLag:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        every_s: float = READ_EVERY_S,
        admin_config: dict[str, Any] | None = None,
    ) -> None:
        """`config`: a consumer's (its group.id is the group read); `admin_config`: a client's,
        to read the group's members too."""
        self._config = config
        self._admin_config = admin_config
        self._topic = topic
        self._every_s = every_s
        self._lock = threading.Lock()
        self._latest: LagReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    def latest(self) -> LagReading | None:
        with self._lock:
            return self._latest

    def read_once(self, consumer: Consumer, admin: AdminClient | None = None) -> LagReading:
        metadata = consumer.list_topics(self._topic, timeout=10)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic is not None else "no such topic")
        partitions = sorted(topic.partitions)
        found = consumer.committed([TopicPartition(self._topic, p) for p in partitions], timeout=10)
        committed = {tp.partition: tp.offset for tp in found}
        low, high = {}, {}
        for p in partitions:
            low[p], high[p] = consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10)
        self._seq += 1
        members = self._members(admin) if admin is not None else None
        return LagReading(self._seq, backlog_of(committed, low, high), len(partitions), members)

    def _members(self, admin: AdminClient) -> frozenset[str] | None:
        group = str(self._config["group.id"])
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException as exc:
            log.debug("group %s not described (%s)", group, exc)
            return None
        return frozenset(member.member_id for member in description.members)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="group-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        consumer = Consumer(self._config)
        admin = AdminClient(self._admin_config) if self._admin_config is not None else None
        try:
            while not self._stop.is_set():
                try:
                    reading = self.read_once(consumer, admin)
                    with self._lock:
                        self._latest = reading
                except KafkaException as exc:
                    log.debug("group lag not read (%s); the last reading stands", exc)
                self._stop.wait(self._every_s)
        finally:
            consumer.close()
