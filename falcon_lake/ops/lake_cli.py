"""`falcon-lake lake query "SQL"`: query CloudTrail Lake, or the emulator's SQLite database.

With `--event-data-store ARN_OR_ID` the statement is CloudTrail Lake SQL, run through the
query API (StartQuery, DescribeQuery, GetQueryResults) on a real event data store or on the
emulator's (AWS_ENDPOINT_URL_CLOUDTRAIL), exactly as it would run in the console:

    falcon-lake lake query --event-data-store EDS_ID \
        "SELECT eventData.eventName, COUNT(*) AS events FROM EDS_ID GROUP BY eventData.eventName"

Without it, the emulator (`falcon-lake emulate cloudtrail --db PATH`) stores every accepted event
in `audit_events(event_id, id, channel_arn, event_data, received_at)`; event_data is
the eventData JSON text, so SQLite's JSON functions reach inside it:

    falcon-lake lake query "SELECT json_extract(event_data, '$.eventName') AS name, count(*)
                            FROM audit_events GROUP BY name" --db lake.db

The database is opened read-only: a query can never change what the emulator stored.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_lake.ops import lake_client

DEFAULT_DB = "cloudtrail-lake.db"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falcon-lake lake",
        description="Query the events CloudTrail Lake (or its emulator) stored.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    query = commands.add_parser(
        "query",
        help="run one SQL statement on an event data store (or the emulator's database) and print the rows",
        description=(
            "With --event-data-store: run one CloudTrail Lake SQL statement through the query API "
            "(FROM <event data store id>; columns eventTime, eventID, eventData.eventName, "
            "eventData.userIdentity.principalId, ...), against AWS or the emulator "
            "(AWS_ENDPOINT_URL_CLOUDTRAIL). Without it: one SQLite statement (read-only) on the emulator's "
            "file; table audit_events(event_id, id, channel_arn, event_data, received_at, event_time, "
            "envelope); json_extract(event_data, '$.field') reaches inside an event."
        ),
    )
    query.add_argument("sql", metavar="SQL", help='the statement, e.g. "SELECT count(*) FROM audit_events"')
    query.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help="the file given to 'falcon-lake emulate cloudtrail --db' (default %(default)s)",
    )
    query.add_argument(
        "--event-data-store",
        metavar="ARN_OR_ID",
        help="run the statement as CloudTrail Lake SQL on this event data store through the query API",
    )
    query.add_argument(
        "--region",
        default=None,
        help="the event data store's region (default: the ARN's, else the SDK's: AWS_REGION, profile)",
    )
    query.add_argument("--json", action="store_true", help="print a JSON array of row objects instead of a table")
    query.add_argument(
        "--max-width",
        type=int,
        default=60,
        metavar="N",
        help="cut table cells longer than N characters (0: never; default %(default)s)",
    )
    return parser


def run_query(db_path: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` on the database at db_path, opened read-only.

    Raises FileNotFoundError when there is no such file and sqlite3.Error for a bad query.
    """
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(db_path)
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cursor = connection.execute(sql)
        columns = [description[0] for description in cursor.description or ()]
        rows = cursor.fetchall()
    finally:
        connection.close()
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Rows as an aligned text table with a header rule and a row count."""

    def cut(text: str) -> str:
        text = text.replace("\n", " ")
        return text if max_width <= 0 or len(text) <= max_width else text[: max(max_width - 1, 1)] + "…"

    cells = [[cut(_cell(value)) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    lines = [
        "  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * width for width in widths),
    ]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)


def _query_event_data_store(args: argparse.Namespace) -> int:
    client = lake_client.cloudtrail_client(args.region or lake_client.region_of(args.event_data_store))
    try:
        store = lake_client.describe_event_data_store(client, args.event_data_store)
        result = lake_client.run_query(
            client,
            args.sql,
            store.id,
            progress=lambda line: print(f"falcon-lake lake query: {line}", file=sys.stderr, flush=True),
        )
    except lake_client.LakeQueryError as exc:
        print(f"falcon-lake lake query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dict(zip(result.columns, row, strict=True)) for row in result.rows], indent=2))
    else:
        if result.rows:
            print(format_table(result.columns, result.rows, args.max_width))
        else:
            print("(0 rows)")
        print(
            f"query {result.query_id}: {lake_client.format_bytes(result.bytes_scanned)} scanned, "
            f"{result.events_scanned} events scanned, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str]) -> int:
    """`falcon-lake lake query SQL [--event-data-store ARN_OR_ID | --db PATH] [--json]`: 0 with the rows
    printed, 2 on a bad query, store or file."""
    args = _parser().parse_args(list(argv))
    if args.event_data_store:
        return _query_event_data_store(args)
    try:
        columns, rows = run_query(args.db, args.sql)
    except FileNotFoundError:
        print(
            f"falcon-lake lake query: no database at {args.db}; start the emulator with "
            f"'falcon-lake emulate cloudtrail --db {args.db}' or pass --db PATH",
            file=sys.stderr,
        )
        return 2
    except sqlite3.Error as exc:
        print(f"falcon-lake lake query: bad query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dict(zip(columns, map(_json_value, row), strict=True)) for row in rows], indent=2))
    elif columns:
        print(format_table(columns, rows, args.max_width))
    return 0
