"""How many PutAuditEvents requests per second the CloudTrail Lake emulator can take.

Starts `falcon-lake emulate cloudtrail --port 0 --tps 100000` in its own process (or
uses --url), then several client threads send SigV4-signed requests of --events
realistic audit events each (every one fully validated and stored) for --duration
seconds, and prints requests/s and events/s. `--client boto3` uses boto3 clients
instead of raw signed requests (the client side then costs more CPU than the server).

    .venv/bin/python bench/cloudtrail_emulator.py [--duration 3] [--threads 4] [--events 100]

The emulator must comfortably beat the real quota of 100 requests/s, so that a
benchmark of the publisher runs into the quota and not into the emulator.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


def audit_event(n: int) -> dict[str, str]:
    """One audit event shaped like the publisher's output for an AuthActivityAuditEvent (about 1 kB)."""
    raw = {
        "metadata": {
            "customerIDString": "0123456789abcdef0123456789abcdef",
            "offset": n,
            "eventType": "AuthActivityAuditEvent",
            "eventCreationTime": 1732608000123 + n,
            "version": "1.0",
        },
        "event": {
            "UserId": f"analyst{n % 50}@example.com",
            "UserIp": "198.51.100.20",
            "OperationName": "twoFactorAuthenticate",
            "ServiceName": "CrowdStrike Authentication",
            "Success": n % 3 != 0,
            "UTCTimestamp": 1732608000 + n,
            "AuditKeyValues": [{"Key": "reason", "ValueString": "invalid code"}],
            "Attributes": {"reason": "invalid code"},
        },
    }
    data = {
        "version": "1.0",
        "userIdentity": {
            "type": "AuthActivityAuditEvent",
            "principalId": raw["event"]["UserId"],
            "details": {"AuditKeyValues": raw["event"]["AuditKeyValues"]},
        },
        "userAgent": "falcon-lake",
        "eventSource": "crowdstrike",
        "eventName": "twoFactorAuthenticate",
        "eventTime": "2024-11-26T08:00:00Z",
        "UID": f"0123456789abcdef0123456789abcdef-0-{n}",
        "sourceIPAddress": "198.51.100.20",
        "recipientAccountId": "123456789012",
        "additionalEventData": {"raw": raw},
    }
    return {"id": f"0123456789abcdef0123456789abcdef-0-{n}", "eventData": json.dumps(data)}


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process with the quota out of the way, and its URL."""
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "cloudtrail", "--port", "0", "--tps", "100000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line:
        process.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_worker(url: str, bodies: list[bytes], deadline: float, counts: list[int], lock: threading.Lock) -> None:
    """Send signed requests over one kept-alive connection until the deadline."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    signer = SigV4Auth(Credentials("testing", "testing"), "cloudtrail-data", "us-east-1")  # the local test pair
    target = f"/PutAuditEvents?channelArn={quote(CHANNEL, safe='')}"
    sent = events = errors = 0
    index = 0
    while time.monotonic() < deadline:
        body = bodies[index % len(bodies)]
        index += 1
        request = AWSRequest(method="POST", url=url + target, data=body, headers={"Content-Type": "application/json"})
        signer.add_auth(request)
        connection.request("POST", target, body=body, headers=dict(request.headers.items()))
        response = connection.getresponse()
        answer = json.loads(response.read())
        sent += 1
        if response.status == 200 and not answer["failed"]:
            events += len(answer["successful"])
        else:
            errors += 1
    connection.close()
    with lock:
        counts[0] += sent
        counts[1] += events
        counts[2] += errors


def boto3_worker(
    url: str, batches: list[list[dict[str, str]]], deadline: float, counts: list[int], lock: threading.Lock
) -> None:
    """Send put_audit_events calls with one boto3 client until the deadline."""
    import boto3

    client: Any = boto3.client(
        "cloudtrail-data",
        endpoint_url=url,
        region_name="us-east-1",
        # The emulator's documented local test credentials (README, Local credentials).
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sent = events = errors = 0
    index = 0
    while time.monotonic() < deadline:
        answer = client.put_audit_events(auditEvents=batches[index % len(batches)], channelArn=CHANNEL)
        index += 1
        sent += 1
        events += len(answer["successful"])
        errors += bool(answer["failed"])
    with lock:
        counts[0] += sent
        counts[1] += events
        counts[2] += errors


def main() -> int:
    """Run the benchmark and print requests/s and events/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an emulator already running (default: start one with --tps 100000)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default %(default)s)")
    parser.add_argument("--events", type=int, default=100, help="events per request (default %(default)s)")
    parser.add_argument("--client", choices=("raw", "boto3"), default="raw", help="request sender (default raw)")
    args = parser.parse_args()

    process = None
    url = args.url
    if url is None:
        process, url = start_emulator()
    try:
        batches = [[audit_event(b * args.events + i) for i in range(args.events)] for b in range(8)]
        bodies = [json.dumps({"auditEvents": batch}).encode() for batch in batches]
        counts = [0, 0, 0]
        lock = threading.Lock()
        cpu_before = cpu_seconds(process.pid) if process else None
        started = time.monotonic()
        deadline = started + args.duration
        if args.client == "raw":
            threads = [
                threading.Thread(target=raw_worker, args=(url, bodies, deadline, counts, lock))
                for _ in range(args.threads)
            ]
        else:
            threads = [
                threading.Thread(target=boto3_worker, args=(url, batches, deadline, counts, lock))
                for _ in range(args.threads)
            ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        cpu_after = cpu_seconds(process.pid) if process else None
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
    requests, events, errors = counts
    print(
        f"cloudtrail emulator: {requests / elapsed:.0f} requests/s, {events / elapsed:.0f} events/s "
        f"({requests} requests of {args.events} events in {elapsed:.1f} s, {args.threads} {args.client} "
        f"client threads, {errors} with errors; body {len(bodies[0]) // 1024} KiB)"
    )
    if cpu_before is not None and cpu_after is not None and requests:
        # The figure that does not depend on what else the machine is doing.
        per_request = (cpu_after - cpu_before) / requests
        print(
            f"emulator CPU: {per_request * 1000:.2f} ms per request, so about "
            f"{1 / per_request:.0f} requests/s ({args.events / per_request:.0f} events/s) on one free core"
        )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
