"""How fast `falcon-lake publish` drains a backlog into CloudTrail Lake, beside the old gateway's way.

Everything on loopback: the Kafka broker (`bootstrap`, else KAFKA_BOOTSTRAP_SERVERS, else
127.0.0.1:9092), and in this process a moto server (SSM) and the CloudTrail Lake emulator with
the real quota (100 PutAuditEvents/s) and 50 ms of latency per request. A fresh topic of 3
partitions gets a backlog of login audit events (AuthActivityAuditEvent from "CrowdStrike
Authentication", what the default `gateway` preset and the old gateway both deliver, so every
event is delivered), from three Falcon feeds, one per partition, keyed and headed exactly as
the ingestor writes them. Then:

1. the publisher, `falcon-lake publish` as a real process with its default settings, drains
   the backlog. Figures: events/s from the first to the last accepted event, PutAuditEvents
   calls per delivered event, SSM writes per minute, peak RSS of the process (VmHWM).
2. the OLD GATEWAY BASELINE (`GatewayBaseline`, bench code only, never product code): one event
   per PutAuditEvents call, one SSM PutParameter (a Python dict repr) per event, four worker
   threads fed by an unbounded in-memory queue, failed events not retried. It reads the same
   backlog (from Kafka, standing in for the Falcon stream) in a process of its own, against the
   same emulators, for a bounded time (20 s; 8 s with BENCH_QUICK=1).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python -m bench.publish       (BENCH_QUICK=1: 20,000 events)

Prints a table with the baseline and the ratio (publisher / baseline) beside each figure;
`run()` returns the figures as a dict: each name in FIGURES, with `_baseline` and `_ratio` twins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from emulators.falcon_events import AUTH_SERVICE, EventGenerator
from falcon_lake.partitioner import partition_for

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITIONS = 3
FEEDS = ("0", "1", "4")  # murmur2 puts these on partitions 2, 0 and 1 of a 3-partition topic
EMULATE = [sys.executable, "-m", "falcon_lake.cli", "emulate", "cloudtrail"]
EMULATOR_TPS = 100.0
EMULATOR_LATENCY_MS = "50"
BACKLOG = 100_000
QUICK_BACKLOG = 20_000
BASELINE_SECONDS = 20.0
QUICK_BASELINE_SECONDS = 8.0
DRAIN_TIMEOUT_S = 300.0

# name -> (unit, aim, True when higher is better)
FIGURES: dict[str, tuple[str, str, bool]] = {
    "drain_events_per_s": ("events/s", ">= 9,000", True),
    "calls_per_event": ("calls", "", False),
    "ssm_writes_per_min": ("writes/min", "", False),
    "peak_rss_mb": ("MB", "< 200", False),  # the process and its children (conversion worker)
}


@dataclass(frozen=True)
class Record:
    """One Falcon event as the ingestor puts it in the topic."""

    feed: str
    offset: int
    event_type: str
    cid: str
    created_ms: int
    raw: bytes


def login_backlog(count: int, feeds: tuple[str, ...] = FEEDS, seed: int = 11) -> list[Record]:
    """`count` generated AuthActivityAuditEvents of "CrowdStrike Authentication", spread evenly
    over `feeds`; offsets increase per feed with the gaps a server-side-filtered stream has."""
    now_ms = int(time.time() * 1000)
    generator = EventGenerator(seed, base_time_ms=now_ms - 3_600_000, spacing_ms=10.0)
    service = json.dumps(AUTH_SERVICE).encode()
    per_feed = -(-count // len(feeds))
    records: list[Record] = []
    for feed in feeds:
        offset = taken = 0
        while taken < per_feed and len(records) < count:
            offset += 1
            event_type, raw = generator.render(feed, offset)
            if event_type != "AuthActivityAuditEvent" or service not in raw:
                continue
            records.append(Record(feed, offset, event_type, generator.cid, generator.created_ms(offset), raw))
            taken += 1
    return records


def produce(bootstrap: str, topic: str, records: list[Record], partitions: int = PARTITIONS) -> None:
    """Write records as the ingestor does: key = feed, exact bytes, falcon.* headers, murmur2 partition."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20, "compression.type": "zstd"}
    )
    for record in records:
        headers: list[tuple[str, str | bytes | None]] = [
            ("falcon.feed", record.feed.encode()),
            ("falcon.offset", str(record.offset).encode()),
            ("falcon.event_type", record.event_type.encode()),
            ("falcon.cid", record.cid.encode()),
            ("falcon.created_ms", str(record.created_ms).encode()),
        ]
        while True:
            try:
                producer.produce(
                    topic,
                    key=record.feed.encode(),
                    value=record.raw,
                    headers=headers,
                    partition=partition_for(record.feed, partitions),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the backlog could not be written to Kafka")


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=count, replication_factor=1) for name, count in topics.items()]
    for future in admin.create_topics(new).values():
        future.result(timeout=30)


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # clean-up only; the names are unique anyway
            future.result(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss_mb(pid: int | None = None) -> float:
    """VmHWM (the peak resident set size) of a live process (default: this one), in MB."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def aws_client(service: str, endpoint: str, max_pool_connections: int = 10) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=max_pool_connections),
    )


class EmulatorProcess:
    """`falcon-lake emulate cloudtrail` in a process of its own (as the real service is elsewhere:
    its CPU and GIL are not the bench's), controlled over its /_emulator/ endpoints."""

    def __init__(self, log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [*EMULATE, "--port", "0", "--seed", "1", "--tps", str(EMULATOR_TPS), "--latency-ms", EMULATOR_LATENCY_MS],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode()
        if "listening on " not in line:
            raise RuntimeError(f"the CloudTrail emulator did not start: {line!r}; see {log_path}")
        self.url = line.rsplit("listening on ", 1)[1].strip()

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/_emulator/{path}", method=method, data=b"{}")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def reset(self) -> None:
        self._call("POST", "reset")

    def stop(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()


@dataclass
class Services:
    bootstrap: str
    moto_url: str
    emulator: EmulatorProcess


@contextlib.contextmanager
def services(bootstrap: str, log_dir: Path) -> Iterator[Services]:
    """moto (SSM, in this process) and the CloudTrail Lake emulator (a process of its own), on loopback."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto would log every request
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    emulator = EmulatorProcess(log_dir / "cloudtrail-emulator.log")
    try:
        yield Services(bootstrap, f"http://127.0.0.1:{port}", emulator)
    finally:
        emulator.stop()
        moto.stop()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_publisher(svc: Services, topic: str, expected: int, log_path: Path) -> dict[str, float]:
    """Start `falcon-lake publish`, wait until the emulator holds `expected` events, measure, SIGTERM."""
    parameter = f"/bench/{topic}/last_seen_offsets"
    metrics_port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": svc.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_GROUP_ID": f"{topic}-publisher",
        "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL_ARN,
        "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": svc.emulator.url,
        "AWS_ENDPOINT_URL_SSM": svc.moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "SSM_OFFSETS_PARAMETER": parameter,
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": os.environ.get("PUBLISH_LOG_LEVEL", "WARNING"),
    }
    svc.emulator.reset()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "falcon_lake.cli", "publish"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        first: float | None = None
        while True:
            accepted = svc.emulator.stats()["events_accepted"]
            now = time.monotonic()
            if accepted and first is None:
                first = now
            if accepted >= expected:
                break
            if process.poll() is not None:
                raise RuntimeError(f"the publisher exited ({process.returncode}); see {log_path}")
            if now - started > DRAIN_TIMEOUT_S:
                raise RuntimeError(f"the publisher delivered {accepted} of {expected} in {DRAIN_TIMEOUT_S}s")
            time.sleep(0.05)
        done = time.monotonic()
        assert first is not None
        # The publisher's peak RSS: its own and that of its children (the conversion worker).
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        rss = peak_rss_mb(process.pid) + sum(peak_rss_mb(int(child)) for child in children)
        stats = svc.emulator.stats()
        ssm_writes = _metric(metrics_port, "falcon_lake_publish_ssm_writes_total")
        lifetime = done - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    drain = max(done - first, 1e-6)
    return {
        "drain_events_per_s": expected / drain,
        "calls_per_event": stats["requests"] / max(1, stats["events_accepted"]),
        "ssm_writes_per_min": ssm_writes / lifetime * 60.0,
        "peak_rss_mb": rss,
        "drain_seconds": drain,
        "start_to_first_event_s": first - started,
        "exit_code": float(process.returncode),
    }


# ---- the old gateway, re-implemented faithfully for comparison (REFERENCE.md section 4) --------------


def gateway_audit_event(raw: bytes, feed: str, account: str) -> dict[str, str] | None:
    """The old gateway's mapping of one login event; None for an event it does not forward."""
    envelope = json.loads(raw)
    metadata, event = envelope["metadata"], envelope["event"]
    if metadata.get("eventType") != "AuthActivityAuditEvent":
        return None
    if str(event.get("ServiceName", "")).lower() != AUTH_SERVICE.lower():
        return None
    uid = f"{feed}_{metadata['offset']}"
    data = {
        "version": metadata["version"],
        "userIdentity": {
            "type": metadata["eventType"],
            "principalId": event["UserId"],
            "details": {"AuditKeyValues": event.get("AuditKeyValues", [])},
        },
        "userAgent": "falcon-integration-gateway",
        "eventSource": "crowdstrike",
        "eventName": event["OperationName"],
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(metadata["eventCreationTime"] // 1000)),
        "UID": uid,
        "sourceIPAddress": event.get("UserIp"),
        "recipientAccountId": account,
        "additionalEventData": {"raw": envelope},
    }
    return {"id": uid, "eventData": json.dumps(data)}


class GatewayBaseline:
    """The old gateway's delivery strategy: one reader filling an unbounded queue, four workers each
    sending one event per PutAuditEvents call and writing the SSM offsets (a dict repr) per event."""

    WORKERS = 4

    def __init__(self, bootstrap: str, topic: str, cloudtrail_url: str, ssm_url: str, parameter: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._cloudtrail = aws_client("cloudtrail-data", cloudtrail_url)
        self._ssm = aws_client("ssm", ssm_url)
        self._parameter = parameter
        self._queue: queue.Queue[tuple[str, int, bytes]] = queue.Queue()  # unbounded, as it was
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        self.calls = self.delivered = self.ssm_writes = 0

    def _read(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                "group.id": f"{self._topic}-gateway",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self._topic])
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.1):
                    if msg.error() is None:
                        self._queue.put(((msg.key() or b"0").decode(), msg.offset() or 0, msg.value() or b""))
        finally:
            consumer.close()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                feed, _kafka_offset, raw = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            entry = gateway_audit_event(raw, feed, ACCOUNT)
            if entry is None:
                continue
            response = self._cloudtrail.put_audit_events(channelArn=CHANNEL_ARN, auditEvents=[entry])
            with self._lock:
                self.calls += 1
                self.delivered += len(response.get("successful", []))  # failures were only logged
                self._offsets[feed] = int(entry["id"].rsplit("_", 1)[1])
                value = repr(dict(self._offsets))
            self._ssm.put_parameter(Name=self._parameter, Value=value, Type="String", Overwrite=True)
            with self._lock:
                self.ssm_writes += 1

    def run(self, seconds: float) -> dict[str, float]:
        threads = [threading.Thread(target=self._read, daemon=True)]
        threads += [threading.Thread(target=self._work, daemon=True) for _ in range(self.WORKERS)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self._stop.set()
        for thread in threads:
            thread.join(10)
        return {
            "drain_events_per_s": self.delivered / seconds,
            "calls_per_event": self.calls / max(1, self.delivered),
            "ssm_writes_per_min": self.ssm_writes / seconds * 60.0,
            "peak_rss_mb": peak_rss_mb(),
        }


def _baseline_child(args: tuple[str, str, str, str, str, float], results: Any) -> None:
    bootstrap, topic, cloudtrail_url, ssm_url, parameter, seconds = args
    results.put(GatewayBaseline(bootstrap, topic, cloudtrail_url, ssm_url, parameter).run(seconds))


def run_baseline(svc: Services, topic: str, seconds: float) -> dict[str, float]:
    """The gateway strategy in a process of its own (so its peak RSS is its own) for `seconds`."""
    svc.emulator.reset()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (svc.bootstrap, topic, svc.emulator.url, svc.moto_url, f"/bench/{topic}/gateway_offsets", seconds)
    child = context.Process(target=_baseline_child, args=(args, results))
    child.start()
    try:
        figures: dict[str, float] = results.get(timeout=seconds + 120)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return figures


def run(quick: bool = False, bootstrap: str | None = None) -> dict[str, float]:
    """Publisher and old-gateway figures on one backlog (see the module docstring)."""
    quick = quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    count = QUICK_BACKLOG if quick else BACKLOG
    topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
    records = login_backlog(count)
    create_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        produce(bootstrap, topic, records)
        with services(bootstrap, log_dir) as svc:
            mine = run_publisher(svc, topic, len(records), log_dir / "publish.log")
            old = run_baseline(svc, topic, QUICK_BASELINE_SECONDS if quick else BASELINE_SECONDS)
    finally:
        delete_topics(bootstrap, [topic, f"{topic}.dlq"])
    results: dict[str, float] = {"backlog_events": float(len(records))}
    for name in FIGURES:
        results[name] = mine[name]
        results[f"{name}_baseline"] = old[name]
        results[f"{name}_ratio"] = mine[name] / old[name] if old[name] else float("nan")
    results["drain_seconds"] = mine["drain_seconds"]
    results["start_to_first_event_s"] = mine["start_to_first_event_s"]
    results["publisher_exit_code"] = mine["exit_code"]
    return results


def print_table(results: dict[str, float]) -> None:
    print(
        f"publish bench: {results['backlog_events']:,.0f} login events, 3 partitions, "
        f"emulator {EMULATOR_TPS:.0f} TPS / {EMULATOR_LATENCY_MS} ms"
    )
    print(f"{'figure':<20} {'publisher':>12} {'old gateway':>12} {'ratio':>9}  {'unit':<11} aim")
    for name, (unit, aim, _higher) in FIGURES.items():
        mine, old, ratio = results[name], results[f"{name}_baseline"], results[f"{name}_ratio"]
        digits = 3 if name == "calls_per_event" else 1 if name.endswith("_mb") else 0
        print(f"{name:<20} {mine:>12,.{digits}f} {old:>12,.{digits}f} {ratio:>8.3g}x  {unit:<11} {aim}")
    print(
        f"drain {results['drain_seconds']:.1f}s after {results['start_to_first_event_s']:.1f}s to the first event; "
        f"publisher exit code {results['publisher_exit_code']:.0f} after SIGTERM"
    )


if __name__ == "__main__":
    print_table(run())
