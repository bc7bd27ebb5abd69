"""`falcon-lake status`: where delivery stands, per partition and per feed, in one look.

Per partition: end offset, the publisher group's committed offset, the lag in events and
in time (the age of the oldest undelivered record). Per feed: the SSM offset. Then the
DLQ depth and the group's state and member count. Exit code 3 says "stalled": events are
waiting and no publisher is in the group.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import KafkaError, TopicPartition

from falcon_lake.aws import aws_client
from falcon_lake.headers import CREATED_MS, header_int
from falcon_lake.offset_store import OffsetStoreError, SsmOffsetStore
from falcon_lake.ops import command as ops_cli
from falcon_lake.ops.command import KafkaOps
from falcon_lake.ops.redrive_mark import RedriveMark, redrive_group
from falcon_lake.partitioner import partition_for
from falcon_lake.settings import SettingsError, SsmSettings, load_ssm

PROG = "falcon-lake status"
EXIT_STALLED = 3
# How long to wait for the oldest undelivered record of every lagging partition.
FETCH_TIMEOUT_S = 5.0
SSM_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    start: int
    end: int
    committed: int | None
    lag: int
    oldest_offset: int | None  # the record the group reads next, when lag > 0
    oldest_timestamp_ms: int | None
    oldest_age_s: float | None

    @property
    def expired(self) -> int:
        """Committed but no longer held: retention deleted these records before delivery."""
        return max(0, self.start - self.committed) if self.committed is not None else 0


@dataclass(frozen=True)
class FeedStatus:
    feed: str
    ssm_offset: int
    partition: int | None


@dataclass
class SsmStatus:
    parameter: str
    region: str | None
    state: str  # "ok", "skipped", "unreachable"
    note: str = ""
    feeds: list[FeedStatus] = field(default_factory=list)


@dataclass(frozen=True)
class DlqStatus:
    topic: str
    exists: bool
    depth: int
    pending_redrive: int


@dataclass(frozen=True)
class Status:
    topic: str
    group: str
    group_state: str
    members: int
    partitions: list[PartitionStatus]
    ssm: SsmStatus
    dlq: DlqStatus
    checked_at_ms: int

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def max_age_s(self) -> float | None:
        ages = [p.oldest_age_s for p in self.partitions if p.oldest_age_s is not None]
        return max(ages) if ages else None

    @property
    def stalled(self) -> bool:
        return self.members == 0 and self.lag > 0

    @property
    def exit_code(self) -> int:
        return EXIT_STALLED if self.stalled else ops_cli.EXIT_OK

    def verdict(self) -> str:
        if self.stalled:
            return f"STALLED: {self.lag} events waiting and no publisher in group {self.group}"
        if self.lag:
            return f"delivering: {self.lag} events behind, {self.members} publisher(s) in the group"
        return f"up to date, {self.members} publisher(s) in the group"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for partition, row in zip(self.partitions, data["partitions"], strict=True):
            row["expired"] = partition.expired
        data.update(lag=self.lag, max_age_s=self.max_age_s, stalled=self.stalled, exit_code=self.exit_code)
        return data


def build_parser() -> argparse.ArgumentParser:
    parser = ops_cli.parser(
        PROG,
        "Show, per partition of the events topic, the end offset, the publisher group's committed offset and "
        "the lag in events and in time (age of the oldest undelivered record: now - its Kafka timestamp, or "
        "its falcon.created_ms header); per feed, the SSM offset (SSM_OFFSETS_PARAMETER in SSM_REGION); the "
        "DLQ depth (KAFKA_DLQ_TOPIC); and the group's state and member count.",
        epilog=(
            "exit codes:\n"
            "  0  the group has an active member, or nothing is waiting\n"
            "  1  Kafka unreachable or the events topic missing\n"
            "  2  bad argument or setting\n"
            "  3  stalled: events are waiting (lag > 0) and the group has no active member"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts and monitoring)")
    parser.add_argument("--no-ssm", action="store_true", help="do not read the SSM offsets parameter")
    ops_cli.add_kafka_options(parser, dlq=True)
    return parser


def _ssm_client(region: str) -> Any:
    # One quick attempt: status must answer even when SSM is down or unreachable.
    return aws_client("ssm", region, max_attempts=1, connect_timeout=SSM_TIMEOUT_S, read_timeout=SSM_TIMEOUT_S)


def read_ssm(settings: SsmSettings, partitions: int, skip: bool) -> SsmStatus:
    """The SSM offsets per feed; never raises: a problem becomes the status' note."""
    status = SsmStatus(settings.parameter, settings.region, "skipped")
    if skip:
        status.note = "not read (--no-ssm)"
        return status
    if not settings.region:
        status.note = "SSM not configured: set SSM_REGION (or AWS_REGION) to show the SSM offsets"
        return status
    try:
        offsets = SsmOffsetStore(_ssm_client(settings.region), settings.parameter).read(attempts=1)
    except OffsetStoreError as exc:
        status.state, status.note = "unreachable", str(exc)
        return status
    except (BotoCoreError, ClientError, ValueError, OSError) as exc:  # e.g. a bad region: SSM only informs here
        status.state, status.note = "unreachable", f"cannot read SSM parameter {settings.parameter!r}: {exc}"
        return status
    status.state = "ok"
    if not offsets:
        status.note = "parameter absent or empty: no feed delivered yet"
    status.feeds = [
        FeedStatus(feed, offset, partition_for(feed, partitions) if partitions else None)
        for feed, offset in sorted(offsets.items(), key=lambda item: (len(item[0]), item[0]))
    ]
    return status


