"""How fast `falcon-lake publish` drains a backlog into CloudTrail Lake, beside the old gateway's way.

Everything on loopback: the Kafka broker (`bootstrap`, else KAFKA_BOOTSTRAP_SERVERS, else
127.0.0.1:9092), moto (SSM) and, for each scenario, a fresh CloudTrail Lake emulator process at
the real quota (`--tps 100`) with `--latency-ms 50`. Each scenario gets a fresh topic of 3
partitions (one Falcon feed each, keyed and headed as the ingestor writes them) and a fresh
consumer group; the publishers are real `falcon-lake publish` processes with the product's
default settings (no PUT_RATE_LIMIT is passed, so the same harness measures any version fairly):

- `logins_1p`: one publisher drains LOGIN_BACKLOG console logins (10 % failed, bench.backlog);
- `logins_3p`: three publishers (one group) drain the same backlog together;
- `mix_1p`: one publisher drains MIX_BACKLOG records of the emulator's realistic mix (the default
  `gateway` filter delivers about 45 % of them);
- then the OLD GATEWAY BASELINE (bench.gateway_baseline) reads the login backlog for a bounded
  time (20 s; 8 s with BENCH_QUICK=1) against a fresh emulator.

With one publisher the backlog is in Kafka before it starts (a publisher started onto a
backlog, e.g. after its own outage). With three, the publishers start first, on the empty
topic, and the backlog is written once their group is stable with every partition assigned
(replicas already running when a backlog builds up, e.g. after a CloudTrail outage): three
processes joining a group one after another on a broker with group.initial.rebalance.delay.ms=0
(the local broker's setting) rebalance for seconds, which is start-up, not drain time; the time
the group took to form is printed beside the figures. The drain then overlaps the writing of
the backlog (about a second), which runs at the lowest CPU priority so as not to take the CPU
the publishers are measured with. BENCH_BACKLOG_FIRST=1 or BENCH_GROUP_FIRST=1 uses one way for every
scenario.

A scenario ends when the group has committed every record (or nothing moved for STALL_S). Its
figures come from the emulator's stats and store, never from the publisher's own account:
events delivered/s (first to last accepted event), records consumed/s (first accepted event to
all records committed), PutAuditEvents requests/s, throttled fraction, calls per event, peak RSS
per publisher with its children (VmHWM), duplicates stored, and MISSING events (every expected UID
must be stored; a run that loses one says so loudly and `run.py` counts the benchmark as failed).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m bench.publish [logins_1p logins_3p mix_1p baseline]

BENCH_QUICK=1: 20,000 logins and a 40,000-record mix. BENCH_WITHHOLD=N leaves N records of each
backlog out of Kafka while still expecting them: a self-test that the missing check fails.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.backlog import (
    FAILED_FRACTION,
    LOGIN_OPERATIONS,
    PARTITIONS,
    Record,
    delivered_by_gateway,
    failed_logins,
    login_backlog,
    produce,
    produce_in_background_priority,
    realistic_mix,
)
from bench.gateway_baseline import run_baseline
from bench.harness import (
    CHANNEL_ARN,
    EMULATOR_LATENCY_MS,
    EMULATOR_TPS,
    REGION,
    ROOT,
    AcceptedEvent,
    Services,
    create_topics,
    delete_topics,
    free_port,
    services,
    stop_process,
    tree_peak_rss_mb,
)

LOGIN_BACKLOG = 100_000
QUICK_LOGIN_BACKLOG = 20_000
MIX_BACKLOG = 200_000
QUICK_MIX_BACKLOG = 40_000
BASELINE_SECONDS = 20.0
QUICK_BASELINE_SECONDS = 8.0
DRAIN_TIMEOUT_S = 900.0
STALL_S = 60.0  # nothing accepted and nothing committed for this long: the drain is stuck
POLL_S = 0.1
# Settings the harness never passes on from its own environment, so each run uses the product's defaults.
PRODUCT_DEFAULTS = ("PUT_RATE_LIMIT", "MAX_IN_FLIGHT_PER_PARTITION", "PUBLISH_MAX_BUFFERED_RECORDS", "FILTER_PRESET")


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    publishers: int
    backlog: str  # "logins" or "mix"


SCENARIOS = (
    Scenario("logins_1p", "login backlog, one publisher", 1, "logins"),
    Scenario("logins_3p", "login backlog, three publishers", 3, "logins"),
    Scenario("mix_1p", "realistic mix, one publisher", 1, "mix"),
)

# Figure suffix -> (unit, aim by scenario name, True when higher is better). `run()` returns
# `<scenario>_<suffix>` for each.
FIGURES: dict[str, tuple[str, dict[str, str], bool]] = {
    "events_per_s": ("events/s", {"logins_1p": ">= 9,000", "logins_3p": ">= 9,000", "mix_1p": ">= 7,000"}, True),
    "records_per_s": ("records/s", {}, True),
    "requests_per_s": ("requests/s", {}, True),
    "throttled_pct": ("% of requests", {"logins_3p": "<= 5"}, False),
    "calls_per_event": ("calls", {}, False),
    "peak_rss_mb": ("MB", {s.name: "< 200" for s in SCENARIOS}, False),
    "ssm_writes_per_min": ("writes/min", {}, False),
    "duplicates": ("events", {}, False),
    "missing": ("events", {s.name: "0" for s in SCENARIOS}, False),
    "longest_stall_s": ("s", {}, False),
}
BASELINE_FIGURES = ("drain_events_per_s", "calls_per_event", "ssm_writes_per_min", "peak_rss_mb")


def product_rate_limit() -> str:
    """PUT_RATE_LIMIT as the product defaults it (for the settings line), or '?'."""
    try:
        from falcon_lake.settings import load_publisher

        return f"{load_publisher({'CLOUDTRAIL_LAKE_CHANNEL_ARN': CHANNEL_ARN}).rate_limit_rps:g} requests/s"
    except Exception:  # a bench that cannot read a default still runs
        return "?"


def _metric(port: int, name: str) -> float:
    """Sum of a Prometheus counter over its labels; 0 when the publisher does not export it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Publisher:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path


