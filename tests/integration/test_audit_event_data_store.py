"""`falcon-lake audit --event-data-store`: the audit reads the lake through CloudTrail Lake's query API.

The emulator plays the event data store; the audit talks to it with an unmodified boto3
`cloudtrail` client (AWS_ENDPOINT_URL_CLOUDTRAIL), and must reach the same verdict as the
audit that reads the emulator's SQLite file directly (`--lake-db`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulators.cloudtrail import CloudTrailEmulator, CloudTrailEmulatorConfig
from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter
from tests.integration.test_audit import CHANNEL, falcon_event, setup
from tests.integration.test_publish import (  # noqa: F401 - make_pipeline is a fixture
    Pipeline,
    falcon_records,
    make_pipeline,
)

STORE_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:eventdatastore/aaaabbbb-cccc-4ddd-8eee-ffff00001111"
STORE_ID = STORE_ARN.rsplit("/", 1)[1]


def run_audit(
    args: list[str], bootstrap: str, topic: str, emulator: CloudTrailEmulator, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "AWS_ENDPOINT_URL_CLOUDTRAIL": emulator.url,
        "CLOUDTRAIL_LAKE_REGION": "us-east-1",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "falcon_lake.cli", "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


def fates(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict, without the figures that depend on how the lake was read."""
    return {k: v for k, v in report.items() if k not in ("seconds", "lake_query")}


def deliver_offsets(emulator: CloudTrailEmulator, offsets: list[int]) -> None:
    converter = Converter(CHANNEL, EventFilter.from_preset("gateway"))
    data = boto3.client("cloudtrail-data", endpoint_url=emulator.url, region_name="us-east-1")
    for offset in offsets:  # one request each: a repeated offset is a second stored copy
        event = converter.convert(json.dumps(falcon_event(offset)).encode(), "0")
        assert isinstance(event, AuditEvent)
        answer = data.put_audit_events(
            channelArn=CHANNEL, auditEvents=[{"id": event.id, "eventData": event.event_data}]
        )
        assert not answer["failed"]


def test_every_fate_through_the_query_api_matches_the_database(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("audit-eds")
    record, _ = setup(tmp_path, kafka_bootstrap, topic)  # offsets 1-6: filtered 4, dead-lettered 5, missing 6
    db = tmp_path / "emulated-lake.db"
    config = CloudTrailEmulatorConfig(port=0, db_path=str(db), event_data_store_arn=STORE_ARN)
    with CloudTrailEmulator(config) as emulator:
        deliver_offsets(emulator, [1, 2, 2, 3])
        for store in (STORE_ARN, STORE_ID):
            through_api = run_audit(
                ["--record", str(record), "--event-data-store", store, "--json"], kafka_bootstrap, topic, emulator
            )
            assert through_api.returncode == 1, through_api.stdout + through_api.stderr
            report = json.loads(through_api.stdout)
            assert report["delivered"] == 3 and report["duplicates"] == 1 and report["missing"] == 1
            assert report["missing_sample"][0]["offset"] == 6
            query = report["lake_query"]
            assert query["event_data_store"] == STORE_ARN and query["rows"] == 4 and query["bytes_scanned"] > 0
            # Default range: the audited events' own times (2026-11-18 11:06:40) widened by an hour.
            assert (query["start"], query["end"]) == ("2026-11-18 10:06:40", "2026-11-18 12:06:41")
        from_db = run_audit(["--record", str(record), "--lake-db", str(db), "--json"], kafka_bootstrap, topic, emulator)
        assert from_db.returncode == 1
        assert fates(json.loads(from_db.stdout)) == fates(report)

        text = run_audit(["--record", str(record), "--event-data-store", STORE_ID], kafka_bootstrap, topic, emulator)
        assert text.returncode == 1 and "RESULT: EVENTS MISSING" in text.stdout
        assert "CloudTrail Lake query " in text.stdout and "scanned" in text.stdout

        # A range that leaves the events out finds them missing: the range is what is checked.
        early = run_audit(
            ["--record", str(record), "--event-data-store", STORE_ID, "--json", "--start", "2026-11-01T00:00:00Z",
             "--end", "2026-11-02T00:00:00Z"],
            kafka_bootstrap, topic, emulator,
        )  # fmt: skip
        assert early.returncode == 1 and json.loads(early.stdout)["delivered"] == 0


@pytest.mark.slow
def test_failed_timed_out_throttled_and_unknown_queries_end_in_one_line(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("audit-eds")
    record, _ = setup(tmp_path, kafka_bootstrap, topic)
    with CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, event_data_store_arn=STORE_ARN)) as emulator:
        deliver_offsets(emulator, [1, 2, 3, 6])
        base = ["--record", str(record), "--event-data-store", STORE_ID]

        def one_line_failure(expect: str) -> None:
            result = run_audit(base, kafka_bootstrap, topic, emulator)
            assert result.returncode == 2, result.stdout + result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert expect in lines[0], lines[0]

        emulator.lake.set_faults(outcome="FAILED")
        one_line_failure("FAILED")
        emulator.lake.set_faults(outcome="TIMED_OUT")
        one_line_failure("narrow the time range")
        emulator.lake.set_faults(outcome=None, throttle_requests=100)
        one_line_failure("throttled")
        emulator.lake.set_faults(throttle_requests=0)
        missing = run_audit(
            ["--record", str(record), "--event-data-store", "00000000-0000-4000-8000-000000000000"],
            kafka_bootstrap,
            topic,
            emulator,
        )
        assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr

        # A long query shows progress on stderr and still answers; throttling the SDK retries through passes.
        emulator.lake.set_faults(running_seconds=2.5, throttle_requests=2)
        slow = run_audit([*base, "--progress-every", "1", "--json"], kafka_bootstrap, topic, emulator)
        assert slow.returncode == 0, slow.stdout + slow.stderr
        assert "RUNNING" in slow.stderr and "scanned so far" in slow.stderr
        assert json.loads(slow.stdout)["missing"] == 0


