"""How fast the Falcon emulator serves one feed: events/s read by a `requests` client.

Starts `python -m emulators.falcon` in its own process (so the reader does not share its
GIL), authenticates, discovers and reads one feed from offset 1 until every event arrived,
then prints events/s and MB/s. Readers: `lines` (requests `iter_lines`, what a simple
ingestor does) and `raw` (`iter_content` chunks as they arrive, counting newlines).

    .venv/bin/python -m bench.falcon_emulator --events 300000 --event-size 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import requests

APP_ID = "benchmark"


def start_emulator(events: int, event_size: int | None) -> tuple[subprocess.Popen[str], str]:
    """A fresh emulator process and its base URL."""
    command = [
        sys.executable,
        "-m",
        "emulators.falcon",
        "--port",
        "0",
        "--events",
        str(events),
        "--keepalive-seconds",
        "0",
    ]
    if event_size:
        command += ["--event-size", str(event_size)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("falcon emulator listening on "):
        process.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[-1]


def read_feed(url: str, events: int, reader: str) -> tuple[int, int, float]:
    """Read `events` events of feed 0: (events, bytes, seconds)."""
    session = requests.Session()
    token = session.post(f"{url}/oauth2/token", data={"client_id": "demo", "client_secret": "demo"}, timeout=10)
    token.raise_for_status()
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    discovery = session.get(f"{url}/sensors/entities/datafeed/v2", params={"appId": APP_ID}, headers=bearer, timeout=10)
    discovery.raise_for_status()
    resource = discovery.json()["resources"][0]
    headers = {"Authorization": f"Token {resource['sessionToken']['token']}"}
    count = size = 0
    started = time.perf_counter()
    with session.get(f"{resource['dataFeedURL']}&offset=1", headers=headers, stream=True, timeout=30) as stream:
        stream.raise_for_status()
        if reader == "lines":
            for line in stream.iter_lines(chunk_size=1 << 16):
                if line:
                    count += 1
                    size += len(line) + 1
                    if count >= events:
                        break
        else:
            # iter_content on a chunked body yields each HTTP chunk as it arrives (never waits to fill).
            for chunk in stream.iter_content(chunk_size=1 << 20):
                count += chunk.count(b"\n")
                size += len(chunk)
                if count >= events:
                    break
    return count, size, time.perf_counter() - started


def measure(events: int = 300_000, event_size: int | None = 1024, reader: str = "lines") -> dict[str, Any]:
    """Serve `events` events on one feed and read them all: a dict of the figures."""
    process, url = start_emulator(events, event_size)
    try:
        count, size, seconds = read_feed(url, events, reader)
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {
        "benchmark": "falcon_emulator",
        "reader": reader,
        "events": count,
        "event_size_avg": round(size / max(count, 1)),
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds),
        "mb_per_s": round(size / seconds / 1e6, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="events to read from one feed")
    parser.add_argument("--event-size", type=int, default=1024, help="approximate event size in bytes (0: natural)")
    parser.add_argument("--reader", choices=("lines", "raw", "both"), default="both", help="how the client reads")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run instead of a line")
    args = parser.parse_args(argv)
    readers = ("lines", "raw") if args.reader == "both" else (args.reader,)
    for reader in readers:
        result = measure(args.events, args.event_size or None, reader)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"falcon emulator, one feed, reader={reader}: {result['events_per_s']:,} events/s "
                f"({result['mb_per_s']} MB/s, {result['events']:,} events of ~{result['event_size_avg']} B "
                f"in {result['seconds']} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
