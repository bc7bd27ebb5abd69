"""What `falcon-lake dlq redrive` has redriven, per DLQ partition: the functional core.

Kept in the consumer group `<group>-dlq-redrive`: per DLQ partition, the committed offset is
the first record not yet redriven, and the commit's metadata lists the later offsets already
redriven, as ranges (`RedriveMark`). `falcon-lake status` reads the same marks to count what
is still waiting in the DLQ.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from falcon_lake.ops import command as ops_cli
from falcon_lake.ops.command import Watermarks
from falcon_lake.settings import KafkaSettings

METADATA_PREFIX = "falcon-lake-redrive/1 done="
# Kafka keeps at most offset.metadata.max.bytes (default 4096) of commit metadata.
METADATA_LIMIT = 3500


def redrive_group(settings: KafkaSettings) -> str:
    return f"{settings.group_id}-dlq-redrive"


def to_ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive (first, last) ranges covering the offsets."""
    ranges: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if ranges and offset == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], offset)
        else:
            ranges.append((offset, offset))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges, overlapping or adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _range_text(offsets: tuple[int, int]) -> str:
    first, last = offsets
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class RedriveMark:
    """Which records of one DLQ partition were redriven.

    Every record before `next_offset` was redriven (or has expired); `done` lists the later
    ones that were, as inclusive ranges.
    """

    next_offset: int = 0
    done: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_commit(cls, tp: TopicPartition | None) -> RedriveMark:
        offset = ops_cli.committed_offset(tp)
        if offset is None:
            return cls()
        return cls(offset, cls._parse(getattr(tp, "metadata", None) or "", offset))

    @staticmethod
    def _parse(metadata: str, next_offset: int) -> tuple[tuple[int, int], ...]:
        if not metadata.startswith(METADATA_PREFIX):
            return ()
        ranges: list[tuple[int, int]] = []
        for part in metadata[len(METADATA_PREFIX) :].split(","):
            first, _, last = part.strip().partition("-")
            try:
                lo, hi = int(first), int(last or first)
            except ValueError:
                continue  # unreadable metadata only costs a re-examination, never a lost record
            if hi >= lo >= next_offset:
                ranges.append((lo, hi))
        return tuple(sorted(ranges))

    def metadata(self) -> str:
        return METADATA_PREFIX + ",".join(_range_text(r) for r in self.done)

    def is_done(self, offset: int) -> bool:
        if offset < self.next_offset:
            return True
        index = bisect.bisect_right(self.done, (offset, sys.maxsize)) - 1
        return index >= 0 and self.done[index][0] <= offset <= self.done[index][1]

    def scan_from(self, marks: Watermarks) -> int:
        return max(self.next_offset, marks.low)

    def pending(self, marks: Watermarks) -> int:
        """Records the partition still holds that were not redriven."""
        start = self.scan_from(marks)
        if start >= marks.high:
            return 0
        done = sum(max(0, min(b, marks.high - 1) - max(a, start) + 1) for a, b in self.done)
        return marks.high - start - done

    def advanced(self, redriven: Iterable[int], marks: Watermarks) -> tuple[RedriveMark, int]:
        """The mark after `redriven` were re-sent, and how many never-redriven records it had to
        give up on to fit Kafka's metadata limit (0 but for pathological DLQs)."""
        ranges = merge_ranges([*self.done, *to_ranges(redriven)])
        next_offset = self.scan_from(marks)
        joined = 0  # ranges reaching next_offset move it on instead of being remembered
        while joined < len(ranges) and ranges[joined][0] <= next_offset:
            next_offset = max(next_offset, ranges[joined][1] + 1)
            joined += 1
        ranges = ranges[joined:]
        # Keep the newest ranges that fit; the never-redriven records in the gaps before them are given up.
        keep_from = len(ranges)
        size = len(METADATA_PREFIX) - 1  # no comma before the first range
        while keep_from > 0:
            size += len(_range_text(ranges[keep_from - 1])) + 1
            if size > METADATA_LIMIT:
                break
            keep_from -= 1
        given_up = 0
        for first, last in ranges[:keep_from]:
            given_up += first - next_offset
            next_offset = last + 1
        mark = RedriveMark(next_offset, tuple(ranges[keep_from:]))
        return mark, given_up
