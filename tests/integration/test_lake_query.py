"""The CloudTrail emulator's query API, driven by an unmodified boto3 `cloudtrail` client."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from emulators.cloudtrail import CloudTrailEmulator, CloudTrailEmulatorConfig
from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter

CID = "0123456789abcdef0123456789abcdef"
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
STORE_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:eventdatastore/11112222-3333-4444-8555-666677778888"
STORE = STORE_ARN.rsplit("/", 1)[1]
LIST_HEADERS = {"X-Amz-Target": "CloudTrail_20131101.ListEventDataStores", "Content-Type": "application/x-amz-json-1.1"}
BASE_MS = 1_795_000_000_000  # 2026-11-18 11:06:40 UTC
# (offset, operation, user, success, seconds after BASE_MS)
EVENTS = [
    (1, "userAuthenticate", "alice@example.com", True, 0),
    (2, "userAuthenticate", "bob@example.com", False, 60),
    (3, "userAuthenticate", "bob@example.com", False, 120),
    (4, "twoFactorAuthenticate", "carol@example.com", False, 180),
    (5, "createUser", "alice@example.com", True, 240),
    (6, "deleteUser", "alice@example.com", True, 300),
    (7, "changePassword", "dave@example.com", True, 3600),
    (8, "userAuthenticate", "Alice@Example.com", True, 7200),
]


def falcon_event(offset: int, operation: str, user: str, success: bool, seconds: int) -> dict[str, Any]:
    return {
        "metadata": {
            "customerIDString": CID,
            "offset": offset,
            "eventType": "AuthActivityAuditEvent",
            "eventCreationTime": BASE_MS + seconds * 1000,
            "version": "1.0",
        },
        "event": {
            "UserId": user,
            "UserIp": "192.0.2.10",
            "OperationName": operation,
            "ServiceName": "CrowdStrike Authentication",
            "Success": success,
            "UTCTimestamp": BASE_MS // 1000 + seconds,
            "AuditKeyValues": [],
            "Attributes": {},
        },
    }


def audit_events(rows: list[tuple[int, str, str, bool, int]]) -> list[AuditEvent]:
    converter = Converter(CHANNEL, EventFilter.from_preset("gateway"))
    events = []
    for row in rows:
        result = converter.convert(json.dumps(falcon_event(*row)).encode(), "0")
        assert isinstance(result, AuditEvent), result
        events.append(result)
    return events


def deliver(url: str, events: list[AuditEvent]) -> None:
    data = boto3.client("cloudtrail-data", endpoint_url=url, region_name="us-east-1")
    for start in range(0, len(events), 100):
        batch = [{"id": e.id, "eventData": e.event_data} for e in events[start : start + 100]]
        answer = data.put_audit_events(channelArn=CHANNEL, auditEvents=batch)
        assert not answer["failed"], answer["failed"]


def cloudtrail(url: str, attempts: int = 3) -> Any:
    return boto3.client(
        "cloudtrail",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
    )


def wait(client: Any, query_id: str, until: tuple[str, ...] = ("FINISHED", "FAILED", "TIMED_OUT", "CANCELLED")) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        described = client.describe_query(EventDataStore=STORE, QueryId=query_id)
        if described["QueryStatus"] in until:
            return described
        time.sleep(0.02)
    raise AssertionError(f"query {query_id} never reached {until}")


def run(client: Any, sql: str, page: int | None = None) -> tuple[list[str], list[list[str | None]]]:
    """Column names and rows (values in select order), every page read."""
    query_id = client.start_query(QueryStatement=sql)["QueryId"]
    assert wait(client, query_id)["QueryStatus"] == "FINISHED"
    columns: list[str] = []
    rows: list[list[str | None]] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"QueryId": query_id}
        if page:
            kwargs["MaxQueryResults"] = page
        if token:
            kwargs["NextToken"] = token
        answer = client.get_query_results(**kwargs)
        for row in answer["QueryResultRows"]:
            assert all(len(cell) == 1 for cell in row)
            columns = [next(iter(cell)) for cell in row]
            rows.append([next(iter(cell.values())) for cell in row])
        token = answer.get("NextToken")
        if not token:
            return columns, rows


@pytest.fixture(scope="module")
def lake() -> Iterator[tuple[CloudTrailEmulator, Any]]:
    emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, event_data_store_arn=STORE_ARN)).start()
    deliver(emulator.url, audit_events(EVENTS))
    try:
        yield emulator, cloudtrail(emulator.url)
    finally:
        emulator.stop()


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def uid(offset: int) -> str:
    return f"{CID}-0-{offset}"


def test_the_event_data_store_is_listed_and_described_by_arn_or_id(lake: tuple[CloudTrailEmulator, Any]) -> None:
    _, client = lake
    stores = client.list_event_data_stores()["EventDataStores"]
    assert [s["EventDataStoreArn"] for s in stores] == [STORE_ARN]
    for name in (STORE_ARN, STORE):
        described = client.get_event_data_store(EventDataStore=name)
        assert described["EventDataStoreArn"] == STORE_ARN and described["Status"] == "ENABLED"
    with pytest.raises(ClientError) as missing:
        client.get_event_data_store(EventDataStore="00000000-0000-4000-8000-000000000000")
    assert error_code(missing) == "EventDataStoreNotFoundException"
    with pytest.raises(ClientError) as bad:
        client.get_event_data_store(EventDataStore="arn:aws:cloudtrail:nowhere")
    assert error_code(bad) == "EventDataStoreARNInvalidException"


def test_select_event_data_fields_and_the_fields_cloudtrail_adds(lake: tuple[CloudTrailEmulator, Any]) -> None:
    emulator, client = lake
    columns, rows = run(
        client,
        f"SELECT eventData.uid, eventData.eventName, eventData.userIdentity.principalId, eventData.errorCode, "
        f"eventTime, eventID, eventCategory, eventType, awsRegion, recipientAccountId, metadata.channelARN "
        f"FROM {STORE} WHERE eventData.uid = '{uid(2)}'",
    )
    assert columns == [
        "uid", "eventName", "principalId", "errorCode", "eventTime", "eventID", "eventCategory", "eventType",
        "awsRegion", "recipientAccountId", "channelARN",
    ]  # fmt: skip
    stored = next(e for e in emulator.events() if e.id == uid(2))
    assert rows == [
        [
            uid(2), "userAuthenticate", "bob@example.com", "AuthenticationFailed", "2026-11-18 11:07:40.000",
            stored.event_id, "ActivityAuditLog", "ActivityLog", "us-east-1", "123456789012", CHANNEL,
        ]
    ]  # fmt: skip
    # Names are case-insensitive, as in CloudTrail Lake; the FROM may name the store by ARN.
    _, upper = run(client, f"SELECT EVENTDATA.UID FROM {STORE_ARN} WHERE EVENTDATA.UID = '{uid(2)}'")
    assert upper == [[uid(2)]]
    columns, star = run(client, f"SELECT * FROM {STORE} WHERE eventData.uid = '{uid(1)}'")
    assert columns[:5] == ["eventVersion", "eventCategory", "eventType", "eventID", "eventTime"]
    assert json.loads(star[0][columns.index("eventData")] or "")["UID"] == uid(1)


@pytest.mark.parametrize(
    ("where", "offsets"),
    [
        ("eventData.eventName = 'userAuthenticate'", {1, 2, 3, 8}),
        ("eventData.eventName <> 'userAuthenticate'", {4, 5, 6, 7}),
        (
            "eventData.eventName != 'userAuthenticate' AND eventData.userIdentity.principalId = 'alice@example.com'",
            {5, 6},
        ),
        ("eventData.errorCode = 'AuthenticationFailed' OR eventData.eventName = 'createUser'", {2, 3, 4, 5}),
        (
            "(eventData.eventName = 'deleteUser' OR eventData.eventName = 'createUser') AND NOT eventData.uid = 'x'",
            {5, 6},
        ),
        ("eventData.userIdentity.principalId LIKE 'alice%'", {1, 5, 6}),  # case-sensitive, as in Lake
        ("eventData.eventName LIKE '%User'", {5, 6}),
        ("eventData.eventName NOT LIKE '%Authenticate'", {5, 6, 7}),
        ("eventData.userIdentity.principalId LIKE '___@example.com'", {2, 3}),
        ("eventData.eventName IN ('createUser', 'deleteUser', 'nothing')", {5, 6}),
        ("eventData.eventName NOT IN ('userAuthenticate', 'twoFactorAuthenticate')", {5, 6, 7}),
        ("eventData.errorCode IS NULL", {1, 5, 6, 7, 8}),
        ("eventData.errorCode IS NOT NULL", {2, 3, 4}),
        ("eventTime >= '2026-11-18 11:07:40' AND eventTime < '2026-11-18 11:10:40'", {2, 3, 4}),
        ("eventTime > '2026-11-18T11:07:40Z' AND eventTime <= '2026-11-18T12:06:40Z'", {3, 4, 5, 6, 7}),
        ("eventTime BETWEEN TIMESTAMP '2026-11-18 12:00:00' AND '2026-11-18 13:06:40'", {7, 8}),
        ("eventTime < '2026-11-18'", set()),
        ("eventData.eventTime >= '2026-11-18T12:00:00Z'", {7, 8}),
        (
            "metadata.channelARN = 'arn:aws:cloudtrail:us-east-1:123456789012:channel/demo' AND eventID IS NOT NULL",
            {1, 2, 3, 4, 5, 6, 7, 8},
        ),
    ],
)
def test_where_clauses_select_exactly_the_matching_events(
    lake: tuple[CloudTrailEmulator, Any], where: str, offsets: set[int]
) -> None:
    _, client = lake
    _, rows = run(client, f"SELECT eventData.uid FROM {STORE} WHERE {where}")
    assert sorted(row[0] or "" for row in rows) == sorted(uid(o) for o in offsets)


def test_group_by_count_order_by_and_limit(lake: tuple[CloudTrailEmulator, Any]) -> None:
    _, client = lake
    columns, rows = run(
        client,
        f"SELECT eventData.eventName, COUNT(*) AS events FROM {STORE} "
        "GROUP BY eventData.eventName ORDER BY events DESC, eventData.eventName LIMIT 3",
    )
    assert columns == ["eventName", "events"]
    assert rows == [["userAuthenticate", "4"], ["changePassword", "1"], ["createUser", "1"]]
    _, failed = run(
        client,
        f"SELECT eventData.userIdentity.principalId AS user, eventData.errorCode, COUNT(*) FROM {STORE} "
        "WHERE eventData.errorCode = 'AuthenticationFailed' GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    assert failed == [
        ["bob@example.com", "AuthenticationFailed", "2"],
        ["carol@example.com", "AuthenticationFailed", "1"],
    ]
    _, ordered = run(client, f"SELECT eventData.uid, eventTime FROM {STORE} ORDER BY eventTime DESC LIMIT 2")
    assert [r[0] for r in ordered] == [uid(8), uid(7)]
    _, total = run(client, f"SELECT COUNT(*), MIN(eventTime), MAX(eventData.eventTime) FROM {STORE}")
    assert total == [["8", "2026-11-18 11:06:40.000", "2026-11-18T13:06:40Z"]]
    _, distinct = run(client, f"SELECT COUNT(DISTINCT eventData.userIdentity.principalId) FROM {STORE}")
    assert distinct == [["5"]]


def test_results_page_with_next_token_and_report_statistics(tmp_path: Path) -> None:
    events = audit_events([(o, "userAuthenticate", f"u{o}@example.com", True, o) for o in range(1, 251)])
    with CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, event_data_store_arn=STORE_ARN)) as emulator:
        deliver(emulator.url, events)
        client = cloudtrail(emulator.url)
        query_id = client.start_query(
            QueryStatement=f"SELECT eventData.uid FROM {STORE} WHERE eventTime >= '2026-11-18 11:06:41' "
            "AND eventTime < '2026-11-18 11:09:11' ORDER BY eventData.uid"
        )["QueryId"]
        described = wait(client, query_id)
        statistics = described["QueryStatistics"]
        assert statistics["EventsMatched"] == 150 and statistics["EventsScanned"] == 150
        assert statistics["BytesScanned"] > 150 * 500
        pages = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"QueryId": query_id, "MaxQueryResults": 64}
            if token:
                kwargs["NextToken"] = token
            answer = client.get_query_results(**kwargs)
            pages.append(answer)
            token = answer.get("NextToken")
            if not token:
                break
        assert [p["QueryStatistics"]["ResultsCount"] for p in pages] == [64, 64, 22]
        assert {p["QueryStatistics"]["TotalResultsCount"] for p in pages} == {150}
        assert {p["QueryStatistics"]["BytesScanned"] for p in pages} == {statistics["BytesScanned"]}
        uids = [row[0]["uid"] for p in pages for row in p["QueryResultRows"]]
        assert uids == sorted(uid(o) for o in range(1, 151))
        # Without MaxQueryResults one page holds up to 1000 rows.
        assert len(client.get_query_results(QueryId=query_id)["QueryResultRows"]) == 150
        with pytest.raises(ClientError) as bad_token:
            client.get_query_results(QueryId=query_id, NextToken="not-a-token")
        assert error_code(bad_token) == "InvalidNextTokenException"
        with pytest.raises(ClientError) as bad_size:
            client.get_query_results(QueryId=query_id, MaxQueryResults=1001)
        assert error_code(bad_size) == "InvalidMaxResultsException"


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("DELETE FROM {store}", "InvalidQueryStatementException"),
        ("DROP TABLE {store}", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM {store}; DELETE FROM {store}", "InvalidQueryStatementException"),
        (
            "SELECT eventData.uid FROM {store} a JOIN {store} b ON a.eventID = b.eventID",
            "InvalidQueryStatementException",
        ),
        ("SELECT eventData.nothing FROM {store}", "InvalidQueryStatementException"),
        ("SELECT nothing FROM {store}", "InvalidQueryStatementException"),
        ("SELECT eventData.uid, COUNT(*) FROM {store} GROUP BY eventData.eventName", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM {store} WHERE COUNT(*) > 1", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM {store} WHERE eventTime > 'yesterday'", "InvalidQueryStatementException"),
        ("SELECT lower(eventData.uid) FROM {store}", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM {store} WHERE", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM {store} WHERE eventData.uid = 'unterminated", "InvalidQueryStatementException"),
        ("SELECT eventData.uid FROM 00000000-0000-4000-8000-000000000000", "EventDataStoreNotFoundException"),
    ],
)
def test_statements_outside_the_subset_get_cloudtrails_error(
    lake: tuple[CloudTrailEmulator, Any], sql: str, code: str
) -> None:
    _, client = lake
    with pytest.raises(ClientError) as excinfo:
        client.start_query(QueryStatement=sql.format(store=STORE))
    assert error_code(excinfo) == code, excinfo.value.response["Error"]["Message"]


def test_query_lifecycle_errors_running_cancel_fail_time_out_throttle(lake: tuple[CloudTrailEmulator, Any]) -> None:
    emulator, client = lake
    with pytest.raises(ClientError) as unknown:
        client.describe_query(QueryId=str(uuid.uuid4()))
    assert error_code(unknown) == "QueryIdNotFoundException"
    with pytest.raises(ClientError) as unknown_results:
        client.get_query_results(QueryId=str(uuid.uuid4()))
    assert error_code(unknown_results) == "QueryIdNotFoundException"

    sql = f"SELECT eventData.uid FROM {STORE}"
    finished = client.start_query(QueryStatement=sql)["QueryId"]
    wait(client, finished)
    with pytest.raises(ClientError) as inactive:
        client.cancel_query(EventDataStore=STORE, QueryId=finished)
    assert error_code(inactive) == "InactiveQueryException"
    with pytest.raises(ClientError) as wrong_store:
        client.get_query_results(EventDataStore="00000000-0000-4000-8000-000000000000", QueryId=finished)
    assert error_code(wrong_store) == "EventDataStoreNotFoundException"

    try:
        emulator.lake.set_faults(running_seconds=30)
        running = client.start_query(QueryStatement=sql)["QueryId"]
        assert wait(client, running, ("RUNNING",))["QueryStatus"] == "RUNNING"
        pending = client.get_query_results(QueryId=running)
        assert pending["QueryStatus"] == "RUNNING" and pending["QueryResultRows"] == []
        assert client.cancel_query(EventDataStore=STORE, QueryId=running)["QueryStatus"] == "CANCELLED"
        assert client.describe_query(QueryId=running)["QueryStatus"] == "CANCELLED"

        for outcome in ("FAILED", "TIMED_OUT"):
            emulator.lake.set_faults(running_seconds=0, outcome=outcome)
            query_id = client.start_query(QueryStatement=sql)["QueryId"]
            described = wait(client, query_id)
            assert described["QueryStatus"] == outcome and described["ErrorMessage"]
            results = client.get_query_results(QueryId=query_id)
            assert results["QueryStatus"] == outcome and results["QueryResultRows"] == []
        emulator.lake.set_faults(outcome=None, throttle_requests=1)
        with pytest.raises(ClientError) as throttled:
            cloudtrail(emulator.url, attempts=1).start_query(QueryStatement=sql)
        assert error_code(throttled) == "ThrottlingException"
        emulator.lake.set_faults(throttle_requests=1)
        assert client.start_query(QueryStatement=sql)["QueryId"]  # the SDK's retry gets through
    finally:
        emulator.lake.set_faults(running_seconds=0, outcome=None, throttle_requests=0)


def test_query_requests_must_be_signed_for_the_cloudtrail_service(lake: tuple[CloudTrailEmulator, Any]) -> None:
    emulator, _ = lake
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        emulator.url + "/",
        data=b"{}",
        headers=LIST_HEADERS,
    )
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(request, timeout=5)
    assert json.loads(unsigned.value.read())["__type"] == "MissingAuthenticationTokenException"
    # A client for cloudtrail-data signs with the wrong service name for the query API.
    session = boto3.session.Session()
    credentials = session.get_credentials()
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    signed = AWSRequest(
        method="POST",
        url=emulator.url + "/",
        data=b"{}",
        headers=LIST_HEADERS,
    )
    SigV4Auth(credentials, "cloudtrail-data", "us-east-1").add_auth(signed)
    request = urllib.request.Request(signed.url, data=b"{}", headers=dict(signed.headers.items()))
    with pytest.raises(urllib.error.HTTPError) as wrong_scope:
        urllib.request.urlopen(request, timeout=5)
    assert json.loads(wrong_scope.value.read())["__type"] == "InvalidSignatureException"


def test_a_database_written_before_the_query_api_is_migrated_and_queryable(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    (event,) = audit_events([EVENTS[1]])
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE audit_events(event_id TEXT PRIMARY KEY, id TEXT, channel_arn TEXT, "
            "event_data TEXT, received_at TEXT)"
        )
        conn.execute(
            "INSERT INTO audit_events VALUES (?,?,?,?,?)",
            ("e-old", event.id, CHANNEL, event.event_data, "2026-11-27T00:00:00.000Z"),
        )
    conn.close()
    config = CloudTrailEmulatorConfig(port=0, db_path=str(db), event_data_store_arn=STORE_ARN)
    with CloudTrailEmulator(config) as emulator:
        deliver(emulator.url, audit_events([EVENTS[2]]))
        _, rows = run(
            cloudtrail(emulator.url),
            f"SELECT eventData.uid, eventTime, metadata.ingestionTime, awsRegion FROM {STORE} ORDER BY eventTime",
        )
    assert rows[0] == [uid(2), "2026-11-18 11:07:40.000", "2026-11-27 00:00:00.000", "us-east-1"]
    assert rows[1][0] == uid(3)
    # Readers of the original five columns see what they always saw.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT event_id, id, channel_arn, received_at FROM audit_events LIMIT 1").fetchone() == (
            "e-old",
            event.id,
            CHANNEL,
            "2026-11-27T00:00:00.000Z",
        )
    conn.close()


def test_event_time_is_what_sqlite_reads_in_event_data_however_the_text_is_written(tmp_path: Path) -> None:
    """The eventTime the query API returns and filters by is SQLite's reading of each eventData text, as
    when the emulator computed the column in SQL, also where SQLite reads the text otherwise than the
    validator (json.loads) does: the emulator's shortcut in Python must never change it."""
    (converted,) = audit_events([EVENTS[0]])  # eventTime 2026-11-18T11:06:40Z
    data = json.loads(converted.event_data)
    texts = {}
    for name in ("plain", "escaped-value", "escaped-key", "repeated-key", "arabic-indic-digits"):
        texts[name] = json.dumps({**data, "UID": name}, separators=(",", ":"), ensure_ascii=False)
    texts["escaped-value"] = texts["escaped-value"].replace('40Z"', '40\\u005a"')
    texts["escaped-key"] = texts["escaped-key"].replace('"eventTime"', '"event\\u0054ime"')
    texts["repeated-key"] = texts["repeated-key"][:-1] + ',"eventTime":"2026-11-18T12:00:00Z"}'
    arabic_indic = {ord(str(digit)): 0x0660 + digit for digit in range(10)}  # the validator's \d takes them
    texts["arabic-indic-digits"] = texts["arabic-indic-digits"].replace(
        "2026-11-18", "2026-11-18".translate(arabic_indic)
    )
    sqlite = sqlite3.connect(":memory:")
    sql = "SELECT strftime('%Y-%m-%d %H:%M:%f', json_extract(?, '$.eventTime'))"
    derived = {name: sqlite.execute(sql, (text,)).fetchone()[0] for name, text in texts.items()}
    sqlite.close()
    assert derived["plain"] == derived["repeated-key"] == "2026-11-18 11:06:40.000"  # the first key, not the last
    assert derived["arabic-indic-digits"] is None

    config = CloudTrailEmulatorConfig(port=0, db_path=str(tmp_path / "lake.db"), event_data_store_arn=STORE_ARN)
    with CloudTrailEmulator(config) as emulator:
        put = boto3.client("cloudtrail-data", endpoint_url=emulator.url, region_name="us-east-1")
        entries = [{"id": name, "eventData": text} for name, text in texts.items()]
        answer = put.put_audit_events(channelArn=CHANNEL, auditEvents=entries)
        assert not answer["failed"], answer["failed"]
        client = cloudtrail(emulator.url)
        _, rows = run(client, f"SELECT eventData.uid, eventTime FROM {STORE} ORDER BY eventData.uid")
        _, since = run(client, f"SELECT eventData.uid FROM {STORE} WHERE eventTime >= '2026-11-18 11:06:40'")
        _, missing = run(client, f"SELECT eventData.uid FROM {STORE} WHERE eventTime IS NULL")
    assert rows == [[name, derived[name]] for name in sorted(texts)]
    assert sorted(row[0] or "" for row in since) == sorted(n for n, t in derived.items() if t is not None)
    assert sorted(row[0] or "" for row in missing) == sorted(n for n, t in derived.items() if t is None)


