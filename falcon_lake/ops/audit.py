"""`falcon-lake audit`: the fate of every Falcon offset — delivered (how often), dead-lettered, filtered, missing.

The expected events come from the Falcon emulator's record file, from explicit offset
ranges (with the events read from the raw topic), or from the raw topic alone (a real
deployment). What landed comes from the event data store itself through CloudTrail Lake's
query API (`--event-data-store`, the emulator's or a real one), from the CloudTrail
emulator's SQLite database, or from a file of UIDs exported from a CloudTrail Lake query.
Dead letters come from the DLQ topic.
Each expected event is converted again with the publisher's own filter and converter, so a
filtered event is reported with the rule that dropped it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaException

from falcon_lake import dead_letter
from falcon_lake.headers import FEED, OFFSET, header_int, header_text
from falcon_lake.ops.command import KafkaOps, UsageError, parse_time, read_partition
from falcon_lake.ops.lake_client import (
    EventDataStore,
    LakeQueryError,
    LakeQueryResult,
    cloudtrail_client,
    describe_event_data_store,
    format_bytes,
    lake_time,
    region_of,
    run_query,
)
from falcon_lake.settings import SettingsError, load_filter, load_kafka

DEFAULT_CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


@dataclass(frozen=True)
class ExpectedEvent:
    feed: str
    offset: int
    raw: bytes


@dataclass
class AuditReport:
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0  # extra copies beyond the first
    dead_lettered: Counter[str] = field(default_factory=Counter)  # reason -> count
    filtered: Counter[str] = field(default_factory=Counter)  # rule -> count
    missing: list[tuple[str, int, str]] = field(default_factory=list)  # feed, offset, expected id or reason
    malformed_expected: int | None = None  # None: what the stream served is unknown (no record file)
    malformed_dead_lettered: int = 0
    malformed_not_dead_lettered: list[tuple[str, int]] = field(default_factory=list)  # feed, offset it came before
    unexpected_in_lake: int = 0

    @property
    def ok(self) -> bool:
        # Malformed lines are not events: they are reported, not counted as losses. The stream
        # serves one before the same event on every connection, so in a run whose faults stay put
        # each one reaches the DLQ; a test that switches the fault off can leave one unread.
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "dead_lettered": dict(self.dead_lettered),
            "filtered": dict(self.filtered),
            "missing": len(self.missing),
            "missing_sample": [{"feed": f, "offset": o, "detail": d} for f, o, d in self.missing[:20]],
            "malformed_lines_served": self.malformed_expected,
            "malformed_lines_dead_lettered": self.malformed_dead_lettered,
            "malformed_lines_not_dead_lettered": [
                {"feed": f, "before_offset": o} for f, o in self.malformed_not_dead_lettered[:20]
            ],
            "unexpected_in_lake": self.unexpected_in_lake,
            "ok": self.ok,
        }


MalformedLines = set[tuple[str, int]]  # (feed, offset of the event the line came before)


def read_record_file(path: str) -> tuple[list[ExpectedEvent], MalformedLines]:
    """Events the Falcon emulator served (its --record file) and where it served malformed lines."""
    events: list[ExpectedEvent] = []
    malformed: MalformedLines = set()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("malformed"):
                malformed.add((str(entry["feed"]), int(entry["offset"])))
                continue
            raw = json.dumps(entry["event"], ensure_ascii=False, separators=(",", ":")).encode()
            events.append(ExpectedEvent(str(entry["feed"]), int(entry["offset"]), raw))
    return events, malformed


def _consume_all(ops: KafkaOps, topic: str) -> Iterable[Any]:
    """Every record of a topic, start to end, without joining a group (none for a missing topic)."""
    counts = ops.topics()
    if topic not in counts:
        return
    partitions = list(range(counts[topic]))
    marks = ops.watermarks(topic, partitions)
    with closing(ops.consumer("falcon-lake-audit")) as consumer:
        for partition in partitions:
            yield from read_partition(consumer, topic, partition, marks[partition].low, marks[partition].high)


def read_raw_topic(ops: KafkaOps, topic: str) -> list[ExpectedEvent]:
    events = []
    for msg in _consume_all(ops, topic):
        feed = header_text(msg.headers(), FEED)
        offset = header_int(msg.headers(), OFFSET)
        if feed is not None and offset is not None:
            events.append(ExpectedEvent(feed, offset, msg.value() or b""))
    return events


def read_dead_letters(ops: KafkaOps, topic: str) -> tuple[dict[tuple[str, int], str], MalformedLines]:
    """(feed, offset) -> reason of every dead-lettered event (any stage), and where the lines that were
    not events (no offset: the ingestor could not parse them) were met in their feed."""
    by_offset: dict[tuple[str, int], str] = {}
    lines: MalformedLines = set()
    for msg in _consume_all(ops, topic):
        letter = dead_letter.read_dead_letter(msg.headers())
        if letter.feed is not None and letter.falcon_offset is not None:
            by_offset[(letter.feed, letter.falcon_offset)] = f"{letter.stage}:{letter.code}"
        elif letter.stage == "ingest":
            # The line came right after the feed's last good event, i.e. before the next offset.
            lines.add((letter.feed or "?", (letter.last_good_offset or 0) + 1))
    return by_offset, lines


def lake_id_counts_from_db(path: str) -> Counter[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return Counter({row[0]: row[1] for row in db.execute("SELECT id, COUNT(*) FROM audit_events GROUP BY id")})


def lake_id_counts_from_file(path: str) -> Counter[str]:
    """One UID per line (a CloudTrail Lake query export), or NDJSON objects with a UID field."""
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                obj = json.loads(line)
                line = str(obj.get("UID") or obj.get("uid") or obj.get("id"))
            counts[line] += 1
    return counts


def event_time_range(expected: Sequence[ExpectedEvent]) -> tuple[datetime, datetime] | None:
    """The span of the expected events' own times (metadata.eventCreationTime, which the
    converter makes eventData.eventTime), to the second: [first, last + 1 s). None without any."""
    stamps = []
    for event in expected:
        try:
            stamps.append(int(json.loads(event.raw)["metadata"]["eventCreationTime"]))
        except (ValueError, KeyError, TypeError):
            continue
    if not stamps:
        return None
    first = datetime.fromtimestamp(min(stamps) // 1000, UTC)
    last = datetime.fromtimestamp(max(stamps) // 1000, UTC)
    return first, last + timedelta(seconds=1)


def uid_query(store_id: str, start: datetime, end: datetime) -> str:
    """The CloudTrail Lake SQL listing the UIDs of one time range, as an operator would type it."""
    return (
        f"SELECT eventData.uid FROM {store_id} "
        f"WHERE eventTime >= '{lake_time(start)}' AND eventTime < '{lake_time(end)}'"
    )


def lake_id_counts_from_event_data_store(
    client: Any, store: str, start: datetime, end: datetime, progress: Any = None, progress_every: float = 10.0
) -> tuple[Counter[str], LakeQueryResult, EventDataStore]:
    """UID -> stored copies in [start, end) of the event data store (ARN or id), the query's
    figures and the store; LakeQueryError when the query gives no answer."""
    described = describe_event_data_store(client, store)
    result = run_query(
        client, uid_query(described.id, start, end), described.id, progress=progress, progress_every=progress_every
    )
    counts: Counter[str] = Counter(row[0] for row in result.rows if row and row[0])
    return counts, result, described


_MARGIN = re.compile(r"(\d+)([smhd])")


def _parse_margin(text: str) -> timedelta:
    match = _MARGIN.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"--margin {text!r}: use a number and s, m, h or d, e.g. 1h")
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return timedelta(seconds=seconds)


def _parse_time_option(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def audit(
    expected: Sequence[ExpectedEvent],
    lake_ids: Counter[str],
    dead_letters: Mapping[tuple[str, int], str],
    converter: Any,
    malformed_served: MalformedLines | None = None,
    malformed_dead_lettered: MalformedLines | None = None,
) -> AuditReport:
    """Classify every expected event. `converter` is a publisher Converter with the deployment's filter."""
    from publisher.convert import AuditEvent, Rejected
    from publisher.filter import Filtered

    report = AuditReport(expected=len(expected))
    expected_ids: set[str] = set()
    for event in expected:
        reason = dead_letters.get((event.feed, event.offset))
        if not event.raw:
            if reason is not None:  # dead-lettered before the raw topic (e.g. too large for Kafka)
                report.dead_lettered[reason] += 1
            else:
                report.missing.append((event.feed, event.offset, "absent from the raw topic"))
            continue
        outcome = converter.convert(event.raw, event.feed)
        if isinstance(outcome, Filtered):
            report.filtered[outcome.rule] += 1
        elif isinstance(outcome, AuditEvent):
            expected_ids.add(outcome.id)
            copies = lake_ids.get(outcome.id, 0)
            if copies:
                report.delivered += 1
                report.duplicates += copies - 1
            elif reason is not None:
                report.dead_lettered[reason] += 1
            else:
                report.missing.append((event.feed, event.offset, outcome.id))
        elif isinstance(outcome, Rejected):
            if reason is not None:
                report.dead_lettered[reason] += 1
            else:
                report.missing.append((event.feed, event.offset, f"rejected {outcome.code}, not in the DLQ"))
    report.unexpected_in_lake = sum(1 for uid in lake_ids if uid not in expected_ids)
    letters = malformed_dead_lettered or set()
    report.malformed_dead_lettered = len(letters)
    if malformed_served is not None:
        report.malformed_expected = len(malformed_served)
        report.malformed_dead_lettered = len(malformed_served & letters)
        report.malformed_not_dead_lettered = sorted(malformed_served - letters)
    return report


