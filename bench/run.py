"""`make bench`: every benchmark in one run; prints a table and writes it to bench/results/local/.

Figures, never pass/fail on time (but a publish run that loses an event fails). BENCH_QUICK=1
runs each one smaller. The broker: KAFKA_BOOTSTRAP_SERVERS, or a private one started for the run.
bench/results/local/ is ignored by git; `make bench-record` (`python -m bench.run record`) copies
the last full run's table to the committed bench/results/latest.md.
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

# (key, label, unit, aim) of every figure the table shows, in order; the old gateway's figure and
# the ratio are added where its strategy was measured in the same run.
ROWS: list[tuple[str, str, str, str]] = [
    ("falcon_emulator_events_per_s", "Falcon emulator: events served", "events/s", ""),
    ("ingest_events_per_s", "ingest: Falcon -> Kafka, 1 KB events, one feed", "events/s", ""),
    ("ingest_peak_rss_mb", "ingest: peak RSS", "MB", ""),
    ("convert_events_per_s", "convert: realistic mix, one core", "events/s", ""),
    ("publish_logins_1p_events_per_s", "publish, logins, 1 publisher: delivered", "events/s", ">= 9,000 (goal 9,500)"),
    ("publish_logins_1p_requests_per_s", "publish, logins, 1 publisher: PutAuditEvents", "requests/s", ""),
    ("publish_logins_1p_throttled_pct", "publish, logins, 1 publisher: throttled", "% of requests", ""),
    ("publish_logins_1p_calls_per_event", "publish, logins, 1 publisher: calls per event", "calls", ""),
    ("publish_logins_1p_ssm_writes_per_min", "publish, logins, 1 publisher: SSM writes", "writes/min", ""),
    ("publish_logins_1p_peak_rss_mb", "publish, logins, 1 publisher: peak RSS", "MB", "< 200"),
    ("publish_logins_1p_duplicates", "publish, logins, 1 publisher: duplicates", "events", ""),
    ("publish_logins_1p_missing", "publish, logins, 1 publisher: missing", "events", "0"),
    ("publish_logins_3p_events_per_s", "publish, logins, 3 publishers: delivered", "events/s", ">= 9,000 (goal 9,500)"),
    ("publish_logins_3p_requests_per_s", "publish, logins, 3 publishers: PutAuditEvents", "requests/s", ""),
    ("publish_logins_3p_throttled_pct", "publish, logins, 3 publishers: throttled", "% of requests", "<= 5"),
    ("publish_logins_3p_calls_per_event", "publish, logins, 3 publishers: calls per event", "calls", ""),
    ("publish_logins_3p_peak_rss_mb", "publish, logins, 3 publishers: peak RSS (largest)", "MB", "< 200"),
    ("publish_logins_3p_duplicates", "publish, logins, 3 publishers: duplicates", "events", ""),
    ("publish_logins_3p_missing", "publish, logins, 3 publishers: missing", "events", "0"),
    ("publish_mix_1p_records_per_s", "publish, realistic mix, 1 publisher: consumed", "records/s", ""),
    ("publish_mix_1p_events_per_s", "publish, realistic mix, 1 publisher: delivered", "events/s", ">= 7,000"),
    ("publish_mix_1p_throttled_pct", "publish, realistic mix, 1 publisher: throttled", "% of requests", ""),
    ("publish_mix_1p_peak_rss_mb", "publish, realistic mix, 1 publisher: peak RSS", "MB", "< 200"),
    ("publish_mix_1p_missing", "publish, realistic mix, 1 publisher: missing", "events", "0"),
    ("e2e_latency_p50_ms", "end to end at 500 events/s: latency p50", "ms", ""),
    ("e2e_latency_p99_ms", "end to end at 500 events/s: latency p99", "ms", ""),
    ("e2e_ingestor_cpu_pct", "end to end: ingestor CPU", "% of a core", ""),
    ("e2e_publisher_cpu_pct", "end to end: publisher CPU", "% of a core", ""),
    ("e2e_ingestor_rss_mb", "end to end: ingestor peak RSS", "MB", ""),
    ("e2e_publisher_rss_mb", "end to end: publisher peak RSS", "MB", ""),
]
BASELINES = {
    "publish_logins_1p_events_per_s": "drain_events_per_s_baseline",
    "publish_logins_1p_calls_per_event": "calls_per_event_baseline",
    "publish_logins_1p_ssm_writes_per_min": "ssm_writes_per_min_baseline",
    "publish_logins_1p_peak_rss_mb": "peak_rss_mb_baseline",
}
RESULTS = ROOT / "bench/results"
LOCAL = RESULTS / "local"  # ignored by git: what `make bench` writes
RECORDED = RESULTS / "latest.md"  # committed: refreshed only by `make bench-record`


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
    }.get(name, {})
    if name == "publish":  # every figure gets the prefix, except the old gateway's (BASELINES names them)
        return {key if key.endswith("_baseline") else f"publish_{key}": value for key, value in figures.items()}
    return {aliases.get(key, key): value for key, value in figures.items()}


def render(
    results: dict[str, Any], machine: str, quick: bool, seconds: float, failures: list[str], load: list[str]
) -> str:
    """The Markdown table of the figures with their aims, and the old gateway's beside them where measured."""

    def number(value: float) -> str:
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"

    lines = [f"falcon-lake benchmarks ({'quick' if quick else 'full'}), {machine}", ""]
    lines.append("| figure | value | unit | aim | old gateway | ratio |")
    lines.append("|---|---:|---|---|---:|---:|")
    for key, label, unit, aim in ROWS:
        value = results.get(key)
        base_key = BASELINES.get(key)
        base = results.get(base_key) if base_key else None
        shown = number(value) if isinstance(value, int | float) else "n/a"
        base_shown = number(base) if isinstance(base, int | float) else ""
        ratio = (
            f"{value / base:.3g}x" if isinstance(value, int | float) and isinstance(base, int | float) and base else ""
        )
        lines.append(f"| {label} | {shown} | {unit} | {aim} | {base_shown} | {ratio} |")
    lines.append("")
    if isinstance(results.get("publish_settings"), str):
        lines.append(f"publish {results['publish_settings']}")
        lines.append("")
    lines.append("load average (1, 5, 15 min) after each benchmark: " + "; ".join(load))
    lines.append("")
    lines.append(f"total {seconds:.0f}s" + (f"; failed: {', '.join(failures)}" if failures else ""))
    return "\n".join(lines)


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def record() -> int:
    """`make bench-record`: copy the last full run's table to the committed bench/results/latest.md."""
    source = LOCAL / "latest.json"
    if not source.exists():
        print(f"no run to record: {source} is missing; run `make bench` first", file=sys.stderr)
        return 1
    run = json.loads(source.read_text())
    if run.get("quick"):
        print("the last run was a quick one (BENCH_QUICK=1); record only a full `make bench`", file=sys.stderr)
        return 1
    if run.get("failed"):
        print(f"the last run had failures ({', '.join(run['failed'])}); not recording it", file=sys.stderr)
        return 1
    RECORDED.write_text((LOCAL / "latest.md").read_text())
    print(f"recorded {LOCAL / 'latest.md'} as {RECORDED}; commit it with the change it measures")
    return 0


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
    load = [f"start {_load()}"]
    started = time.monotonic()
    try:
        for name, bench in _benchmarks(quick, bootstrap):
            print(f"== {name} (load average {_load()})", flush=True)
            t0 = time.monotonic()
            try:
                results.update(_normalise(name, bench()))
            except Exception:
                failures.append(name)
                traceback.print_exc()
            load.append(f"{name} {_load()}")
            print(f"   ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    if results.get("publish_missing_total"):
        # A drain that loses events is a failed benchmark, whatever its speed.
        failures.append(f"publish ({results['publish_missing_total']} events missing)")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    table = render(results, machine, quick, time.monotonic() - started, failures, load)
    print(table)
    LOCAL.mkdir(parents=True, exist_ok=True)
    (LOCAL / "latest.json").write_text(
        json.dumps({"machine": machine, "quick": quick, "figures": results, "failed": failures, "load": load}, indent=2)
    )
    (LOCAL / "latest.md").write_text(table + "\n")
    print(f"written to {LOCAL}; `make bench-record` copies a full run's table to {RECORDED.relative_to(ROOT)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(record() if sys.argv[1:] == ["record"] else main())
