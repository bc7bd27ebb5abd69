"""`falcon-lake dlq list|redrive`: look at dead-lettered events and send chosen ones back to the events topic.

A redrive re-produces each selected record's value unchanged to the events topic, keyed by
its feed (so the feed's partition is the ingestor's), with its original `falcon.*` headers
and `falcon.redriven_from` = "<dlq partition>:<dlq offset>"; the `dlq.*` headers are dropped.

What was redriven is recorded in the consumer group `<group>-dlq-redrive`, committed only
after the broker acknowledged the re-produced records: per DLQ partition, the committed
offset is the first record not yet redriven, and the commit's metadata lists the later
offsets already redriven. So a second redrive never sends a record again, while records a
`--reason`/`--code` filter left out stay available to a later redrive.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from falcon_lake import headers as headers_
from falcon_lake.dead_letter import DeadLetter, read_dead_letter
from falcon_lake.headers import REDRIVEN_FROM, as_bytes_pairs
from falcon_lake.ops import command as ops_cli
from falcon_lake.ops.command import KafkaOps, OpsError, Watermarks
from falcon_lake.ops.redrive_mark import RedriveMark, redrive_group
from falcon_lake.partitioner import partition_for

PROG = "falcon-lake dlq"
MESSAGE_CHARS = 60


@dataclass(frozen=True)
class Selector:
    """Which dead letters a command acts on: error message substring and/or exact error code."""

    reason: str | None = None
    code: str | None = None

    def matches(self, dead: DeadLetter) -> bool:
        if self.reason is not None and self.reason.lower() not in dead.message.lower():
            return False
        return self.code is None or self.code.lower() == dead.code.lower()


def redrive_headers(
    headers: Any, partition: int, offset: int, topic_partitions: int | None = None
) -> list[tuple[str, bytes]]:
    """The original falcon.* headers (dlq.* dropped) plus falcon.redriven_from = partition:offset.

    The ingestor's resume ignores records with falcon.redriven_from (their falcon.offset is old), while
    publishers deliver them like any other. `topic_partitions`: the count the record's partition was chosen
    with, written as falcon.partitions in place of the original's.
    """
    replaced = (REDRIVEN_FROM, headers_.PARTITIONS) if topic_partitions is not None else (REDRIVEN_FROM,)
    kept = [(k, v) for k, v in as_bytes_pairs(headers) if k.startswith("falcon.") and k not in replaced]
    if topic_partitions is not None:
        kept.append((headers_.PARTITIONS, b"%d" % topic_partitions))
    return [*kept, (REDRIVEN_FROM, f"{partition}:{offset}".encode())]


# ---- reading the DLQ ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqRecord:
    partition: int
    offset: int
    dead: DeadLetter
    timestamp_ms: int | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    redriven: bool

    @property
    def time(self) -> str:
        return self.dead.time or ops_cli.iso_ms(self.timestamp_ms)

    def to_json(self) -> dict[str, Any]:
        d = self.dead
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "time": self.time,
            "stage": d.stage,
            "error_code": d.code,
            "error_message": d.message,
            "source_topic": d.source_topic,
            "source_partition": d.source_partition,
            "source_offset": d.source_offset,
            "feed": d.feed,
            "falcon_offset": d.falcon_offset,
            "last_good_offset": d.last_good_offset,
            "value_bytes": len(self.value),
            "redriven": self.redriven,
        }


def _to_record(msg: Message, mark: RedriveMark) -> DlqRecord:
    headers = as_bytes_pairs(msg.headers())
    kind, ts = msg.timestamp()
    key = msg.key()
    offset = msg.offset() or 0
    return DlqRecord(
        partition=msg.partition() or 0,
        offset=offset,
        dead=read_dead_letter(list(headers)),
        timestamp_ms=ts if kind != 0 and ts > 0 else None,
        key=key if isinstance(key, bytes) else None,
        value=msg.value() or b"",
        headers=headers,
        redriven=mark.is_done(offset),
    )


@dataclass
class DlqView:
    """The DLQ's partitions, their watermarks and what the redrive group recorded."""

    topic: str
    partitions: list[int]
    marks: dict[int, Watermarks]
    redrive: dict[int, RedriveMark]

    @classmethod
    def load(cls, ops: KafkaOps) -> DlqView | None:
        """None when the DLQ topic does not exist."""
        topic = ops.settings.dlq_topic
        topics = ops.topics()
        if topic not in topics:
            return None
        partitions = list(range(topics[topic]))
        committed = ops.committed(redrive_group(ops.settings), topic, partitions)
        return cls(
            topic,
            partitions,
            ops.watermarks(topic, partitions),
            {p: RedriveMark.from_commit(committed.get(p)) for p in partitions},
        )

    @property
    def depth(self) -> int:
        return sum(m.depth for m in self.marks.values())

    def records(self, consumer: Consumer, only_pending: bool) -> Generator[DlqRecord, None, None]:
        for p in self.partitions:
            mark = self.redrive[p]
            start = mark.scan_from(self.marks[p]) if only_pending else self.marks[p].low
            for msg in ops_cli.read_partition(consumer, self.topic, p, start, self.marks[p].high):
                record = _to_record(msg, mark)
                if not (only_pending and record.redriven):
                    yield record