def format_report(report: AuditReport) -> str:
    lines = [
        f"expected events      {report.expected}",
        f"delivered            {report.delivered}  (duplicate copies: {report.duplicates})",
        f"dead-lettered        {sum(report.dead_lettered.values())}"
        + "".join(f"\n  {reason:<30} {n}" for reason, n in sorted(report.dead_lettered.items())),
        f"filtered             {sum(report.filtered.values())}"
        + "".join(f"\n  {rule:<30} {n}" for rule, n in sorted(report.filtered.items())),
        f"malformed lines      {report.malformed_expected} served, {report.malformed_dead_lettered} in the DLQ"
        if report.malformed_expected is not None
        else f"malformed lines      {report.malformed_dead_lettered} in the DLQ (lines the ingestor could not parse)",
    ]
    for feed, offset in report.malformed_not_dead_lettered[:20]:
        lines.append(f"  feed {feed}, the line before offset {offset}: not in the DLQ")
    lines.append(f"missing              {len(report.missing)}")
    for feed, offset, detail in report.missing[:20]:
        lines.append(f"  feed {feed} offset {offset}: {detail}")
    if report.unexpected_in_lake:
        lines.append(f"in the lake but not expected: {report.unexpected_in_lake} ids (other sources or earlier runs)")
    lines.append("RESULT: nothing lost" if report.ok else "RESULT: EVENTS MISSING")
    return "\n".join(lines)


