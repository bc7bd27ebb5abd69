"""`make bench`: every benchmark in one run; prints a table and writes bench/results/latest.json.

Figures, never pass/fail on time. BENCH_QUICK=1 runs each one smaller (under two minutes
in all). The broker: KAFKA_BOOTSTRAP_SERVERS, or a private one started for the run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (key, label, unit) of every figure the table shows, in order; a ratio column is added where the
# old gateway's strategy was measured in the same run.
ROWS: list[tuple[str, str, str]] = [
    ("falcon_emulator_events_per_s", "Falcon emulator: events served", "events/s"),
    ("ingest_events_per_s", "ingest: Falcon -> Kafka, 1 KB events, one feed", "events/s"),
    ("ingest_peak_rss_mb", "ingest: peak RSS", "MB"),
    ("convert_events_per_s", "convert: realistic mix, one core", "events/s"),
    ("publish_drain_events_per_s", "publish: 100k backlog drain, tps 100, 50 ms", "events/s"),
    ("publish_calls_per_event", "publish: PutAuditEvents calls per event", "calls"),
    ("publish_ssm_writes_per_min", "publish: SSM writes per minute", "writes/min"),
    ("publish_peak_rss_mb", "publish: peak RSS", "MB"),
    ("e2e_latency_p50_ms", "end to end at 500 events/s: latency p50", "ms"),
    ("e2e_latency_p99_ms", "end to end at 500 events/s: latency p99", "ms"),
    ("e2e_ingestor_cpu_pct", "end to end: ingestor CPU", "% of a core"),
    ("e2e_publisher_cpu_pct", "end to end: publisher CPU", "% of a core"),
    ("e2e_ingestor_rss_mb", "end to end: ingestor peak RSS", "MB"),
    ("e2e_publisher_rss_mb", "end to end: publisher peak RSS", "MB"),
]
BASELINES = {
    "publish_drain_events_per_s": "drain_events_per_s_baseline",
    "publish_calls_per_event": "calls_per_event_baseline",
    "publish_ssm_writes_per_min": "ssm_writes_per_min_baseline",
    "publish_peak_rss_mb": "peak_rss_mb_baseline",
}


class PrivateBroker:
    def __init__(self) -> None:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                ports.append(sock.getsockname()[1])
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(ports[0]),
            "KAFKA_CONTROLLER_PORT": str(ports[1]),
            "KAFKA_DATA_DIR": tempfile.mkdtemp(prefix="falcon-lake-bench-kafka-"),
        }
        self.bootstrap = f"127.0.0.1:{ports[0]}"

    def start(self) -> None:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], env=self.env, check=True)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "stop"], env=self.env, check=False)


def _benchmarks(quick: bool, bootstrap: str) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    from bench import convert, end_to_end, falcon_emulator, ingest, publish

    def falcon() -> dict[str, Any]:
        figures = falcon_emulator.measure(events=100_000 if quick else 300_000, event_size=1024)
        return {"falcon_emulator_events_per_s": figures.get("events_per_s", figures.get("events_per_second"))}

    return [
        ("Falcon emulator", falcon),
        ("convert", lambda: convert.run(quick)),
        ("ingest", lambda: ingest.run(quick, bootstrap)),
        ("publish", lambda: publish.run(quick, bootstrap)),
        ("end to end", lambda: end_to_end.run(quick, bootstrap)),
    ]


def _normalise(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Each benchmark names its figures its own way; map the usual names onto the table's keys."""
    aliases = {
        "convert": {"convert_mix_all-user-activity_events_per_s": "convert_events_per_s"},
        "ingest": {"events_per_s": "ingest_events_per_s", "peak_rss_mb": "ingest_peak_rss_mb"},
        "publish": {
            "drain_events_per_s": "publish_drain_events_per_s",
            "events_per_s": "publish_drain_events_per_s",
            "calls_per_event": "publish_calls_per_event",
            "ssm_writes_per_min": "publish_ssm_writes_per_min",
            "peak_rss_mb": "publish_peak_rss_mb",
        },
    }.get(name, {})
    return {aliases.get(key, key): value for key, value in figures.items()}


def render(results: dict[str, Any], machine: str, quick: bool, seconds: float, failures: list[str]) -> str:
    """The Markdown table of the figures, with the old gateway's beside them where measured."""

    def number(value: float) -> str:
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"

    lines = [f"falcon-lake benchmarks ({'quick' if quick else 'full'}), {machine}", ""]
    lines.append("| figure | value | unit | old gateway | ratio |")
    lines.append("|---|---:|---|---:|---:|")
    for key, label, unit in ROWS:
        value = results.get(key)
        base_key = BASELINES.get(key)
        base = results.get(base_key) if base_key else None
        shown = number(value) if isinstance(value, int | float) else "n/a"
        base_shown = number(base) if isinstance(base, int | float) else ""
        ratio = (
            f"{value / base:.3g}x" if isinstance(value, int | float) and isinstance(base, int | float) and base else ""
        )
        lines.append(f"| {label} | {shown} | {unit} | {base_shown} | {ratio} |")
    lines.append("")
    lines.append(f"total {seconds:.0f}s" + (f"; failed: {', '.join(failures)}" if failures else ""))
    return "\n".join(lines)


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    broker: PrivateBroker | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = PrivateBroker()
        broker.start()
        bootstrap = broker.bootstrap
    results: dict[str, Any] = {}
    failures: list[str] = []
    started = time.monotonic()
    try:
        for name, bench in _benchmarks(quick, bootstrap):
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            try:
                results.update(_normalise(name, bench()))
            except Exception:
                failures.append(name)
                traceback.print_exc()
            print(f"   ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    table = render(results, machine, quick, time.monotonic() - started, failures)
    print(table)
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps({"machine": machine, "quick": quick, "figures": results, "failed": failures}, indent=2)
    )
    (out / "latest.md").write_text(table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
