"""`falcon-lake emulate falcon|cloudtrail`: run one of the local stand-ins in the foreground."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

EMULATORS = {
    "falcon": ("emulators.falcon", "Falcon Event Streams API (token, discovery, feeds, refresh)"),
    "cloudtrail": ("emulators.cloudtrail", "CloudTrail Lake: cloudtrail-data PutAuditEvents and the query API"),
}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="falcon-lake emulate",
        description="Run a local emulator that speaks the real service's wire protocol.",
        epilog="Run 'falcon-lake emulate NAME --help' for the emulator's own options.",
    )
    names = parser.add_subparsers(dest="name", metavar="NAME", required=True)
    for name, (_, summary) in EMULATORS.items():
        names.add_parser(name, help=summary, add_help=False)
    args = list(argv)
    if not args:
        parser.print_help(sys.stderr)
        return 2
    known, _ = parser.parse_known_args(args[:1])
    module = importlib.import_module(EMULATORS[known.name][0])
    result: int = module.main(args[1:])
    return result