# ---- output -------------------------------------------------------------------------------------


def _short(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(records: Sequence[DlqRecord]) -> str:
    rows: list[list[object]] = []
    for r in records:
        d = r.dead
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}" if d.source_topic else None
        falcon = f"{d.feed}:{d.falcon_offset}" if d.feed is not None else None
        rows.append(
            [
                f"{r.partition}:{r.offset}",
                r.time,
                d.stage or None,
                d.code or None,
                _short(d.message),
                source,
                falcon,
                "yes" if r.redriven else "no",
            ]
        )
    return ops_cli.table(["DLQ", "TIME", "STAGE", "CODE", "MESSAGE", "SOURCE", "FEED:OFFSET", "REDRIVEN"], rows)


# ---- commands -----------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: use at least 1")
    return value


def _add_selector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", metavar="SUBSTRING", help="only records whose error message contains SUBSTRING (any case)"
    )
    parser.add_argument("--code", metavar="CODE", help="only records with this error code, e.g. InvalidData")


def build_parser() -> argparse.ArgumentParser:
    parser = ops_cli.parser(
        PROG,
        "List dead-lettered events (KAFKA_DLQ_TOPIC) or redrive them: re-produce each record's value unchanged to "
        "the events topic (KAFKA_TOPIC) with its original falcon.* headers, so the publishers deliver it again.",
        epilog="Run 'falcon-lake dlq list --help' or 'falcon-lake dlq redrive --help' for their options.",
    )
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = ops_cli.subparser(
        commands,
        "list",
        "one row per dead-lettered record, oldest first per DLQ partition",
        "One row per dead-lettered record, oldest first per DLQ partition: DLQ partition:offset, time, "
        "stage, error code, message (truncated; full in --json), source topic[partition]@offset, feed:Falcon "
        "offset, and whether a redrive already re-sent it.",
        "exit codes: 0 listed, 1 Kafka unreachable, 2 bad argument",
    )
    listing.add_argument("--limit", type=_positive, default=50, metavar="N", help="show at most N records (50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line, full error messages")
    _add_selector(listing)
    ops_cli.add_kafka_options(listing, dlq=True)
    redrive = ops_cli.subparser(
        commands,
        "redrive",
        "re-send dead-lettered records to the events topic (dry run unless --execute)",
        "Re-produce the selected dead-lettered records that no redrive has re-sent yet to the events "
        "topic: value unchanged, key = falcon.feed, original falcon.* headers, falcon.redriven_from = "
        "DLQ partition:offset. What was re-sent is committed in the consumer group <group>-dlq-redrive once the "
        "broker acknowledged it, so a second redrive does not send it again; records left out by --reason/--code "
        "stay available. Without --execute, prints what would be re-sent and changes nothing.",
        "exit codes: 0 done (or dry run), 1 Kafka unreachable or some records not re-sent, 2 bad argument",
    )
    _add_selector(redrive)
    redrive.add_argument("--execute", action="store_true", help="re-send and record it (default: dry run)")
    redrive.add_argument("--json", action="store_true", help="print the selected records as JSON lines")
    ops_cli.add_kafka_options(redrive, dlq=True)
    return parser


def _selector(args: argparse.Namespace) -> Selector:
    for option in ("reason", "code"):
        value = getattr(args, option)
        if value is not None and not value.strip():
            raise ops_cli.UsageError(f"--{option} is empty")
    return Selector(args.reason, args.code)


def _list(args: argparse.Namespace, ops: KafkaOps) -> int:
    view = DlqView.load(ops)
    if view is None:
        print(f"DLQ topic {ops.settings.dlq_topic} does not exist: nothing was dead-lettered", file=sys.stderr)
        return ops_cli.EXIT_OK
    selector = _selector(args)
    shown: list[DlqRecord] = []
    more = False
    consumer = ops.consumer(redrive_group(ops.settings), **{"enable.partition.eof": True})
    try:
        # closing(): stopping early must end the read (unassign) before the consumer closes.
        with closing(view.records(consumer, only_pending=False)) as records:
            for record in records:
                if selector.matches(record.dead):
                    if len(shown) >= args.limit:
                        more = True
                        break
                    shown.append(record)
    finally:
        consumer.close()
    if args.json:
        for record in shown:
            print(json.dumps(record.to_json()))
        return ops_cli.EXIT_OK
    print(render(shown) if shown else "no matching dead-lettered records")
    pending = sum(view.redrive[p].pending(view.marks[p]) for p in view.partitions)
    note = f"; more match: raise --limit (now {args.limit})" if more else ""
    print(f"{len(shown)} shown; {view.topic} holds {view.depth} records, {pending} not redriven{note}")
    return ops_cli.EXIT_OK