def start_publishers(svc: Services, topic: str, group: str, count: int) -> list[Publisher]:
    """`count` `falcon-lake publish` processes in one consumer group, product defaults otherwise."""
    base = {key: value for key, value in os.environ.items() if key not in PRODUCT_DEFAULTS}
    publishers = []
    for index in range(count):
        port = free_port()
        env = {
            **base,
            "KAFKA_BOOTSTRAP_SERVERS": svc.bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "KAFKA_GROUP_ID": group,
            "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL_ARN,
            "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": svc.emulator.url,
            "AWS_ENDPOINT_URL_SSM": svc.moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "SSM_OFFSETS_PARAMETER": f"/bench/{topic}/last_seen_offsets",
            "METRICS_PORT": str(port),
            "LOG_LEVEL": os.environ.get("PUBLISH_LOG_LEVEL", "WARNING"),
        }
        log_path = svc.log_dir / f"{topic}-publish-{index}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "falcon_lake.cli", "publish"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        publishers.append(Publisher(process, port, log_path))
    return publishers


class GroupProgress:
    """The consumer group's committed offsets against the topic's end offsets (no group join)."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.end = {tp.partition: self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions}

    def committed(self) -> dict[int, int]:
        done = self._consumer.committed(self._partitions, timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in done}

    def remaining(self) -> int:
        committed = self.committed()
        return sum(self.end[p] - committed.get(p, 0) for p in self.end)

    def close(self) -> None:
        self._consumer.close()


def _per_feed(accepted: list[AcceptedEvent], uid_feed: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per feed (= partition): the longest time between two consecutive accepted requests (a
    starved or stalled partition), and when its last event was accepted, in seconds after the
    first event of any feed (a partition left behind shows as a late finish)."""
    times: dict[str, set[float]] = defaultdict(set)
    for event in accepted:
        feed = uid_feed.get(event.uid)
        if feed is not None:
            times[feed].add(event.received_s)
    start = min((min(moments) for moments in times.values()), default=0.0)
    gaps, finished = {}, {}
    for feed, moments in times.items():
        ordered = sorted(moments)
        gaps[feed] = max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)
        finished[feed] = ordered[-1] - start
    return gaps, finished


