"""End to end at a steady rate: latency from event creation to CloudTrail acceptance, CPU and RSS of both processes.

The Falcon emulator creates events at a steady rate (creation time = the moment an event
appears), the ingestor and the publisher run as separate processes as in production, and
the CloudTrail emulator applies the real quota (100 TPS) and 20-60 ms of latency. Latency is
the CloudTrail emulator's receive time minus the event's eventCreationTime.

    python -m bench.end_to_end [--rate 500] [--seconds 60]     (KAFKA_BOOTSTRAP_SERVERS: a running broker)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
CLI = [sys.executable, "-m", "falcon_lake.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, *args], env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT
    )


def _url(log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"no URL in {log}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    quick: bool = False, bootstrap: str | None = None, rate: int = 500, seconds: float | None = None
) -> dict[str, float]:
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    seconds = seconds or (20.0 if quick else 60.0)
    feeds = 2
    per_feed_rate = max(1, rate // feeds)
    work = Path(tempfile.mkdtemp(prefix="falcon-lake-e2e-"))
    db_path = work / "lake.db"
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        falcon_log, ct_log = work / "falcon.log", work / "cloudtrail.log"
        procs.append(
            _start(
                [
                    "emulate",
                    "falcon",
                    "--port",
                    "0",
                    "--feeds",
                    str(feeds),
                    "--rate",
                    str(per_feed_rate),
                    "--events",
                    str(int(per_feed_rate * (seconds + 30))),
                ],
                {},
                falcon_log,
            )
        )
        procs.append(
            _start(
                ["emulate", "cloudtrail", "--port", "0", "--db", str(db_path), "--tps", "100", "--latency-ms", "20-60"],
                {},
                ct_log,
            )
        )
        falcon_url, ct_url = _url(falcon_log), _url(ct_log)
        topic = f"bench.e2e.{int(time.time())}"
        common = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": topic + ".dlq",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_SSM": f"http://127.0.0.1:{moto_port}",
            "SSM_REGION": "us-east-1",
            "SSM_OFFSETS_PARAMETER": f"/{topic}/offsets",
            "METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
        }
        ingestor = _start(
            ["ingest"],
            {**common, "FALCON_CLIENT_ID": "demo", "FALCON_CLIENT_SECRET": "demo", "FALCON_CLOUD_REGION": falcon_url},
            work / "ingest.log",
        )
        publisher = _start(
            ["publish"],
            {
                **common,
                "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL,
                "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": ct_url,
                "FILTER_PRESET": "all-user-activity",
                "KAFKA_GROUP_ID": topic,
            },
            work / "publish.log",
        )
        procs += [ingestor, publisher]
        time.sleep(5)  # warm-up: topic creation, group join
        cpu0 = {p.pid: _cpu_seconds(p.pid) for p in (ingestor, publisher)}
        started = time.time()
        time.sleep(seconds)
        ended = time.time()
        cpu = {p.pid: _cpu_seconds(p.pid) - cpu0[p.pid] for p in (ingestor, publisher)}
        rss = {p.pid: _peak_rss_mb(p.pid) for p in (ingestor, publisher)}
        latencies: list[float] = []
        with sqlite3.connect(db_path) as db:
            rows = db.execute(
                "SELECT received_at, json_extract(event_data, '$.additionalEventData.raw.metadata.eventCreationTime') "
                "FROM audit_events"
            ).fetchall()
        for received_at, created_ms in rows:
            received = datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
            if created_ms is not None and started <= received <= ended:
                latencies.append(received * 1000 - float(created_ms))
        return {
            "e2e_rate_events_per_s": rate,
            "e2e_delivered_per_s": len(latencies) / seconds,
            "e2e_latency_p50_ms": _percentile(latencies, 0.50),
            "e2e_latency_p99_ms": _percentile(latencies, 0.99),
            "e2e_ingestor_cpu_pct": 100 * cpu[ingestor.pid] / seconds,
            "e2e_publisher_cpu_pct": 100 * cpu[publisher.pid] / seconds,
            "e2e_ingestor_rss_mb": rss[ingestor.pid],
            "e2e_publisher_rss_mb": rss[publisher.pid],
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        moto.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="events/s created by Falcon (all feeds)")
    parser.add_argument("--seconds", type=float, default=None, help="measured duration (default 60, quick 20)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = run(
        args.quick or os.environ.get("BENCH_QUICK") == "1", rate=args.rate, seconds=args.seconds
    )
    for name, value in figures.items():
        print(f"{name:<28} {value:>12,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
