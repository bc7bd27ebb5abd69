"""The CloudTrail Lake query API of the emulator: one event data store and its queries.

Serves the `cloudtrail` service's operations an auditor needs, in AWS's JSON 1.1 form
(`POST /` with `X-Amz-Target: CloudTrail_20131101.<Operation>`), so an unmodified boto3
`cloudtrail` client works against the emulator: `ListEventDataStores`,
`GetEventDataStore`, `StartQuery`, `DescribeQuery`, `GetQueryResults`, `CancelQuery`.

Every channel of the emulator delivers into the one event data store (its ARN is
configurable). A query is parsed and translated by `emulators.lake_sql`, then runs in
a thread of its own: QUEUED, RUNNING, then FINISHED (or FAILED, TIMED_OUT, CANCELLED).
Injected faults (`QueryFaults`) keep queries RUNNING for a while, make them fail or time
out, or throttle the next requests, so that a client's handling of each can be tested.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from emulators.lake_sql import QueryError, Translation, parse, translate

DEFAULT_EVENT_DATA_STORE_ARN = (
    "arn:aws:cloudtrail:us-east-1:123456789012:eventdatastore/0f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
)
EVENT_DATA_STORE_ARN_PATTERN = re.compile(
    r"arn:aws[a-z-]*:cloudtrail:[a-z0-9-]+:\d{12}:eventdatastore/[A-Za-z0-9._-]{3,128}"
)
TARGET_PREFIXES = ("CloudTrail_20131101.", "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.")
MAX_CONCURRENT_QUERIES = 10  # CloudTrail Lake's quota of queries running at once
MAX_PAGE = 1000  # GetQueryResults' MaxQueryResults range is 1-1000
TERMINAL = {"FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"}


class ApiError(Exception):
    """An AWS error answer of the query API: type name, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class QueryFaults:
    """Injected query faults; change them with EventDataStoreService.set_faults() or
    POST /_emulator/query-faults."""

    running_seconds: float = 0.0  # how long each query stays RUNNING before it ends
    outcome: str | None = None  # FAILED or TIMED_OUT: how the next queries end instead of FINISHED
    throttle_requests: int = 0  # the next N query API requests answer ThrottlingException


