"""Where each feed resumes: the last offset in Kafka (read backwards) versus SSM and the configured start."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from falcon_lake.partitioner import partition_for
from ingestor.resume import SCAN_WINDOW, last_offset_in_topic, resume_points


class FakeMessage:
    def __init__(self, offset: int, headers: list[tuple[str, bytes]]) -> None:
        self._offset, self._headers = offset, headers

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def error(self) -> None:
        return None


class FakeConsumer:
    """One topic; each partition a list of (feed, falcon offset) records."""

    def __init__(self, partitions: dict[int, list[tuple[str, int]]]) -> None:
        self.partitions = partitions
        self.position: tuple[int, int] | None = None
        self.read = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.partitions.get(tp.partition, []))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.position = (partitions[0].partition, partitions[0].offset)

    def unassign(self) -> None:
        self.position = None

    def poll(self, timeout: float = 0) -> Any:
        assert self.position is not None
        partition, offset = self.position
        records = self.partitions[partition]
        if offset >= len(records):
            return None
        self.position = (partition, offset + 1)
        self.read += 1
        feed, falcon_offset = records[offset]
        return FakeMessage(offset, [("falcon.feed", feed.encode()), ("falcon.offset", str(falcon_offset).encode())])


def test_the_last_offset_of_a_feed_is_found_behind_many_records_of_another_feed() -> None:
    records = [("0", o) for o in range(100)] + [("1", o) for o in range(3 * SCAN_WINDOW)]
    consumer = FakeConsumer({2: records})
    assert last_offset_in_topic(consumer, "t", 2, "0") == 99  # type: ignore[arg-type]
    assert last_offset_in_topic(consumer, "t", 2, "1") == 3 * SCAN_WINDOW - 1  # type: ignore[arg-type]
    assert last_offset_in_topic(consumer, "t", 2, "9") is None  # type: ignore[arg-type]


def test_only_the_newest_window_is_read_when_the_feed_is_there() -> None:
    consumer = FakeConsumer({0: [("0", o) for o in range(10 * SCAN_WINDOW)]})
    assert last_offset_in_topic(consumer, "t", 0, "0") == 10 * SCAN_WINDOW - 1  # type: ignore[arg-type]
    assert consumer.read == SCAN_WINDOW


@pytest.mark.parametrize(
    ("in_kafka", "in_ssm", "start", "expected"),
    [
        (99, 50, "earliest", (100, "kafka")),
        (99, None, "latest", (100, "kafka")),
        (None, 1234, "earliest", (1235, "ssm")),  # the old gateway's value on a first start
        (10, 20, "earliest", (21, "ssm")),
        (20, 20, "earliest", (21, "kafka")),
        (None, None, "earliest", (0, "config")),
        (None, None, "latest", (None, "config")),
        (None, None, "500", (500, "config")),
    ],
)
def test_resume_point_is_the_larger_of_kafka_and_ssm_plus_one_else_the_configured_start(
    in_kafka: int | None, in_ssm: int | None, start: str, expected: tuple[int | None, str]
) -> None:
    partitions = 3
    records = [("0", o) for o in range(in_kafka + 1)] if in_kafka is not None else []
    consumer = FakeConsumer({partition_for("0", partitions): records})
    ssm = {"0": in_ssm} if in_ssm is not None else {}
    point = resume_points(consumer, "t", partitions, ["0"], ssm, start)["0"]  # type: ignore[arg-type]
    assert (point.offset, point.source) == expected