def run_scenario(
    bootstrap: str, scenario: Scenario, records: list[Record], expected: list[Record], withhold: int = 0
) -> dict[str, Any]:
    """Drain `records` (minus the last `withhold`) with the scenario's publishers; `expected` are
    the records the default filter delivers. Returns the figures (see FIGURES) and details."""
    topic = f"bench-{scenario.name.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-publisher"
    create_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
    backlog = records[: len(records) - withhold]
    write_backlog: Callable[[], None] | None = lambda: produce_in_background_priority(  # noqa: E731
        bootstrap, topic, backlog
    )
    try:
        if backlog_first(scenario):
            produce(bootstrap, topic, backlog)
            write_backlog = None
        with services(bootstrap) as svc:
            return _drain(svc, scenario, topic, group, len(backlog), expected, write_backlog)
    finally:
        delete_topics(bootstrap, [topic, f"{topic}.dlq"])


def backlog_first(scenario: Scenario) -> bool:
    """Whether the backlog is written before the publishers start (see the module's docstring)."""
    if os.environ.get("BENCH_BACKLOG_FIRST") == "1":
        return True
    if os.environ.get("BENCH_GROUP_FIRST") == "1":
        return False
    return scenario.publishers == 1


def wait_group_formed(bootstrap: str, group: str, members: int, timeout_s: float = 120.0) -> float:
    """Wait until `group` is stable with `members` members owning all PARTITIONS; returns the seconds it took."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    started = time.time()
    while time.time() - started < timeout_s:
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException:
            description = None
        if description is not None and description.state == ConsumerGroupState.STABLE:
            owned = [len(m.assignment.topic_partitions) for m in description.members]
            if len(owned) == members and sum(owned) == PARTITIONS and all(owned):
                return time.time() - started
        time.sleep(0.2)
    raise RuntimeError(f"consumer group {group} did not form with {members} members in {timeout_s:.0f}s")


def _drain(
    svc: Services,
    scenario: Scenario,
    topic: str,
    group: str,
    produced: int,
    expected: list[Record],
    write_backlog: Callable[[], None] | None,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    publishers = start_publishers(svc, topic, group, scenario.publishers)
    formed_s = float("nan")
    if write_backlog is not None:
        formed_s = wait_group_formed(svc.bootstrap, group, scenario.publishers)
        print(f"   {scenario.name}: group of {scenario.publishers} formed in {formed_s:.1f}s; writing the backlog")
        write_backlog()
    else:
        print(f"   {scenario.name}: the backlog was in Kafka before the publishers started")
    progress = GroupProgress(svc.bootstrap, topic, group, PARTITIONS)
    started = time.time()
    outcome = "drained"
    all_committed_at: float | None = None
    try:
        last_move, last_state = started, (-1, -1)
        while True:
            time.sleep(POLL_S)
            now = time.time()
            accepted = svc.emulator.stats()["events_accepted"]
            remaining = progress.remaining()
            if (accepted, remaining) != last_state:
                last_move, last_state = now, (accepted, remaining)
            if remaining == 0 and accepted >= 1:
                all_committed_at = now
                break
            exited = [p for p in publishers if p.process.poll() is not None]
            if exited:
                outcome = f"a publisher exited ({exited[0].process.returncode}); see {exited[0].log_path}"
                break
            if now - last_move > STALL_S:
                outcome = f"STALLED: nothing accepted or committed for {STALL_S:.0f}s, {remaining} records uncommitted"
                break
            if now - started > DRAIN_TIMEOUT_S:
                outcome = f"TIMED OUT after {DRAIN_TIMEOUT_S:.0f}s, {remaining} records uncommitted"
                break
        rss = [tree_peak_rss_mb(p.process.pid) if p.process.poll() is None else float("nan") for p in publishers]
        ssm_writes = sum(_metric(p.metrics_port, "falcon_lake_publish_ssm_writes_total") for p in publishers)
        stats = svc.emulator.stats()
        lifetime = time.time() - started
        load = (load_before, os.getloadavg())
    finally:
        for publisher in publishers:
            stop_process(publisher.process)
        progress.close()
    accepted_events = svc.emulator.accepted()
    return _figures(
        scenario,
        expected,
        produced,
        accepted_events,
        stats,
        rss,
        ssm_writes / lifetime * 60.0,
        all_committed_at,
        outcome,
        [p.process.returncode for p in publishers],
        svc.log_dir,
        load,
    )


def _figures(
    scenario: Scenario,
    expected: list[Record],
    produced: int,
    accepted: list[AcceptedEvent],
    stats: dict[str, Any],
    rss: list[float],
    ssm_writes_per_min: float,
    all_committed_at: float | None,
    outcome: str,
    exit_codes: list[int | None],
    log_dir: Path,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> dict[str, Any]:
    uid_feed = {record.uid: record.feed for record in expected}
    stored = [event.uid for event in accepted]
    unique = set(stored)
    delivered = unique & uid_feed.keys()
    moments = sorted(event.received_s for event in accepted)
    first, last = (moments[0], moments[-1]) if moments else (0.0, 0.0)
    window = max(last - first, 1e-3)
    requests = int(stats["requests"])
    gaps, finished = _per_feed(accepted, uid_feed)
    figures: dict[str, Any] = {
        "events_per_s": len(delivered) / window,
        "requests_per_s": requests / window,
        "throttled_pct": 100.0 * stats["requests_throttled"] / max(1, requests),
        "calls_per_event": requests / max(1, len(delivered)),
        "peak_rss_mb": max((mb for mb in rss if mb == mb), default=float("nan")),  # nan: the process had exited
        "ssm_writes_per_min": ssm_writes_per_min,
        "duplicates": len(stored) - len(unique),
        "missing": len(uid_feed.keys() - unique),
        "longest_stall_s": max(gaps.values(), default=0.0),
    }
    if scenario.backlog == "mix" and all_committed_at is not None and moments:
        figures["records_per_s"] = produced / max(all_committed_at - first, 1e-3)
    details = {
        "records": produced,
        "expected": len(uid_feed),
        "stored": len(stored),
        "unexpected": len(unique - uid_feed.keys()),
        "drain_seconds": window,
        "requests": requests,
        "requests_throttled": stats["requests_throttled"],
        "requests_by_error": stats.get("requests_by_error", {}),
        "events_failed_by_code": stats.get("events_failed_by_code", {}),
        "rss_per_publisher_mb": rss,
        "longest_gap_per_feed_s": gaps,
        "finished_per_feed_s": finished,
        "outcome": outcome,
        "exit_codes": exit_codes,
        "logs": str(log_dir),
        "load_average_start_end": load,  # (1, 5, 15 min) when the publishers started and when the drain ended
    }
    return {**{f"{scenario.name}_{key}": value for key, value in figures.items()}, f"{scenario.name}_details": details}


def settings_line(quick: bool, withhold: int) -> str:
    logins, mix = (QUICK_LOGIN_BACKLOG, QUICK_MIX_BACKLOG) if quick else (LOGIN_BACKLOG, MIX_BACKLOG)
    line = (
        f"settings: CloudTrail emulator --tps {EMULATOR_TPS:g} --latency-ms {EMULATOR_LATENCY_MS}; "
        f"{PARTITIONS} partitions, one feed each; {logins:,} logins ({', '.join(LOGIN_OPERATIONS)}; "
        f"{FAILED_FRACTION:.0%} failed); mix of {mix:,} records; publisher settings: product defaults "
        f"(PUT_RATE_LIMIT not set, product default {product_rate_limit()}; FILTER_PRESET gateway); "
        f"one publisher starts onto the backlog, three form their group before it is written"
    )
    return line + (f"; WITHHOLDING {withhold} record(s) per backlog (self-test)" if withhold else "")


def run(
    quick: bool = False, bootstrap: str | None = None, only: tuple[str, ...] = (), withhold: int | None = None
) -> dict[str, Any]:
    """Figures of every scenario and of the old gateway (see the module docstring). Keys:
    `<scenario>_<figure>` for each name in FIGURES, `<scenario>_details`, `<figure>_baseline` for
    BASELINE_FIGURES, `missing_total`, and `settings`. `only` limits the run to some scenario names
    (and/or "baseline")."""
    quick = quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    withhold = int(os.environ.get("BENCH_WITHHOLD", "0")) if withhold is None else withhold
    wanted = set(only) or {s.name for s in SCENARIOS} | {"baseline"}
    results: dict[str, Any] = {"settings": settings_line(quick, withhold)}
    print(results["settings"], flush=True)
    logins = login_backlog(QUICK_LOGIN_BACKLOG if quick else LOGIN_BACKLOG)
    results["login_backlog_events"] = len(logins)
    results["login_backlog_failed"] = failed_logins(logins)
    missing = 0
    for scenario in SCENARIOS:
        if scenario.name not in wanted:
            continue
        if scenario.backlog == "logins":
            records, expected = logins, logins
        else:
            records = realistic_mix(QUICK_MIX_BACKLOG if quick else MIX_BACKLOG)
            expected = [record for record in records if delivered_by_gateway(record)]
        print(f"-- {scenario.name}: {scenario.label}, {len(records):,} records", flush=True)
        figures = run_scenario(bootstrap, scenario, records, expected, withhold)
        results.update(figures)
        missing += figures[f"{scenario.name}_missing"]
        print(scenario_summary(scenario, figures), flush=True)
    results["missing_total"] = missing
    if "baseline" in wanted:
        results.update(baseline(bootstrap, logins, QUICK_BASELINE_SECONDS if quick else BASELINE_SECONDS))
    return results


def baseline(bootstrap: str, records: list[Record], seconds: float) -> dict[str, float]:
    """The old gateway's figures on the login backlog, `<figure>_baseline` for BASELINE_FIGURES."""
    topic = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: PARTITIONS})
    try:
        produce(bootstrap, topic, records)
        with services(bootstrap) as svc:
            old = run_baseline(svc, topic, seconds)
    finally:
        delete_topics(bootstrap, [topic])
    return {f"{name}_baseline": old[name] for name in BASELINE_FIGURES}


