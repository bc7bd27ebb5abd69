"""The publisher's flow control: what to fetch, send, hold, probe and commit next. No I/O.

`FlowControl` is the functional core the consumer loop (`publisher/loop.py`) drives. The
loop reports what happened (records consumed or finished, a batch converted, a request
finished, a commit acknowledged or failed, partitions assigned, revoked or lost, time
passing) and carries out what the core decides:

- **consume budget**: how many records to ask `consume()` for, so that at most
  `max_buffered` consumed records are unfinished. Backpressure is this budget, not
  `pause()` (which throws away librdkafka's prefetch); partitions are paused only while
  the channel is down, at shutdown, or when the budget stayed used up for
  `keepalive_s` (the loop must keep calling `consume()` within max.poll.interval.ms);
- **sends**: per partition, batches go out while fewer than `max_in_flight` of its sent
  batches lie past its last *acknowledged* commit: that window is the duplicate bound of a
  crash, and it stops sending when commits fail or lag;
- **channel**: a channel error holds the unfinished part of a batch; while the channel is
  down exactly one probe request is out (the oldest held batch, or a request that cannot
  store anything when none is held), retried with capped backoff; its success brings the
  channel up and resumes every owned partition;
- **commits**: per partition the contiguous finished prefix (`OffsetTracker`), asked for
  once and again after `commit_retry_s` until acknowledged;
- **rate share**: this member's part of the group's request rate (`rate_share`).

Every method takes `now` (seconds, monotonic) where time matters; nothing here sleeps.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from falcon_lake.settings import PublisherSettings
from publisher.batch import AuditEventBatch, BatchEntry
from publisher.offset_tracker import OffsetTracker

ORPHAN_COMMITS_KEPT = 16  # per partition: unacknowledged commits of generations that left


@dataclass(frozen=True)
class FlowConfig:
    max_buffered: int = 5_000  # consumed records not yet finished, all partitions together
    max_in_flight: int = 4  # sent batches per partition past its last acknowledged commit
    batch_max_events: int = 100
    batch_max_bytes: int = 1_000_000
    linger_s: float = 0.2
    consume_chunk: int = 250  # records per consume() call at most
    keepalive_s: float = 1.0  # budget used up this long: pause all and keep polling
    probe_base_s: float = 1.0
    probe_cap_s: float = 30.0
    commit_retry_s: float = 2.0  # an unacknowledged commit is asked for again after this

    @classmethod
    def from_settings(cls, settings: PublisherSettings, consume_chunk: int) -> FlowConfig:
        return cls(
            max_buffered=settings.max_buffered_records,
            max_in_flight=settings.max_in_flight_per_partition,
            batch_max_events=settings.batch_max_events,
            batch_max_bytes=settings.batch_max_bytes,
            linger_s=settings.linger_ms / 1000.0,
            consume_chunk=consume_chunk,
        )


@dataclass
class Send:
    """One request the loop must make. `batch` None: a probe that cannot store anything."""

    partition: int
    generation: int
    batch: AuditEventBatch | None
    probe: bool = False
    seq: int = 0


@dataclass
class Outcome:
    """What became of a Send: accepted entries finish, rejected go to the DLQ, and on a
    channel error `remaining` (the entries not finished) is held for a later send."""

    accepted: list[BatchEntry] = field(default_factory=list)
    rejected: list[tuple[BatchEntry, str, str]] = field(default_factory=list)
    channel_error: str | None = None
    remaining: AuditEventBatch | None = None


@dataclass
class _Partition:
    generation: int
    open_batch: AuditEventBatch | None = None
    batch_ids: set[str] = field(default_factory=set)
    ready: deque[AuditEventBatch] = field(default_factory=deque)  # sealed, never sent
    held: list[AuditEventBatch] = field(default_factory=list)  # sent, came back unfinished (channel down)
    window: deque[int] = field(default_factory=deque)  # last offset of each sent batch past the acked commit
    in_flight: int = 0
    acked: int | None = None  # last acknowledged commit (next offset to read)
    requested: int | None = None  # last commit asked for
    requested_at: float = float("-inf")
    pending_feeds: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # commit offset -> feeds


class FlowControl:
    def __init__(self, config: FlowConfig, total_partitions: int = 1) -> None:
        self.config = config
        self.tracker = OffsetTracker()
        self._parts: dict[int, _Partition] = {}
        self._generations = itertools.count(1)
        self._seqs = itertools.count(1)
        self.down_reason: str | None = None
        self._probe_attempt = 0
        self._probe_at = 0.0
        self._probe_out = False
        self.stopping = False
        self._zero_budget_since: float | None = None
        self._idle_paused = False
        self.total_partitions = max(1, total_partitions)
        self._backlog: set[int] | None = None  # partitions of the topic with records not committed by the group
        # Feed offsets of commits asked for by a generation that has since left: their
        # acknowledgement may still arrive (an async commit in flight at a revocation, or at a
        # loss during a broker restart), and SSM must still learn what the broker stored.
        self._orphan_feeds: dict[int, list[tuple[int, dict[str, int]]]] = {}

    # ---- ownership ---------------------------------------------------------------------------
    @property
    def owned(self) -> list[int]:
        return sorted(self._parts)

    def generation(self, partition: int) -> int | None:
        state = self._parts.get(partition)
        return None if state is None else state.generation

    def assigned(self, partitions: list[int]) -> None:
        """Partitions joined this member: fresh state (an old owner's leftovers are read again)."""
        self.revoked(partitions)  # (assigned twice without a revocation: the old one left)
        for p in partitions:
            self._parts[p] = _Partition(next(self._generations))
            self.tracker.assign(p)

    def revoked(self, partitions: list[int]) -> None:
        """Partitions left this member (after their final commit, or lost): forget them, except
        the feed offsets of commits still unacknowledged (see `commit_acknowledged`)."""
        for p in partitions:
            state = self._parts.pop(p, None)
            self.tracker.revoke(p)
            if state is not None and state.pending_feeds:
                orphans = self._orphan_feeds.setdefault(p, [])
                orphans.extend(state.pending_feeds)
                orphans.sort(key=lambda entry: entry[0])
                del orphans[:-ORPHAN_COMMITS_KEPT]

    lost = revoked

    def in_flight(self, partitions: list[int] | None = None) -> int:
        chosen = self._parts if partitions is None else [p for p in partitions if p in self._parts]
        return sum(self._parts[p].in_flight for p in chosen)

    # ---- records ------------------------------------------------------------------------------
    def consumed(self, partition: int, offset: int, feed: str | None, falcon_offset: int | None) -> int | None:
        """A record was read; returns its generation, None when the partition is not owned."""
        state = self._parts.get(partition)
        if state is None:
            return None
        self.tracker.add(partition, offset, feed, falcon_offset)
        return state.generation

    def finished(self, partition: int, generation: int, offset: int) -> None:
        """Filtered, or its DLQ write acknowledged."""
        if self.generation(partition) == generation:
            self.tracker.finish(partition, offset)

    def converted(self, generation: int, entry: BatchEntry, now: float) -> None:
        """An audit event to send: it joins its partition's open batch."""
        state = self._parts.get(entry.partition)
        if state is None or state.generation != generation:
            return
        batch = state.open_batch
        if batch is not None and (not batch.fits(entry) or entry.id in state.batch_ids):
            self._seal(state)
            batch = None
        if batch is None:
            batch = state.open_batch = AuditEventBatch(
                entry.partition, self.config.batch_max_events, self.config.batch_max_bytes, opened_at=now
            )
        batch.add(entry, now)
        state.batch_ids.add(entry.id)
        if batch.full():
            self._seal(state)

    @staticmethod
    def _seal(state: _Partition) -> None:
        if state.open_batch is not None and len(state.open_batch):
            state.ready.append(state.open_batch)
        state.open_batch = None
        state.batch_ids = set()

    def unfinished(self, partition: int | None = None) -> int:
        return self.tracker.unfinished(partition)

    # ---- what to read ---------------------------------------------------------------------------
    def consume_budget(self) -> int:
        """Records to ask consume() for now (0: read nothing)."""
        if self.stopping or self.down_reason is not None or not self._parts:
            return 0
        return max(0, min(self.config.consume_chunk, self.config.max_buffered - self.tracker.unfinished()))

    def paused(self) -> set[int]:
        """Owned partitions that must be paused now; the others must not be."""
        return set(self._parts) if self.pause_reason() else set()

    def pause_reason(self) -> str:
        """Why every owned partition must be paused now (also for the log); "" when none must."""
        if self.stopping:
            return "stopping"
        if self.down_reason is not None:
            return f"channel down ({self.down_reason})"
        if self._idle_paused:
            return f"budget used up for {self.config.keepalive_s:g}s ({self.tracker.unfinished()} records held)"
        return ""

    def tick(self, now: float) -> None:
        """Time passed: note a budget that stays used up (the loop must keep polling)."""
        free = self.config.max_buffered - self.tracker.unfinished()
        if free > 0:
            self._zero_budget_since = None
            if self._idle_paused and free >= self.config.max_buffered // 2:
                self._idle_paused = False
        elif self._zero_budget_since is None:
            self._zero_budget_since = now
        elif now - self._zero_budget_since >= self.config.keepalive_s:
            self._idle_paused = True

    def must_poll(self) -> bool:
        """consume() must be called even with no budget: partitions are paused, so it only serves
        callbacks and keeps this member in the group."""
        return bool(self.paused()) or not self._parts

    # ---- what to send ---------------------------------------------------------------------------
    def sends(self, now: float, force: bool = False) -> list[Send]:
        """Requests to make now. `force` seals open batches whatever their age (shutdown)."""
        if self.down_reason is not None:
            for state in self._parts.values():
                self._seal_if_due(state, now, force)
            probe = self._probe(now)
            return [] if probe is None else [probe]
        out: list[Send] = []
        for p, state in self._parts.items():
            while state.held:  # already in the window: sending them again does not widen it
                out.append(self._send(p, state, state.held.pop(0)))
            while len(state.window) < self.config.max_in_flight:
                if not state.ready:
                    self._seal_if_due(state, now, force)
                if not state.ready:
                    break
                batch = state.ready.popleft()
                state.window.append(batch.entries[-1].offset)
                out.append(self._send(p, state, batch))
            if force:
                self._seal_if_due(state, now, force)
        return out

    def _seal_if_due(self, state: _Partition, now: float, force: bool) -> None:
        """A batch that is not full is sealed once it waited `linger_s`, and only when it could
        go out now: while its partition's window is full or batches wait before it, sealing it
        would only send a part-full request later (a slot of the quota for a few events); left
        open, it fills up meanwhile. `force` seals it whatever its age."""
        batch = state.open_batch
        if batch is None or not len(batch):
            return
        could_go = not state.ready and not state.held and len(state.window) < self.config.max_in_flight
        if force or (could_go and now - batch.opened_at >= self.config.linger_s):
            self._seal(state)

    def _send(self, partition: int, state: _Partition, batch: AuditEventBatch, probe: bool = False) -> Send:
        state.in_flight += 1
        return Send(partition, state.generation, batch, probe, next(self._seqs))

    def _probe(self, now: float) -> Send | None:
        if self._probe_out or now < self._probe_at:
            return None
        self._probe_out = True
        held = [(s.held[0].entries[0].offset, p) for p, s in self._parts.items() if s.held]
        if held:
            _, p = min(held)
            return self._send(p, self._parts[p], self._parts[p].held.pop(0), probe=True)
        for p, state in sorted(self._parts.items()):
            if state.ready and len(state.window) < self.config.max_in_flight:
                batch = state.ready.popleft()
                state.window.append(batch.entries[-1].offset)
                return self._send(p, state, batch, probe=True)
        return Send(-1, 0, None, probe=True, seq=next(self._seqs))

    def request_finished(self, send: Send, outcome: Outcome | None, now: float) -> list[tuple[BatchEntry, str, str]]:
        """A request ended (`outcome` None: abandoned). Returns the rejected entries of a current
        partition, for the DLQ (each finished once its DLQ write is acknowledged)."""
        state = self._parts.get(send.partition)
        current = state is not None and state.generation == send.generation
        if state is not None and current:
            state.in_flight -= 1
        if send.probe:
            self._probe_out = False
        if outcome is None:
            if send.probe:
                self._probe_at = now  # abandoned (revoked): the next probe may go at once
            return []
        if outcome.channel_error is not None:
            self._channel_down(outcome.channel_error, now, send.probe)
        elif send.probe or self.down_reason is not None:
            self._channel_up()
        if not current or state is None:
            return []
        for entry in outcome.accepted:
            self.tracker.finish(entry.partition, entry.offset)
        if outcome.channel_error is not None and outcome.remaining is not None and len(outcome.remaining):
            state.held.append(outcome.remaining)
            state.held.sort(key=lambda b: b.entries[0].offset)
        return list(outcome.rejected)

    # ---- channel --------------------------------------------------------------------------------
    def _channel_down(self, reason: str, now: float, probe: bool) -> None:
        first = self.down_reason is None
        self.down_reason = reason
        if first:
            self._probe_attempt = 0
        elif probe:
            self._probe_attempt += 1
        else:
            return  # a request sent before the channel went down: the probe's schedule stands
        backoff = self.config.probe_base_s * 2 ** min(self._probe_attempt, 16)
        self._probe_at = now + min(self.config.probe_cap_s, backoff)

    def _channel_up(self) -> None:
        self.down_reason = None
        self._probe_attempt = 0
        self._probe_at = 0.0

    @property
    def channel_up(self) -> bool:
        return self.down_reason is None

    # ---- commits --------------------------------------------------------------------------------
    def commits(self, now: float, only: list[int] | None = None, urgent: bool = False) -> dict[int, int]:
        """Offsets to commit now (each the next offset to read); marks them asked for.
        `only` limits them to some partitions; `urgent` asks again even if just asked for."""
        due: dict[int, int] = {}
        for p, commit_at in self.tracker.commit_offsets().items():
            state = self._parts.get(p)
            if state is None or (state.acked is not None and commit_at <= state.acked):
                continue
            if only is not None and p not in only:
                continue
            fresh = state.requested is None or commit_at > state.requested
            if urgent or fresh or now - state.requested_at >= self.config.commit_retry_s:
                due[p] = commit_at
                state.requested, state.requested_at = commit_at, now
                if not state.pending_feeds or state.pending_feeds[-1][0] < commit_at:
                    state.pending_feeds.append((commit_at, self.tracker.partition_feeds(p)))
        return due

    def commit_feeds(self, partition: int, offset: int) -> dict[str, int]:
        """The Falcon feed offsets a commit asked for at `offset` covers (stored with it as metadata)."""
        state = self._parts.get(partition)
        for commit_at, feeds in reversed(state.pending_feeds if state is not None else []):
            if commit_at == offset:
                return feeds
        return {}

    def commit_acknowledged(self, partition: int, offset: int) -> dict[str, int]:
        """The broker stored `offset`: the window moves up to it. Returns the Falcon feed
        offsets it covers (for SSM), also when the partition has left this member since the
        commit was asked for: what the broker stored was delivered, whoever owns it now."""
        feeds = _pop_covered(self._orphan_feeds.get(partition), offset)
        if not self._orphan_feeds.get(partition):
            self._orphan_feeds.pop(partition, None)
        state = self._parts.get(partition)
        if state is None or offset == state.acked:
            return feeds
        if state.acked is not None and offset < state.acked:
            # An older commit stored after a newer one: librdkafka retries a commit that met a
            # broker restart (transport error, coordinator loading) with jittered backoff, so
            # two commits can land out of order. Answers come in the order the coordinator
            # stored them: the broker now holds `offset`. Ask again for the current one.
            state.acked = offset
            state.requested = None
            return feeds
        state.acked = offset
        while state.window and state.window[0] < offset:
            state.window.popleft()
        for feed, feed_offset in _pop_covered(state.pending_feeds, offset).items():
            if feed_offset > feeds.get(feed, -1):
                feeds[feed] = feed_offset
        return feeds

    def commit_failed(self, partition: int, now: float) -> None:
        """Not stored: asked for again after commit_retry_s (nothing more is sent past the window)."""
        state = self._parts.get(partition)
        if state is not None:
            state.requested_at = min(state.requested_at, now)

    def window(self, partition: int) -> int:
        state = self._parts.get(partition)
        return 0 if state is None else len(state.window)

    def describe(self) -> str:
        """One line per the summary log: each partition's unfinished records, ready batches,
        window, requests out and acknowledged commit."""
        return "; ".join(
            f"[{p}] unfinished {self.tracker.unfinished(p)} ready {len(s.ready)} window {len(s.window)}"
            f" out {s.in_flight} held {len(s.held)} acked {s.acked}"
            for p, s in sorted(self._parts.items())
        )

    # ---- shutdown -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping = True

    def idle(self) -> bool:
        """Nothing consumed is unfinished and no request is out."""
        return self.tracker.unfinished() == 0 and self.in_flight() == 0 and not self._probe_out

    # ---- the group's request rate ------------------------------------------------------------------
    def group_backlog(self, backlog: set[int], total_partitions: int) -> None:
        """Which partitions of the topic have records the group has not committed (read every few seconds)."""
        self._backlog = set(backlog)
        self.total_partitions = max(1, total_partitions)

    def rate_share(self, group_rate: float) -> float:
        return rate_share(group_rate, set(self._parts), self._backlog, self.total_partitions, self.unfinished() > 0)


def _pop_covered(pending: list[tuple[int, dict[str, int]]] | None, offset: int) -> dict[str, int]:
    """Remove the entries of `pending` (commit offset -> feeds, ascending) that a commit at
    `offset` covers; the feed offsets of the last one removed."""
    feeds: dict[str, int] = {}
    while pending and pending[0][0] <= offset:
        feeds = dict(pending.pop(0)[1])
    return feeds


def rate_share(
    group_rate: float, owned: set[int], backlog: set[int] | None, total_partitions: int, busy: bool = False
) -> float:
    """This member's part of the group's request rate.

    In proportion to the owned partitions with backlog among all partitions with backlog; when
    no partition has any (or it is not known yet), to the owned partitions among all. A member
    that owns a partition never drops below a small floor (it may have new work at any time),
    so the members' shares add up to at most the rate plus a floor per idle member.
    """
    if not owned:
        return 0.0
    floor = min(group_rate, max(0.5, group_rate * 0.01))
    if backlog:
        mine = len(owned & backlog)
        share = group_rate * mine / len(backlog)
        if mine == 0 and busy:
            share = group_rate / (len(backlog) + 1)  # work the last reading did not see yet
    else:
        share = group_rate * len(owned) / max(len(owned), total_partitions)
    return max(floor, min(group_rate, share))