@dataclass
class Query:
    query_id: str
    statement: str
    translation: Translation
    created: float
    status: str = "QUEUED"
    error: str | None = None
    rows: list[list[dict[str, str | None]]] | None = None
    events_scanned: int = 0
    bytes_scanned: int = 0
    events_matched: int = 0
    millis: int = 0


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class EventDataStoreService:
    """The event data store and its queries. `read(sql, params)` runs one read on the
    emulator's SQLite store; `handle(operation, payload)` answers one API request."""

    def __init__(self, arn: str, read: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> None:
        if not EVENT_DATA_STORE_ARN_PATTERN.fullmatch(arn):
            raise ValueError(
                f"bad event data store ARN {arn!r}: expected arn:aws:cloudtrail:REGION:ACCOUNT:eventdatastore/ID"
            )
        self.arn = arn
        self.store_id = arn.rsplit("/", 1)[1]
        self.created = time.time()
        self._read = read
        self._lock = threading.Lock()
        self._queries: dict[str, Query] = {}
        self._faults = QueryFaults()

    # ---- control ---------------------------------------------------------------------

    def set_faults(self, **changes: Any) -> QueryFaults:
        """Change QueryFaults fields by name; ValueError on a bad name or value (nothing changes then)."""
        with self._lock:
            current = asdict(self._faults)
            unknown = set(changes) - set(current)
            if unknown:
                raise ValueError(f"unknown query fault setting(s): {', '.join(sorted(unknown))}")
            new = QueryFaults(**{**current, **changes})
            new.running_seconds = float(new.running_seconds)
            new.throttle_requests = int(new.throttle_requests)
            if new.running_seconds < 0 or new.throttle_requests < 0:
                raise ValueError("running_seconds and throttle_requests must be >= 0")
            if new.outcome not in (None, "FAILED", "TIMED_OUT"):
                raise ValueError("outcome must be null, FAILED or TIMED_OUT")
            self._faults = new
            return QueryFaults(**asdict(new))

    def faults(self) -> QueryFaults:
        with self._lock:
            return QueryFaults(**asdict(self._faults))

    def describe(self) -> dict[str, Any]:
        """The store as GetEventDataStore and ListEventDataStores describe it."""
        return {
            "EventDataStoreArn": self.arn,
            "Name": "falcon-lake-emulator",
            "Status": "ENABLED",
            "AdvancedEventSelectors": [
                {
                    "Name": "Integration events",
                    "FieldSelectors": [{"Field": "eventCategory", "Equals": ["ActivityAuditLog"]}],
                }
            ],
            "MultiRegionEnabled": False,
            "OrganizationEnabled": False,
            "RetentionPeriod": 2557,
            "TerminationProtectionEnabled": True,
            "CreatedTimestamp": self.created,
            "UpdatedTimestamp": self.created,
            "BillingMode": "EXTENDABLE_RETENTION_PRICING",
        }

    # ---- the API ---------------------------------------------------------------------

    def handle(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The answer to one operation; ApiError for an AWS error answer."""
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ListEventDataStores": self._list_event_data_stores,
            "GetEventDataStore": self._get_event_data_store,
            "StartQuery": self._start_query,
            "DescribeQuery": self._describe_query,
            "GetQueryResults": self._get_query_results,
            "CancelQuery": self._cancel_query,
        }
        handler = handlers.get(operation)
        if handler is None:
            raise ApiError("UnknownOperationException", f"The emulator does not serve CloudTrail {operation}")
        with self._lock:
            if self._faults.throttle_requests > 0:
                self._faults.throttle_requests -= 1
                raise ApiError("ThrottlingException", "Rate exceeded")
        return handler(payload)

    def _check_store(self, name: Any, required: bool = False) -> None:
        if name is None and not required:
            return
        if not isinstance(name, str) or not name:
            raise ApiError("InvalidParameterException", "EventDataStore is required")
        if name.startswith("arn:") and not EVENT_DATA_STORE_ARN_PATTERN.fullmatch(name):
            raise ApiError("EventDataStoreARNInvalidException", f"The event data store ARN {name} is not valid.")
        if name not in (self.arn, self.store_id):
            raise ApiError("EventDataStoreNotFoundException", f"The event data store {name} was not found.")

    def _list_event_data_stores(self, payload: dict[str, Any]) -> dict[str, Any]:
        max_results = payload.get("MaxResults")
        if max_results is not None and not (isinstance(max_results, int) and 1 <= max_results <= 1000):
            raise ApiError("InvalidMaxResultsException", "MaxResults must be between 1 and 1000.")
        if payload.get("NextToken") is not None:
            raise ApiError("InvalidNextTokenException", "The NextToken is not valid.")
        description = self.describe()
        return {"EventDataStores": [{k: description[k] for k in _LISTED}]}

    def _get_event_data_store(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._check_store(payload.get("EventDataStore"), required=True)
        return self.describe()

    def _start_query(self, payload: dict[str, Any]) -> dict[str, Any]:
        statement = payload.get("QueryStatement")
        if payload.get("QueryAlias") is not None or payload.get("DeliveryS3Uri") is not None:
            raise ApiError("UnsupportedOperationException", "QueryAlias and DeliveryS3Uri are not emulated.")
        if not isinstance(statement, str) or not statement.strip():
            raise ApiError("InvalidParameterException", "QueryStatement is required.")
        try:
            parsed = parse(statement)
            if parsed.source not in (self.arn, self.store_id):
                raise ApiError(
                    "EventDataStoreNotFoundException", f"The event data store {parsed.source} was not found."
                )
            translation = translate(parsed)
        except QueryError as exc:
            raise ApiError(exc.code, exc.message) from exc
        query = Query(str(uuid.uuid4()), statement, translation, time.time())
        with self._lock:
            active = sum(1 for q in self._queries.values() if q.status not in TERMINAL)
            if active >= MAX_CONCURRENT_QUERIES:
                raise ApiError(
                    "MaxConcurrentQueriesException", f"You already have {active} queries running; the limit is 10."
                )
            self._queries[query.query_id] = query
            faults = QueryFaults(**asdict(self._faults))
        threading.Thread(
            target=self._run, args=(query, faults), name=f"lake-query-{query.query_id[:8]}", daemon=True
        ).start()
        return {"QueryId": query.query_id}

    def _run(self, query: Query, faults: QueryFaults) -> None:
        started = time.monotonic()
        with self._lock:
            if query.status != "QUEUED":
                return
            query.status = "RUNNING"
        translation = query.translation
        try:
            scanned = self._read(translation.scan_sql, translation.scan_params)[0]
            matched = self._read(translation.matched_sql, translation.matched_params)[0][0]
            rows = self._read(translation.sql, translation.params)
        except Exception as exc:  # a translation the store cannot run: say so, never a wrong answer
            with self._lock:
                if query.status == "RUNNING":
                    query.status, query.error = "FAILED", f"Query failed: {exc}"
            return
        deadline = started + faults.running_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if query.status != "RUNNING":
                    return
            time.sleep(0.02)
        columns = translation.columns
        result = [[{name: _cell(value)} for name, value in zip(columns, row, strict=True)] for row in rows]
        with self._lock:
            if query.status != "RUNNING":
                return
            query.events_scanned, query.bytes_scanned = int(scanned[0]), int(scanned[1])
            query.events_matched = int(matched)
            query.millis = int((time.monotonic() - started) * 1000)
            if faults.outcome == "FAILED":
                query.status, query.error = "FAILED", "Query failed: injected failure"
            elif faults.outcome == "TIMED_OUT":
                query.status, query.error = "TIMED_OUT", "Query timed out"
            else:
                query.status, query.rows = "FINISHED", result

    def _query(self, payload: dict[str, Any]) -> Query:
        self._check_store(payload.get("EventDataStore"))
        query_id = payload.get("QueryId")
        if not isinstance(query_id, str):
            raise ApiError("InvalidParameterException", "QueryId is required.")
        with self._lock:
            query = self._queries.get(query_id)
        if query is None:
            raise ApiError("QueryIdNotFoundException", f"The query ID {query_id} does not exist.")
        return query

    def _describe_query(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("QueryAlias") is not None:
            raise ApiError("UnsupportedOperationException", "QueryAlias is not emulated.")
        query = self._query(payload)
        with self._lock:
            answer: dict[str, Any] = {
                "QueryId": query.query_id,
                "QueryString": query.statement,
                "QueryStatus": query.status,
                "QueryStatistics": {
                    "EventsMatched": query.events_matched,
                    "EventsScanned": query.events_scanned,
                    "BytesScanned": query.bytes_scanned,
                    "ExecutionTimeInMillis": query.millis,
                    "CreationTime": query.created,
                },
            }
            if query.error:
                answer["ErrorMessage"] = query.error
        return answer

    def _get_query_results(self, payload: dict[str, Any]) -> dict[str, Any]:
        query = self._query(payload)
        page = payload.get("MaxQueryResults", MAX_PAGE)
        if not isinstance(page, int) or not 1 <= page <= MAX_PAGE:
            raise ApiError("InvalidMaxResultsException", "MaxQueryResults must be between 1 and 1000.")
        start = 0
        token = payload.get("NextToken")
        if token is not None:
            start = _read_token(token, query.query_id)
        with self._lock:
            status, rows, error = query.status, query.rows, query.error
            bytes_scanned = query.bytes_scanned
        answer: dict[str, Any] = {"QueryStatus": status}
        if status != "FINISHED" or rows is None:
            answer["QueryStatistics"] = {"ResultsCount": 0, "TotalResultsCount": 0, "BytesScanned": bytes_scanned}
            answer["QueryResultRows"] = []
            if error:
                answer["ErrorMessage"] = error
            return answer
        if start > len(rows):
            raise ApiError("InvalidNextTokenException", "The NextToken is not valid.")
        chunk = rows[start : start + page]
        answer["QueryResultRows"] = chunk
        answer["QueryStatistics"] = {
            "ResultsCount": len(chunk),
            "TotalResultsCount": len(rows),
            "BytesScanned": bytes_scanned,
        }
        if start + page < len(rows):
            answer["NextToken"] = _make_token(query.query_id, start + page)
        return answer

    def _cancel_query(self, payload: dict[str, Any]) -> dict[str, Any]:
        query = self._query(payload)
        with self._lock:
            if query.status in TERMINAL:
                raise ApiError(
                    "InactiveQueryException", f"The query {query.query_id} is {query.status} and cannot be cancelled."
                )
            query.status = "CANCELLED"
        return {"QueryId": query.query_id, "QueryStatus": "CANCELLED"}


_LISTED = (
    "EventDataStoreArn",
    "Name",
    "TerminationProtectionEnabled",
    "Status",
    "AdvancedEventSelectors",
    "MultiRegionEnabled",
    "OrganizationEnabled",
    "RetentionPeriod",
    "CreatedTimestamp",
    "UpdatedTimestamp",
)


def _make_token(query_id: str, position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([query_id, position]).encode()).decode()


def _read_token(token: Any, query_id: str) -> int:
    try:
        owner, position = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        if owner != query_id or not isinstance(position, int) or position < 0:
            raise ValueError
    except (ValueError, TypeError) as exc:
        raise ApiError("InvalidNextTokenException", "The NextToken is not valid.") from exc
    return position


def operation_of(target: str | None) -> str | None:
    """The operation an X-Amz-Target header names for the cloudtrail service, or None."""
    for prefix in TARGET_PREFIXES:
        if target and target.startswith(prefix):
            return target[len(prefix) :]
    return None