def _oldest_records(ops: KafkaOps, topic: str, positions: Mapping[int, int]) -> dict[int, int | None]:
    """Per partition, the time (epoch ms) of the record at the given offset: Kafka timestamp, else header."""
    found: dict[int, int | None] = {}
    if not positions:
        return found
    consumer = ops.consumer(f"{ops.settings.group_id}-status", **{"enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in positions.items()])
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while len(found) < len(positions) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            partition = msg.partition()
            if partition is None or partition in found:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    found[partition] = None
                continue
            kind, timestamp = msg.timestamp()
            found[partition] = timestamp if kind != 0 and timestamp > 0 else header_int(msg.headers(), CREATED_MS)
            consumer.pause([TopicPartition(topic, partition)])
    finally:
        consumer.close()
    return found


def _dlq_status(ops: KafkaOps, topics: Mapping[str, int]) -> DlqStatus:
    topic = ops.settings.dlq_topic
    if topic not in topics:
        return DlqStatus(topic, False, 0, 0)
    partitions = list(range(topics[topic]))
    marks = ops.watermarks(topic, partitions)
    committed = ops.committed(redrive_group(ops.settings), topic, partitions)
    pending = sum(RedriveMark.from_commit(committed.get(p)).pending(marks[p]) for p in partitions)
    return DlqStatus(topic, True, sum(m.depth for m in marks.values()), pending)


def collect(ops: KafkaOps, ssm_settings: SsmSettings, skip_ssm: bool) -> Status:
    topic, group_id = ops.settings.topic, ops.settings.group_id
    topics = ops.topics()
    partitions = ops.partitions(topic, topics)
    marks = ops.watermarks(topic, partitions)
    committed = ops.committed(group_id, topic, partitions)
    group = ops.group(group_id)
    positions: dict[int, int] = {}
    for p in partitions:
        offset = ops_cli.committed_offset(committed.get(p))
        # Nothing committed: a new publisher starts at the oldest record (auto.offset.reset=earliest).
        position = max(offset if offset is not None else marks[p].low, marks[p].low)
        if position < marks[p].high:
            positions[p] = position
    times = _oldest_records(ops, topic, positions)
    now = ops_cli.now_ms()
    rows = []
    for p in partitions:
        offset = ops_cli.committed_offset(committed.get(p))
        waiting = positions.get(p)
        lag = marks[p].high - waiting if waiting is not None else 0
        ts = times.get(p)
        rows.append(
            PartitionStatus(
                p,
                marks[p].low,
                marks[p].high,
                offset,
                lag,
                waiting,
                ts,
                max(0.0, (now - ts) / 1000) if ts is not None else None,
            )
        )
    return Status(
        topic,
        group_id,
        group.state,
        group.members,
        rows,
        read_ssm(ssm_settings, len(partitions), skip_ssm),
        _dlq_status(ops, topics),
        now,
    )


def render(status: Status) -> str:
    lines = [
        f"topic {status.topic}, group {status.group}: state {status.group_state}, {status.members} member(s)",
        "",
        ops_cli.table(
            ["PARTITION", "START", "END", "COMMITTED", "LAG", "OLDEST UNDELIVERED", "AGE"],
            [
                [
                    p.partition,
                    p.start,
                    p.end,
                    p.committed,
                    p.lag,
                    ops_cli.iso_ms(p.oldest_timestamp_ms) if p.lag else None,
                    ops_cli.duration(p.oldest_age_s) if p.lag else None,
                ]
                for p in status.partitions
            ],
        ),
        f"total lag: {status.lag} events, oldest undelivered {ops_cli.duration(status.max_age_s)} old",
    ]
    for p in status.partitions:
        if p.expired:
            lines.append(
                f"WARNING: partition {p.partition}: {p.expired} undelivered events expired (topic retention) "
                f"between the committed offset {p.committed} and the oldest held {p.start}"
            )
    lines.append("")
    ssm = status.ssm
    if ssm.state == "ok" and ssm.feeds:
        lines.append(f"SSM {ssm.parameter} ({ssm.region}):")
        lines.append(
            ops_cli.table(["FEED", "SSM OFFSET", "PARTITION"], [[f.feed, f.ssm_offset, f.partition] for f in ssm.feeds])
        )
    else:
        lines.append(f"SSM {ssm.parameter}: {ssm.note}")
    lines.append("")
    dlq = status.dlq
    if dlq.exists:
        lines.append(f"DLQ {dlq.topic}: {dlq.depth} records, {dlq.pending_redrive} not redriven")
    else:
        lines.append(f"DLQ {dlq.topic}: topic does not exist (nothing dead-lettered yet)")
    lines.append("")
    lines.append(status.verdict())
    return "\n".join(lines)


def _status(argv: Sequence[str], env: Mapping[str, str] | None) -> int:
    args = build_parser().parse_args(list(argv))
    environment = ops_cli.environment(env)
    settings = ops_cli.kafka_settings(args, environment)
    try:
        ssm_settings = load_ssm(environment)
    except SettingsError as exc:
        raise ops_cli.UsageError(str(exc)) from None
    ops = KafkaOps(settings, verbose=args.verbose)
    status = collect(ops, ssm_settings, args.no_ssm)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(render(status))
    return status.exit_code


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    return ops_cli.run(PROG, lambda: _status(argv, env))
