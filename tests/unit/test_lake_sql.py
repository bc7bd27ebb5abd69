"""The emulator's CloudTrail Lake SQL subset: parsed, translated with bound values, answered exactly or refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulators.cloudtrail import AuditEventStore, ingestion_envelope
from emulators.lake_sql import QueryError, lake_timestamp, parse, translate

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


def store_with(*events: dict[str, Any]) -> AuditEventStore:
    store = AuditEventStore(":memory:")
    envelope = ingestion_envelope(CHANNEL, "2026-12-01T00:00:00.000Z")
    # event_time None: SQLite derives it from eventData (tests/unit/test_audit_event_store.py: as the emulator does).
    store.insert(
        [
            (f"e{n}", event["UID"], CHANNEL, json.dumps(event), "2026-12-01T00:00:00.000Z", None, envelope)
            for n, event in enumerate(events)
        ]
    )
    return store


def event(uid: str, name: str, when: str = "2026-11-18T11:06:40Z", **extra: Any) -> dict[str, Any]:
    return {"UID": uid, "eventName": name, "eventTime": when, "userIdentity": {"principalId": "p"}, **extra}


def answer(store: AuditEventStore, sql: str) -> list[tuple[Any, ...]]:
    translation = translate(parse(sql))
    return store.read(translation.sql, translation.params)


def test_literals_and_paths_are_bound_never_pasted_into_the_sql() -> None:
    hostile = "x' OR '1'='1"
    translation = translate(
        parse(f"SELECT eventData.uid FROM s WHERE eventData.eventName = '{hostile.replace(chr(39), chr(39) * 2)}'")
    )
    assert hostile in translation.params
    assert "OR '1'" not in translation.sql and "eventName" not in translation.sql
    store = store_with(event("a", "login"), event("b", hostile))
    assert answer(store, "SELECT eventData.uid FROM s WHERE eventData.eventName = 'x'' OR ''1''=''1'") == [("b",)]


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2026-11-18 11:06:40", "2026-11-18 11:06:40.000"),
        ("2026-11-18T11:06:40Z", "2026-11-18 11:06:40.000"),
        ("2026-11-18T11:06:40.5+00:00", "2026-11-18 11:06:40.500"),
        ("2026-11-18", "2026-11-18 00:00:00.000"),
    ],
)
def test_timestamp_literals_take_the_stored_form(text: str, stored: str) -> None:
    assert lake_timestamp(text) == stored


def test_event_time_is_the_events_own_time_and_ranges_use_it() -> None:
    store = store_with(event("a", "x", "2026-11-18T10:00:00Z"), event("b", "x", "2026-11-18T12:00:00Z"))
    rows = answer(store, "SELECT eventData.uid FROM s WHERE eventTime >= '2026-11-18 11:00:00' ORDER BY eventTime")
    assert rows == [("b",)]
    translation = translate(parse("SELECT eventData.uid FROM s WHERE eventTime < '2026-11-18 11:00:00'"))
    scanned = store.read(translation.scan_sql, translation.scan_params)[0]
    assert scanned[0] == 1 and scanned[1] > 0  # the time range limits what is scanned


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT eventData.uid FROM s ORDER BY COUNT(*)",  # an aggregate would collapse the rows silently
        "SELECT eventData.uid FROM s WHERE eventData.eventTime > TIMESTAMP '2026-01-01 00:00:00'",
        "SELECT eventData.uid FROM s WHERE eventTime = 5",
        "SELECT eventData.uid, eventData.eventName, COUNT(*) FROM s GROUP BY eventData.uid",
        "SELECT eventData.userIdentity.nothing FROM s",
        "SELECT eventData.eventName.deeper FROM s",
        "SELECT eventData.* FROM s",
        "SELECT eventData.uid FROM s WHERE eventData.uid IN (SELECT 1 FROM s)",
        "SELECT eventData.uid FROM s LIMIT -1",
        "SELECT eventData.uid FROM s, t",
        "SELECT eventData.uid FROM s ORDER BY 2",
        "WITH x AS (SELECT 1 FROM s) SELECT * FROM x",
        "SELECT CAST(eventTime AS varchar) FROM s",
        "",
    ],
)
def test_statements_that_would_not_get_the_same_answer_are_refused(sql: str) -> None:
    with pytest.raises(QueryError) as excinfo:
        translate(parse(sql))
    assert excinfo.value.code == "InvalidQueryStatementException"


def test_nulls_sort_last_both_ways_as_in_trino() -> None:
    store = store_with(event("a", "x", errorCode="E1"), event("b", "x"), event("c", "x", errorCode="E2"))
    assert answer(store, "SELECT eventData.uid FROM s ORDER BY eventData.errorCode") == [("a",), ("c",), ("b",)]
    assert answer(store, "SELECT eventData.uid FROM s ORDER BY eventData.errorCode DESC") == [("c",), ("a",), ("b",)]


def test_output_names_follow_trino() -> None:
    translation = translate(parse("SELECT eventData.eventName, COUNT(*), eventTime AS t FROM s GROUP BY 1, 3"))
    assert translation.columns == ["eventName", "_col1", "t"]