def _parse_range(text: str) -> tuple[str, int, int]:
    try:
        feed, span = text.split(":", 1)
        start, end = span.split("-", 1)
        return feed, int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--range {text!r}: use FEED:START-END, e.g. 0:1-5000") from None


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="falcon-lake audit",
        description="Report the fate of every Falcon offset: delivered (and how many times), dead-lettered "
        "(reason), filtered (rule) or missing. Exit 1 when anything is missing.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--record", metavar="PATH", help="the Falcon emulator's --record file (what was served)")
    source.add_argument("--from-topic", action="store_true", help="take the expected events from the raw topic")
    parser.add_argument(
        "--range",
        action="append",
        type=_parse_range,
        default=[],
        metavar="FEED:START-END",
        help="with --from-topic: also require every offset in this range (repeatable)",
    )
    lake = parser.add_mutually_exclusive_group(required=True)
    lake.add_argument(
        "--event-data-store",
        metavar="ARN_OR_ID",
        help="the CloudTrail Lake event data store to check, through the query API (StartQuery, "
        "GetQueryResults); AWS_ENDPOINT_URL_CLOUDTRAIL points it at the emulator",
    )
    lake.add_argument("--lake-db", metavar="PATH", help="the CloudTrail emulator's SQLite database")
    lake.add_argument("--lake-uids", metavar="PATH", help="UIDs exported from a CloudTrail Lake query, one per line")
    parser.add_argument(
        "--start",
        type=_parse_time_option,
        metavar="TIME",
        help="with --event-data-store: first eventTime to read (ISO 8601; default: the earliest audited "
        "event's time minus --margin). eventTime is the event's own time (Falcon's eventCreationTime), "
        "not the ingestion time",
    )
    parser.add_argument(
        "--end",
        type=_parse_time_option,
        metavar="TIME",
        help="with --event-data-store: eventTime to stop before (default: the latest audited event's time "
        "plus --margin)",
    )
    parser.add_argument(
        "--margin",
        type=_parse_margin,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="widen the default time range by this much on each side, e.g. 30m, 1h, 2d (default 1h)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="with --event-data-store: its region (default: the ARN's, else CLOUDTRAIL_LAKE_REGION, else the SDK's)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --event-data-store: print a progress line this often while the query runs (default 10)",
    )
    parser.add_argument("--channel-arn", default=None, help="channel ARN (default: CLOUDTRAIL_LAKE_CHANNEL_ARN)")
    parser.add_argument("--bootstrap-servers", default=None, help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topic", default=None, help="raw topic (default: KAFKA_TOPIC)")
    parser.add_argument("--dlq-topic", default=None, help="DLQ topic (default: KAFKA_DLQ_TOPIC)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(list(argv))
    environment = dict(os.environ if env is None else env)
    for name, value in (
        ("KAFKA_BOOTSTRAP_SERVERS", args.bootstrap_servers),
        ("KAFKA_TOPIC", args.topic),
        ("KAFKA_DLQ_TOPIC", args.dlq_topic),
    ):
        if value:
            environment[name] = value
    try:
        kafka = load_kafka(environment)
        filter_settings = load_filter(environment)
    except SettingsError as exc:
        print(f"falcon-lake audit: {exc}", file=sys.stderr)
        return 2
    from publisher.convert import Converter
    from publisher.filter import EventFilter

    channel = args.channel_arn or environment.get("CLOUDTRAIL_LAKE_CHANNEL_ARN") or DEFAULT_CHANNEL
    try:
        event_filter = EventFilter.from_settings(filter_settings)
        converter = Converter(channel, event_filter)
    except ValueError as exc:
        print(f"falcon-lake audit: {exc}", file=sys.stderr)
        return 2
    try:
        ops = KafkaOps(kafka)  # its clients report errors to it instead of logging them
    except UsageError as exc:
        print(f"falcon-lake audit: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        malformed: MalformedLines | None = None
        if args.record:
            expected, malformed = read_record_file(args.record)
        else:
            expected = read_raw_topic(ops, kafka.topic)
            present = {(e.feed, e.offset) for e in expected}
            for feed, start, end in args.range:
                for offset in range(start, end + 1):
                    if (feed, offset) not in present:
                        expected.append(ExpectedEvent(feed, offset, b""))
        letters, ingest_letters = read_dead_letters(ops, kafka.dlq_topic)
        query: dict[str, Any] | None = None
        if args.event_data_store:
            lake_ids, query = _read_event_data_store(args, environment, expected)
        elif args.lake_db:
            lake_ids = lake_id_counts_from_db(args.lake_db)
        else:
            lake_ids = lake_id_counts_from_file(args.lake_uids)
    except (OSError, ValueError, RuntimeError, sqlite3.Error) as exc:
        print(f"falcon-lake audit: {exc}", file=sys.stderr)
        return 2
    except KafkaException as exc:
        print(f"falcon-lake audit: {ops.failure(exc, f'read {kafka.topic} and {kafka.dlq_topic}')}", file=sys.stderr)
        return 2
    report = audit(expected, lake_ids, letters, converter, malformed, ingest_letters)
    if args.json:
        extra = {"lake_query": query} if query else {}
        print(json.dumps({**report.as_dict(), **extra, "seconds": round(time.monotonic() - started, 2)}, indent=2))
    else:
        if query:
            print(
                f"CloudTrail Lake query {query['query_id']} on {query['event_data_store']}: eventTime in "
                f"[{query['start']}, {query['end']}), {query['rows']} rows, "
                f"{format_bytes(query['bytes_scanned'])} scanned, {query['seconds']} s"
            )
        print(format_report(report))
    return 0 if report.ok else 1


def _read_event_data_store(
    args: argparse.Namespace, environment: Mapping[str, str], expected: Sequence[ExpectedEvent]
) -> tuple[Counter[str], dict[str, Any]]:
    """UID counts from the event data store over the requested or default time range, and the query's figures."""
    span = event_time_range(expected)
    if span is None and (args.start is None or args.end is None):
        raise ValueError("no audited event carries a time: give the range with --start and --end")
    start = args.start or (span[0] - args.margin if span else None)
    end = args.end or (span[1] + args.margin if span else None)
    assert start is not None and end is not None
    if start >= end:
        raise ValueError(f"--start {start.isoformat()} is not before --end {end.isoformat()}")
    region = args.region or region_of(args.event_data_store) or environment.get("CLOUDTRAIL_LAKE_REGION") or None
    client = cloudtrail_client(region)

    def progress(line: str) -> None:
        print(f"falcon-lake audit: {line}", file=sys.stderr, flush=True)

    try:
        counts, result, store = lake_id_counts_from_event_data_store(
            client, args.event_data_store, start, end, progress, args.progress_every
        )
    except LakeQueryError as exc:
        raise RuntimeError(str(exc)) from None
    return counts, {
        "query_id": result.query_id,
        "event_data_store": store.arn,
        "start": lake_time(start),
        "end": lake_time(end),
        "rows": len(result.rows),
        "bytes_scanned": result.bytes_scanned,
        "seconds": round(result.seconds, 2),
    }