def test_a_pipeline_run_audited_through_the_query_api_reports_events_removed_on_purpose(
    make_pipeline: Callable[..., Pipeline],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    db = tmp_path / "lake.db"
    emulator = CloudTrailEmulator(
        CloudTrailEmulatorConfig(port=0, db_path=str(db), latency_ms="5", event_data_store_arn=STORE_ARN)
    )
    pipeline = make_pipeline(emulator)
    records = falcon_records(per_feed=500, seed=41)
    converter = Converter(CHANNEL, EventFilter.from_preset("all-user-activity"))
    expected = {}
    for record in records:
        outcome = converter.convert(record.raw, record.feed)
        if isinstance(outcome, AuditEvent):
            expected[outcome.id] = record
    assert len(expected) > 1000, "more rows than one GetQueryResults page"
    pipeline.produce(records)
    publisher = pipeline.start_publisher(FILTER_PRESET="all-user-activity")
    pipeline.wait_rows(set(expected), timeout=120)
    pipeline.wait_committed_to_end()
    assert publisher.terminate() == 0

    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        return run_audit(
            ["--from-topic", "--json", *args],
            pipeline.bootstrap,
            pipeline.topic,
            emulator,
            FILTER_PRESET="all-user-activity",
        )

    clean = audit("--event-data-store", STORE_ARN)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["delivered"] == len(expected) and report["missing"] == 0
    assert report["lake_query"]["rows"] == len(expected)
    assert fates(json.loads(audit("--lake-db", str(db)).stdout)) == fates(report)

    # Three delivered events vanish from the store: the audit names each one and fails.
    lost = sorted(expected)[:3]
    with sqlite3.connect(db) as conn:
        conn.execute(f"DELETE FROM audit_events WHERE id IN ({','.join('?' * len(lost))})", lost)
    conn.close()
    gap = audit("--event-data-store", STORE_ID)
    assert gap.returncode == 1, gap.stdout + gap.stderr
    report = json.loads(gap.stdout)
    assert report["missing"] == 3
    assert {(m["feed"], m["offset"]) for m in report["missing_sample"]} == {
        (expected[uid].feed, expected[uid].offset) for uid in lost
    }
    from_db = audit("--lake-db", str(db))
    assert from_db.returncode == 1 and fates(json.loads(from_db.stdout)) == fates(report)
