"""`falcon-lake replay`: move the publisher group's committed offsets back (or forward) on one topic.

A dry run by default: it prints, per partition, the committed offset, the new one and how
many events the publishers will send again. `--execute` commits the new offsets, which the
broker accepts only while the group has no member, so every publisher must be stopped
first; the command checks that itself and refuses otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from falcon_lake.ops import command as ops_cli
from falcon_lake.ops.command import KafkaOps, OpsError, UsageError, Watermarks

PROG = "falcon-lake replay"


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    start: int  # oldest offset held
    end: int  # offset of the next record
    committed: int | None  # None: the group has committed nothing here
    new: int

    @property
    def resent(self) -> int:
        """Events delivered again (negative: events skipped): committed - new, or end - new."""
        current = self.committed if self.committed is not None else self.end
        return current - self.new


def _to_offset(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION:OFFSET (two whole numbers, e.g. 0:1500)")
    return int(partition), int(offset)


def _since(text: str) -> datetime:
    try:
        return ops_cli.parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ops_cli.parser(
        PROG,
        "Reset the publisher group's committed offsets on the events topic so the publishers deliver "
        "events again (or skip them). Prints the plan and changes nothing unless --execute is given. "
        "Every publisher must be stopped: the command refuses while the group has an active member.",
        epilog=(
            "examples:\n"
            "  falcon-lake replay --since 2024-05-01T00:00:00Z            # show what would be re-sent\n"
            "  falcon-lake replay --since 2024-05-01T00:00:00Z --execute  # do it\n"
            "  falcon-lake replay --to-offset 0:1500 --to-offset 2:900 --execute\n"
            "exit codes: 0 done (or dry run), 1 Kafka unreachable, topic missing or group active, 2 bad argument"
        ),
    )
    target = parser.add_argument_group("where to (exactly one)").add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--since",
        type=_since,
        metavar="TIME",
        help="each partition's first record at or after TIME (ISO-8601, e.g. 2024-05-01T12:00:00Z; no zone = UTC); "
        "a partition with no record after TIME goes to its end",
    )
    target.add_argument("--to-earliest", action="store_true", help="the oldest record each partition still holds")
    target.add_argument(
        "--to-offset",
        type=_to_offset,
        action="append",
        metavar="PARTITION:OFFSET",
        help="that offset of that partition (repeat for several partitions; the others are left unchanged)",
    )
    parser.add_argument("--execute", action="store_true", help="commit the new offsets (default: dry run)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    ops_cli.add_kafka_options(parser)
    return parser


def plan_offsets(
    args: argparse.Namespace,
    ops: KafkaOps,
    topic: str,
    partitions: Sequence[int],
    marks: Mapping[int, Watermarks],
) -> dict[int, int]:
    """The new offset of each partition to move."""
    if args.to_earliest:
        return {p: marks[p].low for p in partitions}
    if args.since is not None:
        ms = int(args.since.timestamp() * 1000)
        found = ops.list_offsets(topic, {p: OffsetSpec.for_timestamp(ms) for p in partitions})
        return {p: (offset if offset >= 0 else marks[p].high) for p, offset in found.items()}
    chosen: dict[int, int] = {}
    for partition, offset in args.to_offset:
        if partition not in marks:
            raise UsageError(f"--to-offset {partition}:{offset}: topic {topic!r} has partitions 0..{len(marks) - 1}")
        mark = marks[partition]
        if not mark.low <= offset <= mark.high:
            raise UsageError(
                f"--to-offset {partition}:{offset}: partition {partition} holds offsets {mark.low}..{mark.high} "
                f"({mark.high} = its end)"
            )
        if partition in chosen and chosen[partition] != offset:
            raise UsageError(f"--to-offset names partition {partition} twice")
        chosen[partition] = offset
    return chosen


def render(plans: Sequence[PartitionPlan]) -> str:
    rows: list[list[object]] = []
    for plan in plans:
        resent: object = plan.resent if plan.resent >= 0 else f"skips {-plan.resent}"
        rows.append([plan.partition, plan.start, plan.end, plan.committed, plan.new, resent])
    total = sum(p.resent for p in plans)
    text = ops_cli.table(["PARTITION", "START", "END", "COMMITTED", "NEW", "RE-SENT"], rows)
    summary = f"{total} events re-sent in total" if total >= 0 else f"{-total} events skipped in total"
    return f"{text}\n{summary}"


def _replay(argv: Sequence[str], env: Mapping[str, str] | None) -> int:
    args = build_parser().parse_args(list(argv))
    settings = ops_cli.kafka_settings(args, ops_cli.environment(env))
    ops = KafkaOps(settings, verbose=args.verbose)
    topic, group_id = settings.topic, settings.group_id
    partitions = ops.partitions(topic)
    group = ops.group(group_id)
    if group.active:
        raise OpsError(
            f"group {group_id!r} has {group.members} active member(s) (state {group.state}): "
            "stop every publisher first; offsets can only be reset while the group is empty"
        )
    marks = ops.watermarks(topic, partitions)
    new_offsets = plan_offsets(args, ops, topic, partitions, marks)
    committed = ops.committed(group_id, topic, partitions)
    plans = [
        PartitionPlan(p, marks[p].low, marks[p].high, ops_cli.committed_offset(committed.get(p)), new_offsets[p])
        for p in sorted(new_offsets)
    ]
    if args.execute:
        ops.alter_offsets(group_id, [TopicPartition(topic, plan.partition, plan.new) for plan in plans])
    if args.json:
        print(
            json.dumps(
                {
                    "topic": topic,
                    "group": group_id,
                    "executed": bool(args.execute),
                    "partitions": [
                        {
                            "partition": plan.partition,
                            "start": plan.start,
                            "end": plan.end,
                            "committed": plan.committed,
                            "new": plan.new,
                            "resent": plan.resent,
                        }
                        for plan in plans
                    ],
                },
                indent=2,
            )
        )
        return ops_cli.EXIT_OK
    print(f"group {group_id} on topic {topic} ({settings.bootstrap_servers}), group state {group.state}")
    print(render(plans))
    if args.execute:
        print(f"committed: the publishers of group {group_id} resume at the NEW offsets when started")
    else:
        print("dry run: nothing changed; add --execute to commit the NEW offsets")
    return ops_cli.EXIT_OK


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    return ops_cli.run(PROG, lambda: _replay(argv, env))
