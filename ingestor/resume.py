"""Where each feed resumes: the larger of the last Falcon offset already in Kafka and the SSM value, plus one.

The ingestor writes each feed to one Kafka partition chosen by the Java client's murmur2
partitioner on the feed id (the key) and the topic's partition count, so any Kafka client
would choose the same one, and the last offset of a feed is found by reading that partition
backwards from its end. Two things would mislead that search, and are handled here:

- a partition count that changed since the records were written (someone added partitions):
  every record carries `falcon.partitions`, the count its partition was chosen with, and the
  ingestor refuses to start when the newest records disagree with the topic (`check_partition_count`);
- records re-sent by `falcon-lake dlq redrive` (header `falcon.redriven_from`): old events at
  the tail with old offsets; the search skips them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from falcon_lake import headers as headers_
from falcon_lake.partitioner import partition_for

log = logging.getLogger(__name__)

SCAN_WINDOW = 2_000
# Answers about a partition whose leader is not known yet (a topic created a moment ago, a broker that
# just restarted, a client whose metadata is older than the topic): asked again until the deadline.
LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}


@dataclass(frozen=True)
class ResumePoint:
    feed: str
    offset: int | None  # None: start at the newest event (whence=2)
    source: str  # "kafka", "ssm", "config"


def watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 30.0) -> tuple[int, int]:
    """The partition's low and high watermarks, asking again while its leader is moving."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=max(1.0, deadline - time.monotonic()), cached=False
            )
            return low, high
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in LEADER_MOVING or time.monotonic() > deadline:
                raise
            log.debug("watermarks of %s[%d]: %s; asking again", topic, partition, err.str())
            time.sleep(0.2)


def last_offset_in_topic(consumer: Consumer, topic: str, partition: int, feed: str) -> int | None:
    """The highest falcon.offset the ingestor wrote for `feed` in the partition, reading backwards window
    by window; redriven records are passed over, however many there are."""
    low, high = watermarks(consumer, topic, partition)
    end = high
    while end > low:
        start = max(low, end - SCAN_WINDOW)
        best: int | None = None
        consumer.assign([TopicPartition(topic, partition, start)])
        position = start
        while position < end:
            msg = consumer.poll(5.0)
            if msg is None:
                raise KafkaException(f"reading {topic}[{partition}] from {position} timed out")
            if msg.error():
                raise KafkaException(msg.error())
            position = (msg.offset() or 0) + 1
            headers = dict(msg.headers() or [])
            raw_offset = headers.get(headers_.OFFSET)
            if (
                headers.get(headers_.FEED) == feed.encode()
                and isinstance(raw_offset, bytes)
                and headers_.REDRIVEN_FROM not in headers  # an old event sent again: not where the feed is
            ):
                offset = int(raw_offset)
                best = offset if best is None or offset > best else best
        consumer.unassign()
        if best is not None:
            return best
        end = start
    return None


class PartitionCountChanged(RuntimeError):
    """The topic's partition count differs from the one its records were written with."""


def check_partition_count(consumer: Consumer, topic: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Raise PartitionCountChanged when the newest record of a partition was written for another count.

    Reads one record per non-empty partition (its newest). Records without `falcon.partitions`
    (written by a version before it existed) prove nothing and are passed over.
    """
    # Learn the topic's partitions first: a topic created a moment ago may be unknown to this client yet.
    deadline = time.monotonic() + timeout_s
    while True:
        described = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if described is not None and described.error is None and len(described.partitions) >= partitions:
            break
        if time.monotonic() > deadline:
            raise KafkaException(f"topic {topic} does not list its {partitions} partitions yet")
        time.sleep(0.2)
    assignment = []
    for partition in range(partitions):
        low, high = watermarks(consumer, topic, partition, max(1.0, deadline - time.monotonic()))
        if high > low:
            assignment.append(TopicPartition(topic, partition, high - 1))
    if not assignment:
        return
    waiting = {tp.partition for tp in assignment}
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout_s
    try:
        while waiting:
            msg = consumer.poll(1.0)
            if msg is None:
                if time.monotonic() > deadline:
                    raise KafkaException(f"reading the newest records of {topic} timed out (partitions {waiting})")
                continue
            if msg.error():
                raise KafkaException(msg.error())
            partition = msg.partition() or 0
            if partition not in waiting:
                continue
            waiting.discard(partition)
            written = headers_.header_int(msg.headers(), headers_.PARTITIONS)
            if written is not None and written != partitions:
                raise PartitionCountChanged(
                    f"topic {topic} has {partitions} partitions but its records were written when it had {written} "
                    f"(newest record of partition {partition}): resuming would look for feeds in the wrong "
                    "partitions. Never add partitions to the raw topic: point KAFKA_TOPIC at a new topic and replay "
                    "into it (docs/operations.md, Partitions of the raw topic)"
                )
    finally:
        consumer.unassign()


def resume_points(
    consumer: Consumer,
    topic: str,
    partitions: int,
    feeds: list[str],
    ssm_offsets: Mapping[str, int],
    configured_start: str,
) -> dict[str, ResumePoint]:
    """Per feed: max(last offset in Kafka, SSM offset) + 1; else the configured start."""
    points: dict[str, ResumePoint] = {}
    for feed in feeds:
        in_kafka = last_offset_in_topic(consumer, topic, partition_for(feed, partitions), feed)
        in_ssm = ssm_offsets.get(feed)
        if in_kafka is None and in_ssm is None:
            if configured_start == "latest":
                points[feed] = ResumePoint(feed, None, "config")
            else:
                start = 0 if configured_start == "earliest" else int(configured_start)
                points[feed] = ResumePoint(feed, start, "config")
        elif in_ssm is None or (in_kafka is not None and in_kafka >= in_ssm):
            assert in_kafka is not None
            points[feed] = ResumePoint(feed, in_kafka + 1, "kafka")
        else:
            points[feed] = ResumePoint(feed, in_ssm + 1, "ssm")
        log.info(
            "feed %s resumes at %s (kafka last %s, ssm last %s, start %s)",
            feed,
            "newest" if points[feed].offset is None else points[feed].offset,
            in_kafka,
            in_ssm,
            configured_start,
        )
    return points
