"""`make demo`: the whole pipeline on this machine, as in production, then a check that nothing was lost.

Starts (or reuses) the local Apache Kafka broker, a moto server (SSM), the Falcon and
CloudTrail Lake emulators with a small share of faults switched on, then the ingestor and
the publisher as separate processes. Shows live progress, a summary with CloudTrail Lake
queries over what landed (CloudTrail Lake SQL through the query API, the statements an
operator would paste into the console), and `falcon-lake audit --event-data-store` over
every served event. Stops what it started.
Exit 0 only when every event was delivered, dead-lettered with a reason or filtered by a
named rule.

Environment: DEMO_EVENTS (20000), DEMO_FEEDS (2), DEMO_RATE (events/s per feed, 2000),
DEMO_QUIET=1 (no live display, for CI), KAFKA_BOOTSTRAP_SERVERS (use a running broker).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from falcon_lake.ops.audit import read_record_file  # noqa: E402
from falcon_lake.ops.lake_client import LakeQueryError, format_bytes, run_query  # noqa: E402

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
EVENT_DATA_STORE = "arn:aws:cloudtrail:us-east-1:123456789012:eventdatastore/0f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
STORE_ID = EVENT_DATA_STORE.rsplit("/", 1)[1]
console = Console(stderr=False)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not say /{pattern}/ (see {self.log_path}):\n{tail}")

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def scrape(port: int) -> dict[str, float]:
    """Prometheus metrics of a process: sample name (with labels folded) -> summed value."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def stats(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=2) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except OSError:
        return {}