def lake_query_cli(emulator: CloudTrailEmulator, *args: str) -> Any:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AWS_ENDPOINT_URL_CLOUDTRAIL": emulator.url, "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(
        [sys.executable, "-m", "falcon_lake.cli", "lake", "query", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lake_query_runs_cloudtrail_lake_sql_through_the_query_api(lake: tuple[CloudTrailEmulator, Any]) -> None:
    emulator, _ = lake
    sql = (
        f"SELECT eventData.userIdentity.principalId AS user, COUNT(*) AS failures FROM {STORE} "
        "WHERE eventData.errorCode = 'AuthenticationFailed' GROUP BY eventData.userIdentity.principalId "
        "ORDER BY failures DESC"
    )
    table = lake_query_cli(emulator, "--event-data-store", STORE_ARN, sql)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["user", "failures"]
    assert lines[2].split() == ["bob@example.com", "2"] and lines[3].split() == ["carol@example.com", "1"]
    assert lines[-1] == "(2 rows)"
    assert "scanned" in table.stderr
    as_json = lake_query_cli(emulator, "--event-data-store", STORE, sql, "--json")
    assert json.loads(as_json.stdout) == [
        {"user": "bob@example.com", "failures": "2"},
        {"user": "carol@example.com", "failures": "1"},
    ]
    bad = lake_query_cli(emulator, "--event-data-store", STORE, f"DELETE FROM {STORE}")
    assert bad.returncode == 2 and "rejected the query" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    unknown = lake_query_cli(emulator, "--event-data-store", "00000000-0000-4000-8000-000000000000", "SELECT 1")
    assert unknown.returncode == 2 and "not found" in unknown.stderr and "Traceback" not in unknown.stderr


def test_query_faults_are_set_over_http_and_the_store_arn_is_a_checked_flag(
    lake: tuple[CloudTrailEmulator, Any],
) -> None:
    import subprocess
    import sys

    import requests

    emulator, client = lake
    try:
        answer = requests.post(f"{emulator.url}/_emulator/query-faults", json={"outcome": "TIMED_OUT"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["outcome"] == "TIMED_OUT"
        query_id = client.start_query(QueryStatement=f"SELECT eventData.uid FROM {STORE}")["QueryId"]
        assert wait(client, query_id)["QueryStatus"] == "TIMED_OUT"
        bad = requests.post(f"{emulator.url}/_emulator/query-faults", json={"outcome": "EXPLODED"}, timeout=5)
        assert bad.status_code == 400
    finally:
        requests.post(f"{emulator.url}/_emulator/query-faults", json={"outcome": None}, timeout=5)
    assert requests.get(f"{emulator.url}/_emulator/query-faults", timeout=5).json()["outcome"] is None

    wrong = subprocess.run(
        [sys.executable, "-m", "falcon_lake.cli", "emulate", "cloudtrail", "--port", "0", "--event-data-store", "eds"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "eventdatastore/ID" in wrong.stderr and "Traceback" not in wrong.stderr