def _redrive(args: argparse.Namespace, ops: KafkaOps) -> int:
    selector = _selector(args)
    topic = ops.settings.topic
    view = DlqView.load(ops)
    if view is None:
        print(f"DLQ topic {ops.settings.dlq_topic} does not exist: nothing to redrive")
        return ops_cli.EXIT_OK
    topic_partitions = len(ops.partitions(topic))
    group = redrive_group(ops.settings)
    consumer = ops.consumer(group, **{"enable.partition.eof": True})
    try:
        selected: list[DlqRecord] = []
        examined = 0
        for record in view.records(consumer, only_pending=True):
            examined += 1
            if selector.matches(record.dead):
                selected.append(record)
        if args.json:
            for record in selected:
                print(json.dumps(record.to_json()))
        elif selected:
            print(render(selected))
        # With --json, stdout holds only JSON lines; the summary goes to stderr.
        summary_to = sys.stderr if args.json else sys.stdout
        if not args.execute:
            print(
                f"dry run: would re-send {len(selected)} of {examined} records not yet redriven from {view.topic} "
                f"to {topic}; add --execute to do it",
                file=summary_to,
            )
            return ops_cli.EXIT_OK
        sent = _produce(ops, topic, topic_partitions, selected)
        failed = len(selected) - sum(len(offsets) for offsets in sent.values())
        _commit(consumer, view, sent, group)
    finally:
        consumer.close()
    print(
        f"re-sent {len(selected) - failed} of {examined} records not yet redriven from {view.topic} to {topic}",
        file=summary_to,
    )
    if failed:
        raise OpsError(f"{failed} records were not acknowledged by Kafka; run the redrive again to re-send them")
    return ops_cli.EXIT_OK


def _produce(ops: KafkaOps, topic: str, partitions: int, records: Sequence[DlqRecord]) -> dict[int, list[int]]:
    """Re-produce the records; per DLQ partition, the offsets the broker acknowledged."""
    sent: dict[int, list[int]] = {}
    errors: list[str] = []
    if not records:
        return sent
    producer = ops.producer(**{"linger.ms": 5})
    for record in records:

        def delivered(err: KafkaError | None, _msg: Message, record: DlqRecord = record) -> None:
            if err is None:
                sent.setdefault(record.partition, []).append(record.offset)
            else:
                errors.append(str(err.str()))

        feed = record.dead.feed
        key = feed.encode() if feed is not None else record.key
        kwargs: dict[str, Any] = {
            "key": key,
            "value": record.value,
            "headers": redrive_headers(
                record.headers, record.partition, record.offset, partitions if key is not None else None
            ),
            "on_delivery": delivered,
        }
        if key is not None:
            # The ingestor's partitioner, so a redriven event joins its feed's partition.
            kwargs["partition"] = partition_for(key.decode("utf-8", "replace"), partitions)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(ops_cli.PRODUCE_TIMEOUT_S + 5)
    if errors:
        print(f"{PROG}: {len(errors)} records not re-sent: {errors[0]}", file=sys.stderr)
    return sent


def _commit(consumer: Consumer, view: DlqView, sent: Mapping[int, list[int]], group: str) -> None:
    offsets = []
    for p in view.partitions:
        mark, given_up = view.redrive[p].advanced(sent.get(p, []), view.marks[p])
        if given_up:
            print(
                f"{PROG}: partition {p}: too many gaps to remember; {given_up} records before offset "
                f"{mark.next_offset} that were not redriven are now skipped by later redrives",
                file=sys.stderr,
            )
        if mark != view.redrive[p]:
            offsets.append(TopicPartition(view.topic, p, mark.next_offset, mark.metadata()))
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        raise OpsError(
            f"records were re-sent but recording it in group {group!r} failed "
            f"({ops_cli.kafka_error_text(exc)}): a second redrive would send them again"
        ) from None


def _dlq(argv: Sequence[str], env: Mapping[str, str] | None) -> int:
    args = build_parser().parse_args(list(argv))
    settings = ops_cli.kafka_settings(args, ops_cli.environment(env))
    ops = KafkaOps(settings, verbose=args.verbose)
    if args.action == "list":
        return _list(args, ops)
    return _redrive(args, ops)


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    return ops_cli.run(PROG, lambda: _dlq(argv, env))
