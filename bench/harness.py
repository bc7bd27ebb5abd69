"""Loopback services and process helpers the publish benchmarks share.

moto (SSM) runs in this process; the CloudTrail Lake emulator runs as a process of its own
(as the real service is elsewhere: its CPU and GIL are not the bench's) and stores what it
accepts in an SQLite file the bench reads afterwards (`AcceptedEvents`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
ACCOUNT = "123456789012"
REGION = "us-east-1"
EMULATE = [sys.executable, "-m", "falcon_lake.cli", "emulate", "cloudtrail"]
EMULATOR_TPS = 100.0
EMULATOR_LATENCY_MS = "50"


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


def tree_peak_rss_mb(pid: int) -> float:
    """Peak RSS of a live process plus that of its children (the publisher's conversion worker)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = peak_rss_mb(pid)
    for child in children:
        with contextlib.suppress(OSError):  # a child that just exited holds no memory
            total += peak_rss_mb(int(child))
    return total


def aws_client(service: str, endpoint: str, max_pool_connections: int = 10) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=max_pool_connections),
    )


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


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass(frozen=True)
class AcceptedEvent:
    """One event the emulator stored: the UID inside its eventData and when its request arrived."""

    uid: str
    received_s: float  # epoch seconds, millisecond resolution


class EmulatorProcess:
    """`falcon-lake emulate cloudtrail --tps 100 --latency-ms 50` in a process of its own, storing
    in an SQLite file, controlled over its /_emulator/ endpoints."""

    def __init__(self, log_path: Path, db_path: Path) -> None:
        self.db_path = db_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [
            *EMULATE,
            *("--port", "0", "--seed", "1", "--db", str(db_path)),
            *("--tps", str(EMULATOR_TPS), "--latency-ms", EMULATOR_LATENCY_MS),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT)
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
        """requests, requests_throttled, events_accepted, ... (emulators.cloudtrail.EmulatorStats)."""
        return self._call("GET", "stats")

    def reset(self) -> None:
        self._call("POST", "reset")

    def accepted(self) -> list[AcceptedEvent]:
        """Every stored event (duplicates included), read from the emulator's SQLite file."""
        from datetime import datetime

        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute("SELECT json_extract(event_data, '$.UID'), received_at FROM audit_events").fetchall()
        finally:
            db.close()
        return [
            AcceptedEvent(str(uid), datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp())
            for uid, received in rows
        ]

    def stop(self) -> None:
        stop_process(self._process, 30)
        self._log.close()


@dataclass
class Services:
    bootstrap: str
    moto_url: str
    emulator: EmulatorProcess
    log_dir: Path


@contextlib.contextmanager
def services(bootstrap: str, log_dir: Path | None = None) -> Iterator[Services]:
    """moto (SSM, in this process) and a fresh CloudTrail Lake emulator process, on loopback."""
    from moto.server import ThreadedMotoServer

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-publish-"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto would log every request
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    # tmpfs when there is one: the emulator's inserts should not wait on a shared disk.
    db_dir = Path(tempfile.mkdtemp(prefix="bench-lake-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        emulator = EmulatorProcess(log_dir / "cloudtrail-emulator.log", db_dir / "lake.sqlite")
        try:
            yield Services(bootstrap, f"http://127.0.0.1:{port}", emulator, log_dir)
        finally:
            emulator.stop()
    finally:
        moto.stop()
        for path in db_dir.iterdir():
            path.unlink()
        db_dir.rmdir()
