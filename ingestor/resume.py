"""Where each feed resumes: the larger of the last Falcon offset already in Kafka and the SSM value, plus one.

The ingestor writes each feed to one Kafka partition chosen by the Java client's murmur2
partitioner on the feed id (the key), so any Kafka client would choose the same one, and
the last offset of a feed is found by reading that partition backwards from its end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from falcon_lake.partitioner import partition_for

log = logging.getLogger(__name__)

SCAN_WINDOW = 2_000


@dataclass(frozen=True)
class ResumePoint:
    feed: str
    offset: int | None  # None: start at the newest event (whence=2)
    source: str  # "kafka", "ssm", "config"


def last_offset_in_topic(consumer: Consumer, topic: str, partition: int, feed: str) -> int | None:
    """The highest falcon.offset of `feed` in the partition, reading backwards window by window."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30, cached=False)
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
            raw_offset = headers.get("falcon.offset")
            if headers.get("falcon.feed") == feed.encode() and isinstance(raw_offset, bytes):
                offset = int(raw_offset)
                best = offset if best is None or offset > best else best
        consumer.unassign()
        if best is not None:
            return best
        end = start
    return None


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
