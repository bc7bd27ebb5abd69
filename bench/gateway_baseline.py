"""The OLD GATEWAY BASELINE (bench code only, never product code), re-implemented faithfully
for comparison (REFERENCE.md section 4): one event per PutAuditEvents call, one SSM PutParameter
(a Python dict repr) per event, four worker threads fed by an unbounded in-memory queue, failed
events not retried. `run_baseline` reads a backlog (from Kafka, standing in for the Falcon stream)
in a process of its own, against the bench's emulators, for a bounded time.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
import time
from typing import Any

from confluent_kafka import Consumer

from bench.harness import ACCOUNT, CHANNEL_ARN, Services, aws_client, peak_rss_mb
from emulators.falcon_events import AUTH_SERVICE


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
