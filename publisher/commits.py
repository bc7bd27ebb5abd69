"""Kafka commits that carry the Falcon feed offsets they cover, so SSM can always catch up.

The SSM parameter is written after the broker acknowledged a commit, at most every few
seconds. A publisher killed between the two leaves SSM behind Kafka, and when its partitions
had nothing left to read, no later commit would ever move SSM again. So each commit stores,
as its metadata, the last Falcon offset of every feed in the partition's committed prefix;
whoever is assigned the partition next reads it back (`committed_feeds`), writes SSM from it
and carries it on in its own commits (`OffsetTracker.seed_feeds`).
"""

from __future__ import annotations

import json
import logging

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger(__name__)

METADATA_KEY = "falcon.feeds"
# The broker refuses longer metadata (offset.metadata.max.bytes, 4096 by default).
METADATA_MAX_BYTES = 4000


def commit_metadata(feeds: dict[str, int]) -> str | None:
    """The metadata of a commit covering `feeds`; None when there are none or too many to fit."""
    if not feeds:
        return None
    text = json.dumps({METADATA_KEY: feeds}, sort_keys=True, separators=(",", ":"))
    return text if len(text.encode()) <= METADATA_MAX_BYTES else None


def feeds_of(metadata: str | None) -> dict[str, int]:
    """The feed offsets in a commit's metadata; {} for anything else (a commit by another tool)."""
    if not metadata:
        return {}
    try:
        value = json.loads(metadata)
    except ValueError:
        return {}
    feeds = value.get(METADATA_KEY) if isinstance(value, dict) else None
    if not isinstance(feeds, dict):
        return {}
    return {
        str(feed): offset for feed, offset in feeds.items() if isinstance(offset, int) and not isinstance(offset, bool)
    }


def commit_list(topic: str, offsets: dict[int, int], feeds: dict[int, dict[str, int]]) -> list[TopicPartition]:
    """TopicPartitions to commit `offsets`, each with the metadata of its feeds."""
    return [TopicPartition(topic, p, o, metadata=commit_metadata(feeds.get(p, {}))) for p, o in sorted(offsets.items())]


def committed_feeds(
    consumer: Consumer, topic: str, partitions: list[int], timeout_s: float
) -> dict[int, dict[str, int]] | None:
    """Per partition, the feed offsets its committed offset covers; None when the broker
    could not be asked (the caller tries again later)."""
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    except KafkaException as exc:
        log.warning("could not read the committed offsets of %s (%s); SSM catches up later", partitions, exc)
        return None
    return {tp.partition: feeds_of(tp.metadata) for tp in committed if tp.error is None}
