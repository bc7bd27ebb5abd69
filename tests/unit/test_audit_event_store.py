"""The emulator's audit_events table: the event_time column the emulator computes in Python for an
accepted event is exactly what SQLite derives from its eventData text, the way every row was stored
before (and old files are still migrated): strftime('%Y-%m-%d %H:%M:%f', json_extract(eventData, '$.eventTime'))."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulators.cloudtrail import AuditEventStore, ingestion_envelope, stored_event_time
from emulators.cloudtrail_validation import AcceptedEventData, parse_event_data

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
ACCOUNT = "123456789012"
RECEIVED = "2026-12-01T00:00:00.000Z"
SQLITE_EVENT_TIME = "SELECT strftime('%Y-%m-%d %H:%M:%f', json_extract(?, '$.eventTime'))"


def event_data(**changes: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "userIdentity": {"type": "AuthActivityAuditEvent", "principalId": "analyst@example.com"},
        "eventSource": "crowdstrike",
        "eventName": "userAuthenticate",
        "eventTime": "2024-11-26T08:00:00Z",
        "UID": "cid-0-1",
        "recipientAccountId": ACCOUNT,
        **changes,
    }


def compact(data: dict[str, Any], **dumps: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, **dumps)


def accepted(text: str) -> AcceptedEventData:
    result = parse_event_data(text, ACCOUNT)
    assert isinstance(result, AcceptedEventData), result
    return result


def sqlite_event_time(text: str) -> str | None:
    """What SQLite derives from the text; sqlite3.OperationalError where it cannot read it."""
    db = sqlite3.connect(":memory:")
    try:
        value: str | None = db.execute(SQLITE_EVENT_TIME, (text,)).fetchone()[0]
    finally:
        db.close()
    return value


def assert_stored_as_sqlite_derives_it(text: str) -> None:
    """The emulator's row for an accepted text holds SQLite's own event_time, or fails to store as SQLite did."""
    store = AuditEventStore(":memory:")
    envelope = ingestion_envelope(CHANNEL, RECEIVED)
    row = ("e-1", "cid-0-1", CHANNEL, text, RECEIVED, stored_event_time(text, accepted(text)), envelope)
    try:
        expected = sqlite_event_time(text)
    except sqlite3.OperationalError:
        with pytest.raises(sqlite3.OperationalError):
            store.insert([row])
        assert store.count() == 0
        return
    store.insert([row])
    assert store.read("SELECT event_time FROM audit_events", []) == [(expected,)]


@pytest.mark.parametrize(
    "when",
    ["2024-11-26T08:00:00Z", "0001-01-01T00:00:00Z", "0999-12-31T23:59:59Z", "2024-02-29T12:34:56Z",
     "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
)  # fmt: skip
def test_an_ordinary_event_time_is_computed_in_python_as_sqlite_does(when: str) -> None:
    for text in (compact(event_data(eventTime=when)), json.dumps(event_data(eventTime=when), indent=2)):
        assert stored_event_time(text, accepted(text)) == f"{when[:10]} {when[11:19]}.000"
        assert_stored_as_sqlite_derives_it(text)


# Texts SQLite reads otherwise than json.loads, or not at all: Python leaves the column to SQLite.
ESCAPED_VALUE = compact(event_data()).replace('08:00:00Z"', '08:00:00\\u005a"')
ESCAPED_KEY = compact(event_data()).replace('"eventTime"', '"event\\u0054ime"')
REPEATED_KEY = compact(event_data(eventTime="2020-01-01T00:00:00Z"))[:-1] + ',"eventTime":"2024-11-26T08:00:00Z"}'
REPEATED_KEY_SAME_TIME = compact(event_data())[:-1] + ',"eventTime":"2024-11-26T08:00:00Z"}'
NESTED_KEY_FIRST = compact(
    {"additionalEventData": {"eventTime": "2020-01-01T00:00:00Z"}, **event_data(eventTime="2024-11-26T08:00:00Z")}
)
# The validator's \d takes any script's digits; SQLite's dates take ASCII ones only.
ARABIC_INDIC_DIGITS = compact(
    event_data(eventTime="2024-11-26T08:00:00Z".translate({ord(str(d)): 0x0660 + d for d in range(10)}))
)
NOT_A_NUMBER = compact(event_data()).replace('"UID"', '"additionalEventData":{"score":NaN},"UID"')
MINUS_INFINITY = compact(event_data()).replace('"UID"', '"requestParameters":{"limit":-Infinity},"UID"')
NON_ASCII_ESCAPED = json.dumps(event_data(userIdentity={"type": "t", "principalId": "иван@example.ru"}))


@pytest.mark.parametrize(
    "text",
    [ESCAPED_VALUE, ESCAPED_KEY, REPEATED_KEY, REPEATED_KEY_SAME_TIME, NESTED_KEY_FIRST, ARABIC_INDIC_DIGITS,
     NOT_A_NUMBER, MINUS_INFINITY, NON_ASCII_ESCAPED],
)  # fmt: skip
def test_where_sqlite_reads_the_text_otherwise_it_decides_as_it_always_did(text: str) -> None:
    assert stored_event_time(text, accepted(text)) is None
    assert_stored_as_sqlite_derives_it(text)


def test_the_words_nan_and_event_time_inside_string_values_keep_the_python_path() -> None:
    plain = compact(event_data(eventName="NaN Infinity", additionalEventData={"note": "иван NaN"}))
    assert stored_event_time(plain, accepted(plain)) == "2024-11-26 08:00:00.000"
    assert_stored_as_sqlite_derives_it(plain)
    named = compact(event_data(requestParameters={"field": "eventTime"}))  # a second '"eventTime"': SQLite decides
    assert stored_event_time(named, accepted(named)) is None
    assert_stored_as_sqlite_derives_it(named)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and the infinities included: json.dumps writes them as NaN and Infinity
    | st.text(max_size=12)
    | st.sampled_from(["eventTime", '"eventTime"', "NaN", "\\", "2024-11-26T08:00:00Z"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)
event_times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).map(
    lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    when=event_times,
    extra=st.dictionaries(st.sampled_from(["additionalEventData", "requestParameters"]), json_values, max_size=2),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_any_accepted_event_data_is_stored_with_the_event_time_sqlite_derives(
    when: str, extra: dict[str, Any], ascii_only: bool, indent: int | None
) -> None:
    fields = {name: {"value": value} for name, value in extra.items()}
    text = json.dumps(event_data(eventTime=when, **fields), ensure_ascii=ascii_only, indent=indent)
    assert_stored_as_sqlite_derives_it(text)