def progress_table(
    total: int, ing: dict[str, float], pub: dict[str, float], elapsed: float, rates: dict[str, float]
) -> Table:
    table = Table(title=f"falcon-lake demo — {elapsed:5.1f}s", expand=False)
    for column in ("stage", "events", "rate/s"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    rows = [
        ("read from Falcon", ing.get("falcon_lake_ingest_events_read_total", 0)),
        ("produced to Kafka", ing.get("falcon_lake_ingest_events_produced_total", 0)),
        ("consumed by publisher", pub.get("falcon_lake_publish_consumed_total", 0)),
        ("filtered (named rules)", pub.get("falcon_lake_publish_filtered_total", 0)),
        ("accepted by CloudTrail Lake", pub.get("falcon_lake_publish_accepted_total", 0)),
        (
            "dead-lettered",
            pub.get("falcon_lake_publish_dead_lettered_total", 0)
            + ing.get("falcon_lake_ingest_dead_lettered_total", 0),
        ),
    ]
    for name, value in rows:
        table.add_row(
            name, f"{int(value):,} / {total:,}" if "read" in name else f"{int(value):,}", f"{rates.get(name, 0):,.0f}"
        )
    table.add_row("PutAuditEvents calls", f"{int(pub.get('falcon_lake_publish_requests_total', 0)):,}", "")
    table.add_row("reconnects (faults)", f"{int(ing.get('falcon_lake_ingest_reconnects_total', 0)):,}", "")
    return table


# CloudTrail Lake SQL, as an operator pastes it into the console (FROM the event data store's id).
LAKE_QUERIES = [
    (
        "Events per operation",
        f"SELECT eventData.eventName AS operation, COUNT(*) AS events FROM {STORE_ID} "
        "GROUP BY eventData.eventName ORDER BY events DESC LIMIT 12",
    ),
    (
        "Failed logins by user",
        "SELECT eventData.userIdentity.principalId AS principal, eventData.errorCode AS error, COUNT(*) AS failures "
        f"FROM {STORE_ID} WHERE eventData.errorCode = 'AuthenticationFailed' "
        "GROUP BY eventData.userIdentity.principalId, eventData.errorCode ORDER BY failures DESC LIMIT 8",
    ),
]
SAMPLE_QUERY = f"SELECT eventData FROM {STORE_ID} WHERE eventData.errorCode = 'AuthenticationFailed' LIMIT 1"


def cloudtrail_client(url: str) -> Any:
    """The query API's client, pointed at the emulator (as AWS_ENDPOINT_URL_CLOUDTRAIL would)."""
    import boto3

    return boto3.session.Session().client(
        "cloudtrail",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",  # the documented local test pair the emulator verifies
        aws_secret_access_key="testing",
    )


def latencies_ms(db_path: str) -> list[float]:
    """End to end: CloudTrail's receive time minus the event's eventCreationTime."""
    values = []
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT received_at, json_extract(event_data,'$.additionalEventData.raw.metadata.eventCreationTime') "
            "FROM audit_events"
        )
        for received_at, created_ms in rows:
            if created_ms is None:
                continue
            received = time.mktime(time.strptime(received_at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            received += int(received_at[20:23]) / 1000 if len(received_at) >= 23 else 0
            values.append(received * 1000 - float(created_ms))
    return values


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(total: int, feeds: int, rate: int, quiet: bool, stack: ExitStack, work: Path) -> int:
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [python, "-m", "falcon_lake.cli"]

    # 1. Kafka: a running broker (KAFKA_BOOTSTRAP_SERVERS) or the local one, started if needed.
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        port = os.environ.get("KAFKA_PORT", "9092")
        console.print(f"[bold]1/6[/] Apache Kafka on 127.0.0.1:{port} (scripts/kafka.sh start)")
        already = subprocess.run([str(ROOT / "scripts/kafka.sh"), "status"], capture_output=True).returncode == 0
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], check=True)
        if not already:
            stack.callback(lambda: subprocess.run([str(ROOT / "scripts/kafka.sh"), "stop"], check=False))
        bootstrap = f"127.0.0.1:{port}"
    else:
        console.print(f"[bold]1/6[/] Apache Kafka at {bootstrap} (already running)")

    # 2. moto for SSM, 3. the two emulators.
    console.print("[bold]2/6[/] moto (SSM Parameter Store) on 127.0.0.1")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    stack.callback(moto.stop)

    per_feed = max(1, total // feeds)
    record = work / "falcon-served.ndjson"
    db_path = str(work / "lake.db")
    console.print(
        f"[bold]3/6[/] emulators: Falcon ({feeds} feeds x {per_feed:,} events at {rate:,}/s, faults: disconnects, "
        "a 401, malformed lines, 429s) and CloudTrail Lake (100 TPS quota, 20-60 ms, 1% throttled, 1% failures)"
    )
    falcon = Service(
        "falcon-emulator",
        [
            *cli,
            "emulate",
            "falcon",
            "--port",
            "0",
            "--feeds",
            str(feeds),
            "--events",
            str(per_feed),
            "--rate",
            str(rate),
            "--seed",
            "7",
            "--record",
            str(record),
            "--hold-seconds",
            "0.5",
            "--disconnect-every",
            str(max(500, per_feed // 3)),
            "--feed-401-every",
            "4",
            "--malformed-every",
            str(max(1000, per_feed // 2)),
            "--rate-limit-every",
            "25",
            "--refresh-interval",
            "30",
        ],
        env,
        work,
    )
    stack.callback(falcon.stop)
    falcon_url = falcon.wait_line(r"listening on (http://\S+)").group(1)
    cloudtrail = Service(
        "cloudtrail-emulator",
        [
            *cli,
            "emulate",
            "cloudtrail",
            "--port",
            "0",
            "--db",
            db_path,
            "--tps",
            "100",
            "--latency-ms",
            "20-60",
            "--throttle-rate",
            "0.01",
            "--internal-failure-rate",
            "0.01",
            "--seed",
            "7",
            "--event-data-store",
            EVENT_DATA_STORE,
        ],
        env,
        work,
    )
    stack.callback(cloudtrail.stop)
    cloudtrail_url = cloudtrail.wait_line(r"listening on (http://\S+)").group(1)

    # 4. The pipeline: two processes, as in production.
    ingest_port, publish_port = free_port(), free_port()
    common = {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": f"demo.events.{int(time.time())}",
        # The documented local test credentials: moto accepts any, the CloudTrail emulator verifies these.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SSM": f"http://127.0.0.1:{moto_port}",
        "SSM_REGION": "us-east-1",
        "SSM_OFFSETS_PARAMETER": "/falcon-lake/demo/last_seen_offsets",
        "SSM_WRITE_INTERVAL_SECONDS": "2",
    }
    common["KAFKA_DLQ_TOPIC"] = common["KAFKA_TOPIC"] + ".dlq"
    console.print(f"[bold]4/6[/] ingestor and publisher, topic {common['KAFKA_TOPIC']}, filter all-user-activity")
    ingestor = Service(
        "ingestor",
        [*cli, "ingest"],
        {
            **common,
            "FALCON_CLIENT_ID": "demo",
            "FALCON_CLIENT_SECRET": "demo",
            "FALCON_CLOUD_REGION": falcon_url,
            "FALCON_APPLICATION_ID": "demo",
            "METRICS_PORT": str(ingest_port),
        },
        work,
    )
    stack.callback(ingestor.stop)
    publisher = Service(
        "publisher",
        [*cli, "publish"],
        {
            **common,
            "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL,
            "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": cloudtrail_url,
            "FILTER_PRESET": "all-user-activity",
            "METRICS_PORT": str(publish_port),
            "KAFKA_GROUP_ID": "demo-publisher",
        },
        work,
    )
    stack.callback(publisher.stop)

    # 5. Progress until every served event is finished by the publisher.
    expected_total = per_feed * feeds
    started = time.monotonic()
    last: dict[str, float] = {}
    last_time = started
    rates: dict[str, float] = {}
    deadline = started + float(os.environ.get("DEMO_TIMEOUT", "240"))
    done_since: float | None = None

    def snapshot() -> tuple[dict[str, float], dict[str, float]]:
        return scrape(ingest_port), scrape(publish_port)

    def render() -> Table:
        nonlocal last, last_time, rates
        ing, pub = snapshot()
        now = time.monotonic()
        current = {
            "read from Falcon": ing.get("falcon_lake_ingest_events_read_total", 0),
            "produced to Kafka": ing.get("falcon_lake_ingest_events_produced_total", 0),
            "consumed by publisher": pub.get("falcon_lake_publish_consumed_total", 0),
            "accepted by CloudTrail Lake": pub.get("falcon_lake_publish_accepted_total", 0),
        }
        if now - last_time >= 0.9:
            rates = {k: (v - last.get(k, 0)) / (now - last_time) for k, v in current.items()}
            last, last_time = current, now
        return progress_table(expected_total, ing, pub, now - started, rates)

    def finished() -> bool:
        pub = scrape(publish_port)
        consumed = pub.get("falcon_lake_publish_consumed_total", 0)
        unfinished = pub.get("falcon_lake_publish_unfinished_records", 1)
        return consumed >= expected_total and unfinished == 0

    console.print("[bold]5/6[/] streaming (live progress below)")
    wait: Callable[[], None] = lambda: time.sleep(0.5)  # noqa: E731
    with Live(render(), console=console, refresh_per_second=4, transient=False) if not quiet else ExitStack() as live:
        while time.monotonic() < deadline:
            for service in (ingestor, publisher):
                if service.proc.poll() is not None:
                    raise RuntimeError(f"{service.name} exited early; see {service.log_path}")
            if not quiet:
                live.update(render())  # type: ignore[union-attr]
            if finished():
                done_since = done_since or time.monotonic()
                if time.monotonic() - done_since > 3:  # let the last commit and SSM write happen
                    break
            wait()
    elapsed = time.monotonic() - started
    ing, pub = snapshot()
    if quiet:
        console.print(progress_table(expected_total, ing, pub, elapsed, {}))
    ct_stats = stats(cloudtrail_url)
    falcon_stats = stats(falcon_url)
    publisher.stop()
    ingestor.stop()

    # 6. Summary, CloudTrail Lake queries and the audit.
    console.print("[bold]6/6[/] summary")
    accepted = pub.get("falcon_lake_publish_accepted_total", 0)
    calls = ct_stats.get("requests", pub.get("falcon_lake_publish_requests_total", 0))
    summary = Table(title="Summary")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    lat = latencies_ms(db_path)
    for name, value in (
        ("events served by Falcon", f"{expected_total:,}"),
        ("time to deliver everything", f"{elapsed:.1f} s"),
        ("accepted by CloudTrail Lake", f"{int(accepted):,}"),
        ("filtered by named rules", f"{int(pub.get('falcon_lake_publish_filtered_total', 0)):,}"),
        ("dead-lettered (publisher)", f"{int(pub.get('falcon_lake_publish_dead_lettered_total', 0)):,}"),
        ("ingestor DLQ records (re-reads included)", f"{int(ing.get('falcon_lake_ingest_dead_lettered_total', 0)):,}"),
        ("PutAuditEvents calls", f"{int(calls):,}  ({calls / max(accepted, 1):.3f} per event)"),
        ("throttled / failed entries re-sent", f"{int(pub.get('falcon_lake_publish_retries_total', 0)):,} requests"),
        ("SSM writes", f"{int(pub.get('falcon_lake_publish_ssm_writes_total', 0))}"),
        ("stream reconnects (injected faults)", f"{int(ing.get('falcon_lake_ingest_reconnects_total', 0))}"),
        ("Falcon faults injected", json.dumps(falcon_stats.get("faults_injected", {}))),
        ("end-to-end latency p50 / p99", f"{percentile(lat, 0.5):,.0f} ms / {percentile(lat, 0.99):,.0f} ms"),
    ):
        summary.add_row(name, value)
    console.print(summary)
    client = cloudtrail_client(cloudtrail_url)
    try:
        for title, sql in LAKE_QUERIES:
            result = run_query(client, sql, STORE_ID)
            console.print(f"[bold]CloudTrail Lake: {title}[/] ({format_bytes(result.bytes_scanned)} scanned)")
            console.print(f"  {sql}", style="dim", soft_wrap=True)
            table = Table()
            for column in result.columns:
                table.add_column(column)
            for row in result.rows:
                table.add_row(*[str(v) for v in row])
            console.print(table)
        sample = run_query(client, SAMPLE_QUERY, STORE_ID).rows
    except LakeQueryError as exc:
        raise RuntimeError(f"CloudTrail Lake query: {exc}") from None
    if sample and sample[0][0]:
        event = json.loads(sample[0][0])
        event.get("additionalEventData", {}).pop("raw", None)
        console.print("[bold]A failed login as CloudTrail Lake stores it[/] (additionalEventData.raw omitted):")
        console.print(f"  {SAMPLE_QUERY}", style="dim", soft_wrap=True)
        console.print_json(json.dumps(event))

    # The audit, as an operator runs it against a real event data store.
    expected, _ = read_record_file(str(record))
    command = ["audit", "--record", str(record), "--event-data-store", EVENT_DATA_STORE]
    console.print(f"[bold]Audit of every served event[/] (falcon-lake {' '.join(command)}):")
    audit_env = {
        **common,
        "AWS_ENDPOINT_URL_CLOUDTRAIL": cloudtrail_url,
        "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL,
        "FILTER_PRESET": "all-user-activity",
    }
    audited = subprocess.run([*cli, *command], env=audit_env, capture_output=True, text=True, timeout=300)
    console.print(audited.stdout.rstrip(), markup=False, highlight=False)
    if audited.stderr.strip():
        console.print(audited.stderr.rstrip(), markup=False, highlight=False)
    console.print(f"logs and the lake database are in {work}")
    if audited.returncode == 0 and len(expected) == expected_total:
        console.print(f"[bold green]DEMO OK[/]: all {expected_total:,} events accounted for, nothing lost.")
        return 0
    console.print(f"[bold red]DEMO FAILED[/]: see {work}")
    return 1


def main() -> int:
    total = int(os.environ.get("DEMO_EVENTS", "20000"))
    feeds = int(os.environ.get("DEMO_FEEDS", "2"))
    rate = int(os.environ.get("DEMO_RATE", "2000"))
    quiet = os.environ.get("DEMO_QUIET") == "1" or not sys.stdout.isatty()
    work = Path(os.environ.get("DEMO_DIR") or tempfile.mkdtemp(prefix="falcon-lake-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            return run(total, feeds, rate, quiet, stack, work)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            console.print(f"[bold red]DEMO FAILED[/]: {exc}")
            return 1
        finally:
            console.print("stopping everything the demo started")


if __name__ == "__main__":
    sys.exit(main())
