"""`falcon-lake convert`: Falcon events in (a file or stdin), CloudTrail audit events out.

Shows exactly what the publisher would send, without Kafka or AWS: one line
`{"id": ..., "eventData": {...}}` per event that passes the filter and converts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from publisher.convert import AuditEvent, Converter, Rejected
from publisher.filter import PRESETS, EventFilter, Filtered

PROG = "falcon-lake convert"
DEFAULT_CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
DEFAULT_FEED = "0"

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NEXT_UNINDENTED_LINE = re.compile(r"\n(?=[^ \t\r\n])")
_FEED = re.compile(r"[-_A-Za-z0-9]{1,64}")

DESCRIPTION = """\
Convert Falcon Event Streams events into CloudTrail Lake audit events, exactly as the
publisher would send them, and print one line {"id": ..., "eventData": {...}} per event
that passes the filter.

Input: newline-delimited JSON (one event per line, as the stream sends it) or JSON objects
one after another (pretty-printed ones too). An input that is not JSON is reported on
stderr with its line number and skipped: reading resumes at the next line that does not
begin with whitespace. Every rejected event is reported on stderr too.

Filter: the preset (default: gateway) with every rule option you give replacing that rule
of the preset. Options that take names may be repeated or given a comma-separated list;
names of services and operations compare case-insensitively. Presets:
  gateway            AuthActivityAuditEvent from service "CrowdStrike Authentication"
                     only: what the old gateway forwarded
  all-user-activity  AuthActivityAuditEvent and UserActivityAuditEvent, every service,
                     except the streaming API's streamStarted/streamStopped
"""

EPILOG = """\
With --explain, stdout also gets one line per event that is not sent:
  {"filtered": {"line": N, "rule": "event-type|service-name|operation-name|max-age", "detail": "..."}}
  {"rejected": {"line": N, "code": "undecodable|invalid-event|...", "message": "..."}}
and stderr a summary. Exit status: 0, also when events were filtered or rejected; 2 when
the input cannot be read or an option is wrong. docs/conversion.md has the mapping and limits.

examples:
  falcon-lake convert events.ndjson
  cat events.ndjson | falcon-lake convert --preset all-user-activity --explain -
  falcon-lake convert --include-service detections --event-type UserActivityAuditEvent events.ndjson
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE|-",
        help="the Falcon events to convert; '-' or nothing reads stdin",
    )
    rules = parser.add_argument_group("filter")
    rules.add_argument(
        "--preset",
        default="gateway",
        choices=list(PRESETS),
        help="the rules to start from (default: gateway)",
    )
    rules.add_argument(
        "--event-type",
        action="append",
        metavar="TYPE",
        help="deliver only these event types (AuthActivityAuditEvent, UserActivityAuditEvent)",
    )
    rules.add_argument(
        "--include-service",
        action="append",
        metavar="NAME",
        help="deliver only events of these ServiceNames; '' lifts the preset's restriction",
    )
    rules.add_argument("--exclude-service", action="append", metavar="NAME", help="drop events of these ServiceNames")
    rules.add_argument(
        "--include-operation",
        action="append",
        metavar="NAME",
        help="deliver only events of these OperationNames; '' lifts the preset's restriction",
    )
    rules.add_argument(
        "--exclude-operation", action="append", metavar="NAME", help="drop events of these OperationNames"
    )
    rules.add_argument(
        "--max-age-days",
        type=float,
        metavar="DAYS",
        help="drop events created more than DAYS days ago (default: no limit; the old gateway used 21)",
    )
    source = parser.add_argument_group("what the input does not carry")
    source.add_argument(
        "--feed",
        default=DEFAULT_FEED,
        metavar="ID",
        help=f"Falcon feed (partition) id the events came from; part of id and UID (default: {DEFAULT_FEED})",
    )
    source.add_argument(
        "--channel-arn",
        default=DEFAULT_CHANNEL_ARN,
        metavar="ARN",
        help=f"CloudTrail Lake channel; its account becomes recipientAccountId (default: {DEFAULT_CHANNEL_ARN})",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also print a line for every filtered or rejected event, with its reason",
    )
    return parser


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",")]


