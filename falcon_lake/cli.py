"""The `falcon-lake` command: one entry point, one subcommand per job.

Each subcommand lives in its own module with a `main(argv) -> int`; it is imported
only when chosen, so `falcon-lake --help` stays fast and a broken optional piece
cannot stop the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from falcon_lake import __version__


class Subcommand(NamedTuple):
    module: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "ingest": Subcommand("ingestor.main", "stream every Falcon event into the Kafka topic"),
    "publish": Subcommand("publisher.main", "deliver user activity from Kafka to CloudTrail Lake"),
    "convert": Subcommand("publisher.convert_cli", "convert Falcon events (NDJSON) to CloudTrail audit events"),
    "emulate": Subcommand("emulators.cli", "run a local Falcon or CloudTrail Lake emulator"),
    "lake": Subcommand(
        "falcon_lake.ops.lake_cli", "run CloudTrail Lake SQL on an event data store (or the emulator's database)"
    ),
    "replay": Subcommand("falcon_lake.ops.replay", "reset the publisher group's offsets to re-deliver events"),
    "status": Subcommand("falcon_lake.ops.status", "show lag, committed offsets, SSM offsets and DLQ depth"),
    "dlq": Subcommand("falcon_lake.ops.dlq", "list or redrive dead-lettered events"),
    "audit": Subcommand("falcon_lake.ops.audit", "report the fate of every Falcon offset"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falcon-lake",
        description="Carry CrowdStrike Falcon user-activity audit events into AWS CloudTrail Lake through Kafka.",
        epilog="Run 'falcon-lake COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"falcon-lake {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, sub in SUBCOMMANDS.items():
        # add_help=False: the subcommand's own parser answers --help with its real options.
        commands.add_parser(name, help=sub.summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not args:
        parser.print_help(sys.stderr)
        return 2
    known, _ = parser.parse_known_args(args[:1])
    sub = SUBCOMMANDS[known.command]
    try:
        module = importlib.import_module(sub.module)
    except ModuleNotFoundError as exc:
        if exc.name != sub.module:
            raise
        print(f"falcon-lake: '{known.command}' is not available in this build", file=sys.stderr)
        return 2
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
