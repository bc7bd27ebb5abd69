"""Run CloudTrail Lake SQL on an event data store through the query API (`cloudtrail` client).

`StartQuery`, then `DescribeQuery` until the query ends (with a progress line now and
then on long queries), then every page of `GetQueryResults` (`NextToken`). Works against
a real event data store or the emulator (`AWS_ENDPOINT_URL_CLOUDTRAIL`). Every failure an
operator can meet (no such store, no permission, throttled, a query that FAILED, TIMED_OUT
or was CANCELLED) becomes a `LakeQueryError` whose str() is one line saying what to do.

Needs only read permissions: cloudtrail:GetEventDataStore, StartQuery, DescribeQuery,
GetQueryResults (the optional audit policy in deploy/cloudformation/iam-policy.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from falcon_lake.aws import aws_client

PAGE_SIZE = 1000  # GetQueryResults' largest page
ACCESS_HINT = (
    "grant cloudtrail:GetEventDataStore, StartQuery, DescribeQuery and GetQueryResults on the event data store "
    "(the audit policy of deploy/cloudformation/iam-policy.yaml)"
)


class LakeQueryError(RuntimeError):
    """The query could not give an answer; str() is one line naming the cause and the cure."""


@dataclass
class LakeQueryResult:
    """Rows of a finished query (values in select order, None for SQL NULL) and its statistics."""

    query_id: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    bytes_scanned: int = 0
    events_scanned: int = 0
    events_matched: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class EventDataStore:
    arn: str
    id: str
    name: str
    status: str


def cloudtrail_client(region: str | None) -> Any:
    """A boto3 `cloudtrail` client; AWS_ENDPOINT_URL_CLOUDTRAIL points it at the emulator."""
    return aws_client("cloudtrail", region)


def region_of(arn_or_id: str) -> str | None:
    """The region an event data store ARN names, None for a bare id."""
    parts = arn_or_id.split(":")
    return parts[3] or None if arn_or_id.startswith("arn:") and len(parts) > 5 else None


def _error_text(exc: Exception, what: str, store: str) -> str:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        if code in ("EventDataStoreNotFoundException", "EventDataStoreARNInvalidException"):
            return (
                f"event data store {store} not found ({code}); pass the ARN or id that "
                "'aws cloudtrail list-event-data-stores' shows, in the store's region"
            )
        if code in ("AccessDeniedException", "UnauthorizedOperation", "OperationNotPermittedException"):
            return f"{what} on {store} was refused ({code}: {message}); {ACCESS_HINT}"
        if code in ("ThrottlingException", "TooManyRequestsException", "MaxConcurrentQueriesException"):
            return f"{what} was throttled by CloudTrail Lake ({code}) after the SDK's retries; wait a minute, run again"
        if code == "InvalidQueryStatementException":
            return f"CloudTrail Lake rejected the query: {message}"
        if code in ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"):
            return f"{what}: AWS credentials were rejected ({code}); check the profile, role or keys"
        return f"{what} failed: {code}: {message}"
    return f"{what} failed: {exc}"


def describe_event_data_store(client: Any, arn_or_id: str) -> EventDataStore:
    """The store (GetEventDataStore accepts its ARN or id); LakeQueryError when it is not there."""
    try:
        answer = client.get_event_data_store(EventDataStore=arn_or_id)
    except (ClientError, BotoCoreError) as exc:
        raise LakeQueryError(_error_text(exc, "GetEventDataStore", arn_or_id)) from None
    arn = str(answer["EventDataStoreArn"])
    return EventDataStore(arn, arn.rsplit("/", 1)[-1], str(answer.get("Name", "")), str(answer.get("Status", "")))


def run_query(
    client: Any,
    statement: str,
    store: str,
    *,
    poll_seconds: float = 1.0,
    progress_every: float = 10.0,
    progress: Callable[[str], None] | None = None,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> LakeQueryResult:
    """Run one statement to the end and read every page of its results.

    `progress` gets a line every `progress_every` seconds while the query runs. With
    `timeout` the query is cancelled after that many seconds. Raises LakeQueryError.
    """
    started = time.monotonic()
    try:
        query_id = str(client.start_query(QueryStatement=statement)["QueryId"])
    except (ClientError, BotoCoreError) as exc:
        raise LakeQueryError(_error_text(exc, "StartQuery", store)) from None
    result = LakeQueryResult(query_id)
    next_progress = started + progress_every
    polls = 0
    try:
        while True:
            described = client.describe_query(EventDataStore=store, QueryId=query_id)
            status = str(described.get("QueryStatus"))
            statistics = described.get("QueryStatistics") or {}
            if status == "FINISHED":
                result.bytes_scanned = int(statistics.get("BytesScanned", 0))
                result.events_scanned = int(statistics.get("EventsScanned", 0))
                result.events_matched = int(statistics.get("EventsMatched", 0))
                break
            if status in ("FAILED", "TIMED_OUT", "CANCELLED"):
                detail = str(described.get("ErrorMessage") or "").strip()
                cure = {
                    "FAILED": "check the statement and run again",
                    "TIMED_OUT": "narrow the time range (--start/--end) and run again",
                    "CANCELLED": "someone cancelled it; run again",
                }[status]
                raise LakeQueryError(
                    f"CloudTrail Lake query {query_id} {status}{': ' + detail if detail else ''}; {cure}"
                )
            now = time.monotonic()
            if timeout is not None and now - started > timeout:
                client.cancel_query(EventDataStore=store, QueryId=query_id)
                raise LakeQueryError(f"CloudTrail Lake query {query_id} {status} after {timeout:.0f} s; cancelled it")
            if progress is not None and now >= next_progress:
                scanned = int(statistics.get("BytesScanned", 0))
                progress(f"query {query_id} {status} for {now - started:.0f} s, {format_bytes(scanned)} scanned so far")
                next_progress = now + progress_every
            # Short queries answer in well under a second: poll fast at first, then every poll_seconds.
            sleep(min(poll_seconds, 0.1 * 2**polls))
            polls += 1
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"EventDataStore": store, "QueryId": query_id, "MaxQueryResults": PAGE_SIZE}
            if token:
                kwargs["NextToken"] = token
            page = client.get_query_results(**kwargs)
            for row in page.get("QueryResultRows") or []:
                if not result.columns:
                    result.columns = [next(iter(cell), "") for cell in row]
                result.rows.append([next(iter(cell.values()), None) for cell in row])
            token = page.get("NextToken")
            if not token:
                break
    except (ClientError, BotoCoreError) as exc:
        raise LakeQueryError(_error_text(exc, f"query {query_id}", store)) from None
    result.seconds = time.monotonic() - started
    return result


def format_bytes(count: int) -> str:
    """1.2 MB style (decimal units, as AWS bills)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def lake_time(moment: datetime) -> str:
    """A time as CloudTrail Lake SQL writes it: 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