def scenario_summary(scenario: Scenario, results: dict[str, Any]) -> str:
    """A few lines: the figures, the outcome, and a loud line when events are missing."""
    name = scenario.name
    details = results[f"{name}_details"]
    gaps = ", ".join(f"{feed}: {s:.1f}s" for feed, s in sorted(details["longest_gap_per_feed_s"].items()))
    finished = ", ".join(f"{feed}: {s:.1f}s" for feed, s in sorted(details["finished_per_feed_s"].items()))
    load = " -> ".join("/".join(f"{value:.2f}" for value in moment) for moment in details["load_average_start_end"])
    lines = [
        f"   {name}: {details['outcome']}; {details['records']:,} records, {details['expected']:,} expected; "
        f"load average (1/5/15 min) {load}"
    ]
    for key, (unit, aims, _higher) in FIGURES.items():
        value = results.get(f"{name}_{key}")
        if value is None:
            continue
        aim = aims.get(name, "")
        digits = 3 if key == "calls_per_event" else 0 if key in ("duplicates", "missing") else 1
        shown = f"{value:,.{digits}f}"
        lines.append(f"   {key:<20} {shown:>12} {unit:<14} {('aim ' + aim) if aim else ''}")
    lines.append(
        f"   stored {details['stored']:,} (unexpected {details['unexpected']}); requests {details['requests']:,}, "
        f"errors {details['requests_by_error']}, failed events {details['events_failed_by_code']}; "
        f"RSS per publisher {', '.join(f'{mb:.0f}' for mb in details['rss_per_publisher_mb'])} MB; "
        f"longest gap per feed {gaps}; last event per feed at {finished}; "
        f"exit codes {details['exit_codes']}; logs {details['logs']}"
    )
    if results[f"{name}_missing"]:
        lines.append(f"   !!! {name}: {results[f'{name}_missing']:,} EXPECTED EVENTS MISSING from CloudTrail Lake !!!")
    else:
        lines.append(f"   {name}: zero missing: every one of {details['expected']:,} expected events is stored")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    results = run(only=tuple(argv))
    if "drain_events_per_s_baseline" in results:
        print("old gateway: " + ", ".join(f"{name} {results[f'{name}_baseline']:,.3g}" for name in BASELINE_FIGURES))
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("_details")}, indent=1))
    return 1 if results["missing_total"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
