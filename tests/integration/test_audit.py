"""`falcon-lake audit`: every offset's fate, from a record file or the raw topic, against a lake and the DLQ."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer

from falcon_lake.dead_letter import dlq_headers
from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter
from tests.support import create_topic, free_port

CID = "0123456789abcdef0123456789abcdef"
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


def falcon_event(offset: int, event_type: str = "AuthActivityAuditEvent") -> dict[str, object]:
    return {
        "metadata": {
            "customerIDString": CID,
            "offset": offset,
            "eventType": event_type,
            "eventCreationTime": 1_795_000_000_000 + offset,
            "version": "1.0",
        },
        "event": {
            "UserId": f"user{offset}@example.com",
            "UserIp": "192.0.2.10",
            "OperationName": "userAuthenticate",
            "ServiceName": "CrowdStrike Authentication",
            "Success": True,
            "UTCTimestamp": 1_795_000_000,
            "AuditKeyValues": [],
            "Attributes": {},
        },
    }


def lake_db(tmp_path: Path, stored: list[dict[str, object]]) -> Path:
    """An emulator lake database holding these Falcon events, converted as the publisher would."""
    converter = Converter(CHANNEL, EventFilter.from_preset("gateway"))
    db = tmp_path / "lake.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE audit_events(event_id TEXT PRIMARY KEY, id TEXT, channel_arn TEXT, "
            "event_data TEXT, received_at TEXT)"
        )
        for n, event in enumerate(stored):
            audit_event = converter.convert(json.dumps(event).encode(), "0")
            assert isinstance(audit_event, AuditEvent)
            conn.execute(
                "INSERT INTO audit_events VALUES (?,?,?,?,?)",
                (f"e{n}", audit_event.id, CHANNEL, audit_event.event_data, "2026-11-27T00:00:00.000Z"),
            )
    return db


def setup(tmp_path: Path, bootstrap: str, topic: str) -> tuple[Path, Path]:
    """Offsets 1-6 of feed 0: 1-3 delivered (2 twice), 4 filtered, 5 dead-lettered, 6 missing."""
    events = (
        [falcon_event(o) for o in (1, 2, 3)]
        + [falcon_event(4, "DetectionSummaryEvent")]
        + [falcon_event(o) for o in (5, 6)]
    )
    record = tmp_path / "served.ndjson"
    record.write_text(
        "".join(
            json.dumps({"feed": "0", "offset": e["metadata"]["offset"], "event": e}) + "\n"  # type: ignore[index]
            for e in events
        )
    )
    db = lake_db(tmp_path, [events[offset - 1] for offset in (1, 2, 2, 3)])
    create_topic(bootstrap, topic)
    create_topic(bootstrap, f"{topic}.dlq")
    producer = Producer({"bootstrap.servers": bootstrap})
    for event in events:
        offset = str(event["metadata"]["offset"]).encode()  # type: ignore[index]
        producer.produce(
            topic,
            key=b"0",
            value=json.dumps(event).encode(),
            headers=[("falcon.feed", b"0"), ("falcon.offset", offset)],
        )
    producer.produce(
        f"{topic}.dlq",
        key=b"0",
        value=json.dumps(events[4]).encode(),
        headers=dlq_headers(
            "deliver", "InvalidData", "bad field", original=[("falcon.feed", b"0"), ("falcon.offset", b"5")]
        ),
    )
    assert producer.flush(30) == 0
    return record, db


def run_audit(args: list[str], bootstrap: str, topic: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_DLQ_TOPIC": f"{topic}.dlq"}
    return subprocess.run(
        [sys.executable, "-m", "falcon_lake.cli", "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_audit_reports_every_fate_and_fails_on_missing(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("audit")
    record, db = setup(tmp_path, kafka_bootstrap, topic)

    result = run_audit(["--record", str(record), "--lake-db", str(db), "--json"], kafka_bootstrap, topic)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["expected"] == 6 and report["delivered"] == 3 and report["duplicates"] == 1
    assert report["filtered"] == {"event-type": 1}
    assert report["dead_lettered"] == {"deliver:InvalidData": 1}
    assert report["missing"] == 1 and report["missing_sample"][0]["offset"] == 6

    text = run_audit(["--record", str(record), "--lake-db", str(db)], kafka_bootstrap, topic)
    assert text.returncode == 1 and "RESULT: EVENTS MISSING" in text.stdout and "feed 0 offset 6" in text.stdout


def test_audit_from_the_raw_topic_with_a_required_range(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("audit")
    _record, db = setup(tmp_path, kafka_bootstrap, topic)
    uids = tmp_path / "uids.txt"
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM audit_events")]
    converter = Converter(CHANNEL, EventFilter.from_preset("gateway"))
    sixth = converter.convert(json.dumps(falcon_event(6)).encode(), "0")
    assert isinstance(sixth, AuditEvent)
    uids.write_text("\n".join([*ids, sixth.id]) + "\n")

    complete = run_audit(["--from-topic", "--lake-uids", str(uids), "--json"], kafka_bootstrap, topic)
    assert complete.returncode == 0, complete.stdout + complete.stderr
    assert json.loads(complete.stdout)["missing"] == 0

    gap = run_audit(["--from-topic", "--range", "0:1-8", "--lake-uids", str(uids), "--json"], kafka_bootstrap, topic)
    assert gap.returncode == 1
    report = json.loads(gap.stdout)
    assert report["missing"] == 2
    assert {m["offset"] for m in report["missing_sample"]} == {7, 8}
    assert all(m["detail"] == "absent from the raw topic" for m in report["missing_sample"])


def test_unparsable_lines_and_events_too_large_for_kafka_are_accounted_for(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    """Offsets 1-4 of feed 0, all delivered but 4, which was too large for Kafka (ingest DLQ). The stream
    served malformed lines before offsets 2 and 4; only the first reached the DLQ (read twice)."""
    topic = unique_name("audit-lines")
    events = [falcon_event(o) for o in (1, 2, 3, 4)]
    record = tmp_path / "served.ndjson"
    entries = [{"feed": "0", "offset": 2, "malformed": True, "line": '{"metad'}]
    entries += [{"feed": "0", "offset": o, "event": e} for o, e in zip((1, 2, 3, 4), events, strict=True)]
    entries += [{"feed": "0", "offset": 4, "malformed": True, "line": '{"meta'}]
    record.write_text("".join(json.dumps(e) + "\n" for e in entries))
    db = lake_db(tmp_path, events[:3])
    create_topic(kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, f"{topic}.dlq")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for event in events[:3]:
        offset = str(event["metadata"]["offset"]).encode()  # type: ignore[index]
        headers = [("falcon.feed", b"0"), ("falcon.offset", offset)]
        producer.produce(topic, key=b"0", value=json.dumps(event).encode(), headers=headers)
    for _ in range(2):  # a reconnect met the same line again
        headers = dlq_headers("ingest", "undecodable", "invalid JSON", [("falcon.feed", b"0")], last_good_offset=1)
        producer.produce(f"{topic}.dlq", key=b"0", value=b'{"metad', headers=headers)
    too_large = dlq_headers("ingest", "too_large", "big", [("falcon.feed", b"0"), ("falcon.offset", b"4")])
    producer.produce(f"{topic}.dlq", key=b"0", value=b"{}", headers=too_large)
    assert producer.flush(30) == 0

    result = run_audit(["--record", str(record), "--lake-db", str(db), "--json"], kafka_bootstrap, topic)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] == 3 and report["dead_lettered"] == {"ingest:too_large": 1} and report["missing"] == 0
    assert report["malformed_lines_served"] == 2 and report["malformed_lines_dead_lettered"] == 1
    assert report["malformed_lines_not_dead_lettered"] == [{"feed": "0", "before_offset": 4}]
    text = run_audit(["--record", str(record), "--lake-db", str(db)], kafka_bootstrap, topic).stdout
    assert "malformed lines      2 served, 1 in the DLQ" in text
    assert "feed 0, the line before offset 4: not in the DLQ" in text and "RESULT: nothing lost" in text

    # From the raw topic, offset 4 is absent there but its fate is in the DLQ.
    from_topic = run_audit(["--from-topic", "--range", "0:1-4", "--lake-db", str(db), "--json"], kafka_bootstrap, topic)
    assert from_topic.returncode == 0, from_topic.stdout + from_topic.stderr
    report = json.loads(from_topic.stdout)
    assert report["dead_lettered"] == {"ingest:too_large": 1}
    assert report["malformed_lines_served"] is None and report["malformed_lines_dead_lettered"] == 1


def test_bad_arguments_give_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run_audit(["--from-topic", "--range", "zero", "--lake-db", str(tmp_path / "x.db")], kafka_bootstrap, "t")
    assert result.returncode == 2 and "FEED:START-END" in result.stderr
    missing = run_audit(["--record", str(tmp_path / "none.ndjson"), "--lake-db", "x.db"], kafka_bootstrap, "t")
    assert missing.returncode == 2 and "none.ndjson" in missing.stderr and "Traceback" not in missing.stderr


def test_an_unreachable_broker_is_one_line_naming_it_and_exit_2(tmp_path: Path) -> None:
    record = tmp_path / "served.ndjson"
    record.write_text(json.dumps({"feed": "0", "offset": 1, "event": {"metadata": {}}}) + "\n")
    nowhere = f"127.0.0.1:{free_port()}"
    result = run_audit(["--record", str(record), "--lake-db", str(tmp_path / "lake.db")], nowhere, "t")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"cannot reach Kafka at {nowhere}" in result.stderr and "Connection refused" in result.stderr
