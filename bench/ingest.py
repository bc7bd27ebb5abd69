"""How fast `falcon-lake ingest` moves events from Falcon into Kafka, and how much memory it takes.

Starts the Falcon emulator (`python -m emulators.falcon`, one feed, ~1 KB events, a backlog of
EVENTS) and the ingestor (`python -m falcon_lake.cli ingest`), each in its own process, against
the broker named by KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), into a fresh topic. The
clock starts when the ingestor logs that the feed is connected and stops when the topic holds
every event (watched through the partition high watermarks). Peak RSS is the ingestor's VmHWM
from /proc/<pid>/status, read just before it is stopped.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m bench.ingest [--quick]

BENCH_QUICK=1 (or --quick) reads 40,000 events instead of 200,000.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
EVENT_SIZE = 1024
FULL_EVENTS = 200_000
QUICK_EVENTS = 40_000
TIMEOUT_S = 300.0
SECRET = "bench-secret-0123456789"


def _start_emulator(events: int) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "emulators.falcon",
        "--port",
        "0",
        "--feeds",
        "1",
        "--events",
        str(events),
        "--event-size",
        str(EVENT_SIZE),
        "--hold-seconds",
        "0",
        "--keepalive-seconds",
        "0",
        "--client-secret",
        SECRET,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("falcon emulator listening on "):
        process.kill()
        raise RuntimeError(f"the Falcon emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[-1]


def _in_topic(consumer: Consumer, topic: str) -> int:
    """Records in the topic now (sum of high watermarks; the topic starts empty)."""
    try:
        metadata = consumer.list_topics(topic, timeout=5)
        partitions = metadata.topics[topic].partitions
    except Exception:
        return 0
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in partitions)


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return int(match.group(1)) / 1024


def _wait_for_log(path: Path, process: subprocess.Popen[bytes], pattern: str, timeout: float) -> float:
    """Poll the ingestor's log for `pattern`; the monotonic time it was seen."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if regex.search(path.read_text(errors="replace")):
            return time.monotonic()
        if process.poll() is not None:
            raise RuntimeError(f"the ingestor exited ({process.returncode}):\n{path.read_text()[-2000:]}")
        time.sleep(0.01)
    raise RuntimeError(f"no /{pattern}/ in the ingestor log after {timeout}s")


def run(quick: bool = False, bootstrap: str | None = None) -> dict[str, float]:
    """Ingest a backlog of 1 KB events from one feed; events/s, MB/s and the ingestor's peak RSS (MB)."""
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    events = QUICK_EVENTS if quick else FULL_EVENTS
    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    emulator, url = _start_emulator(events)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}"})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    log_path = log_dir / "ingest.log"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_TOPIC_PARTITIONS": "1",
        "FALCON_CLIENT_ID": "demo",
        "FALCON_CLIENT_SECRET": SECRET,
        "FALCON_CLOUD_REGION": url,
        "FALCON_APPLICATION_ID": "bench",
        "METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("SSM_REGION", "CLOUDTRAIL_LAKE_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        env.pop(name, None)  # no SSM: resume from Kafka alone
    ingestor: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            ingestor = subprocess.Popen(
                [sys.executable, "-m", "falcon_lake.cli", "ingest"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            started = _wait_for_log(log_path, ingestor, r"feed 0: connected", 60)
            deadline = started + TIMEOUT_S
            count = 0
            while count < events:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {count} of {events} events in {topic} after {TIMEOUT_S}s")
                if ingestor.poll() is not None:
                    raise RuntimeError(f"the ingestor exited ({ingestor.returncode}):\n{log_path.read_text()[-2000:]}")
                time.sleep(0.02)
                count = _in_topic(consumer, topic)
            seconds = time.monotonic() - started
            peak_rss = _peak_rss_mb(ingestor.pid)
            ingestor.terminate()
            code = ingestor.wait(30)
            if code != 0:
                raise RuntimeError(f"the ingestor exited {code}:\n{log_path.read_text()[-2000:]}")
    finally:
        if ingestor is not None and ingestor.poll() is None:
            ingestor.kill()
            ingestor.wait(10)
        emulator.terminate()
        emulator.wait(10)
        consumer.close()
        for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic, f"{topic}.dlq"]).values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)
    return {
        "ingest_events": float(events),
        "ingest_seconds": seconds,
        "ingest_events_per_s": events / seconds,
        "ingest_mb_per_s": events * EVENT_SIZE / seconds / 1e6,
        "ingest_peak_rss_mb": peak_rss,
    }


def main(argv: list[str]) -> int:
    quick = "--quick" in argv or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    results = run(quick=quick)
    width = max(len(name) for name in results)
    print(f"{'figure':<{width}}  value")
    for name, value in results.items():
        shown = f"{value:,.1f}" if name.endswith(("_mb", "_mb_per_s", "_seconds")) else f"{value:,.0f}"
        print(f"{name:<{width}}  {shown}")
    print("targets: ingest_events_per_s >= 30,000, ingest_peak_rss_mb < 150")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