@dataclass(frozen=True)
class InputItem:
    """One JSON value of the input (its exact bytes), or the reason it is not one."""

    line: int
    raw: bytes | None
    error: str | None = None


def read_items(data: bytes) -> Iterator[InputItem]:
    """Split NDJSON or concatenated JSON values into items, each with the line it starts on.

    A value that does not parse is yielded as an error, and reading resumes at the next line
    that does not begin with whitespace (the next NDJSON line, or the next top-level object
    of pretty-printed input).
    """
    text = data.decode("utf-8", "surrogateescape")  # bad bytes pass through to the converter
    decoder = json.JSONDecoder()
    pos, line, counted = 0, 1, 0
    end_of_text = len(text)
    while True:
        match = _WHITESPACE.match(text, pos)
        pos = match.end() if match else pos
        if pos >= end_of_text:
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            _, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or type(exc).__name__
            yield InputItem(line, None, f"not JSON ({reason})")
            resume = _NEXT_UNINDENTED_LINE.search(text, pos)
            pos = end_of_text if resume is None else resume.end()
            continue
        yield InputItem(line, text[pos:end].encode("utf-8", "surrogateescape"))
        pos = end


def _read(path: str, stdin: BinaryIO) -> bytes:
    if path == "-":
        return stdin.read()
    with open(path, "rb") as handle:
        return handle.read()


def _line(obj: object) -> bytes:
    # backslashreplace turns an unpaired surrogate into a JSON \\uXXXX escape: still valid JSON
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")


def main(argv: Sequence[str]) -> int:
    """Run the command; returns the exit status (0 done, 2 unreadable input or bad option)."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    if not _FEED.fullmatch(args.feed):
        parser.error(f"--feed {args.feed!r}: use 1 to 64 letters, digits, '-' or '_'")
    try:
        event_filter = EventFilter.from_options(
            args.preset,
            event_types=_names(args.event_type),
            include_services=_names(args.include_service),
            exclude_services=_names(args.exclude_service),
            include_operations=_names(args.include_operation),
            exclude_operations=_names(args.exclude_operation),
            max_age_days=args.max_age_days,
        )
        converter = Converter(args.channel_arn, event_filter)
    except ValueError as exc:
        parser.error(str(exc))
    name = "stdin" if args.file == "-" else args.file
    try:
        data = _read(args.file, sys.stdin.buffer)
    except OSError as exc:
        print(f"{PROG}: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    counts = {"converted": 0, "filtered": 0, "rejected": 0}
    try:
        for item in read_items(data):
            if item.raw is None:
                result: AuditEvent | Filtered | Rejected = Rejected("undecodable", item.error or "not JSON")
            else:
                result = converter.convert(item.raw, args.feed)
            if isinstance(result, AuditEvent):
                counts["converted"] += 1
                out.write(b'{"id":"' + result.id.encode() + b'","eventData":' + result.event_data.encode() + b"}\n")
            elif isinstance(result, Filtered):
                counts["filtered"] += 1
                if args.explain:
                    out.write(_line({"filtered": {"line": item.line, "rule": result.rule, "detail": result.detail}}))
            else:
                counts["rejected"] += 1
                print(f"{PROG}: {name} line {item.line}: {result.code}: {result.message}", file=sys.stderr)
                if args.explain:
                    out.write(_line({"rejected": {"line": item.line, "code": result.code, "message": result.message}}))
        out.flush()
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if args.explain:
        total = sum(counts.values())
        print(
            f"{PROG}: {total} events from {name}: {counts['converted']} converted, "
            f"{counts['filtered']} filtered, {counts['rejected']} rejected ({event_filter.describe()})",
            file=sys.stderr,
        )
    return 0
