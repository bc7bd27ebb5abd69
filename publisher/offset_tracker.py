"""What may be committed: per Kafka partition, the contiguous prefix of finished records.

A record is finished when CloudTrail accepted it, it was dead-lettered (and the DLQ
write acknowledged) or a named filter rule dropped it. Records finish out of order
(several requests in flight), but the commit point only moves past a record once every
record before it is finished too. No I/O here; the consumer loop owns one tracker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Partition:
    # Offsets consumed and not yet committable, in consume order, with their Falcon position.
    pending: deque[tuple[int, str | None, int | None]] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    commit_at: int | None = None  # next Kafka offset to consume = what to commit
    feeds: dict[str, int] = field(default_factory=dict)  # feed -> last Falcon offset in the committable prefix


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def assign(self, partition: int) -> None:
        self._partitions.setdefault(partition, _Partition())

    def revoke(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def owns(self, partition: int) -> bool:
        return partition in self._partitions

    def add(self, partition: int, offset: int, feed: str | None = None, falcon_offset: int | None = None) -> None:
        """A record was consumed; it must finish before anything after it is committed."""
        state = self._partitions.setdefault(partition, _Partition())
        state.pending.append((offset, feed, falcon_offset))

    def finish(self, partition: int, offset: int) -> None:
        """The record is delivered, dead-lettered or filtered. Unknown partitions are ignored
        (a result that arrives after the partition was revoked)."""
        state = self._partitions.get(partition)
        if state is None:
            return
        state.done.add(offset)
        while state.pending and state.pending[0][0] in state.done:
            done_offset, feed, falcon_offset = state.pending.popleft()
            state.done.discard(done_offset)
            state.commit_at = done_offset + 1
            if feed is not None and falcon_offset is not None and falcon_offset > state.feeds.get(feed, -1):
                state.feeds[feed] = falcon_offset

    def seed_feeds(self, partition: int, feeds: dict[str, int]) -> None:
        """Feed offsets a commit of an earlier owner recorded (its metadata): later commits carry
        them on, so every commit describes all the partition's feeds, not only those read since."""
        state = self._partitions.get(partition)
        if state is None:
            return
        for feed, offset in feeds.items():
            if offset > state.feeds.get(feed, -1):
                state.feeds[feed] = offset

    def commit_offsets(self) -> dict[int, int]:
        """Per partition, the offset to commit (the next to consume), where anything finished."""
        return {p: s.commit_at for p, s in self._partitions.items() if s.commit_at is not None}

    def partition_feeds(self, partition: int) -> dict[str, int]:
        """Per Falcon feed, the last Falcon offset inside this partition's committable prefix."""
        state = self._partitions.get(partition)
        return {} if state is None else dict(state.feeds)

    def feed_offsets(self) -> dict[str, int]:
        """Per Falcon feed, the last Falcon offset inside the committable prefixes."""
        merged: dict[str, int] = {}
        for state in self._partitions.values():
            for feed, offset in state.feeds.items():
                if offset > merged.get(feed, -1):
                    merged[feed] = offset
        return merged

    def unfinished(self, partition: int | None = None) -> int:
        """How many consumed records are not finished (in one partition, or in all)."""
        states = self._partitions.values() if partition is None else [self._partitions.get(partition, _Partition())]
        return sum(len(s.pending) - len(s.done) for s in states)
