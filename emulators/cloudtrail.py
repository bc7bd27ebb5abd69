"""CloudTrail Lake `cloudtrail-data` emulator: PutAuditEvents over real HTTP, stored in SQLite.

Speaks the AWS rest-json protocol closely enough that an unmodified boto3
`cloudtrail-data` client (endpoint_url pointed here) works, enforces the limits of
REFERENCE.md §2 (per-event rules in `emulators.cloudtrail_validation`), and can inject
the faults the publisher must survive: request throttling beyond a TPS quota, latency,
per-event Throttling/InternalFailure, 5xx answers, forced whole-request errors,
channels that disappear and accounts that are not subscribed. Every channel delivers into
one event data store, which the same port serves through CloudTrail Lake's query API
(`cloudtrail` service, JSON 1.1: StartQuery, GetQueryResults, ...; see emulators.lake_query).

Library use (tests):

    emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0))
    emulator.start()            # background thread; emulator.url is then set
    ...                         # boto3.client("cloudtrail-data", endpoint_url=emulator.url, ...)
    emulator.stop()

Command line: `falcon-lake emulate cloudtrail --help`. Run-time control over HTTP under
`/_emulator/` (no authentication): `stats`, `channels`, `faults`, `query-faults`, `events`, `reset`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from emulators.cloudtrail_validation import (
    MAX_EVENTS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    AcceptedEventData,
    EventError,
    EventErrorCode,
    audit_event_id_problem,
    channel_account,
    parse_event_data,
)
from emulators.http_server import EmulatorHTTPServer
from emulators.lake_query import DEFAULT_EVENT_DATA_STORE_ARN, ApiError, EventDataStoreService, operation_of

log = logging.getLogger("emulators.cloudtrail")

DEFAULT_CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
DEFAULT_PORT = 8091
SIGNING_SERVICE = "cloudtrail-data"
QUERY_SIGNING_SERVICE = "cloudtrail"  # the query API (emulators.lake_query) is the `cloudtrail` service
DEFAULT_ACCESS_KEY = "testing"
DEFAULT_SECRET_KEY = "testing"
MAX_CLOCK_SKEW_S = 15 * 60  # AWS refuses a request dated more than 15 minutes from its clock
# arn:PARTITION:cloudtrail:REGION:ACCOUNT(12 digits):channel/ID
CHANNEL_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:cloudtrail:[a-z0-9-]+:\d{12}:channel/[A-Za-z0-9._/-]{1,256}")

# Whole-request errors: the AWS error type (what botocore reports as Error.Code) and
# its HTTP status. The six modeled exceptions of PutAuditEvents carry no status in
# the service model, so they answer 400 like any AWS client error.
REQUEST_ERROR_STATUS: dict[str, int] = {
    "ChannelInsufficientPermission": 400,
    "ChannelNotFound": 400,
    "ChannelUnsupportedSchema": 400,
    "DuplicatedAuditEventId": 400,
    "InvalidChannelARN": 400,
    "UnsupportedOperationException": 400,
    "ValidationException": 400,
    "SerializationException": 400,
    "AccessDeniedException": 403,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "InvalidSignatureException": 403,
    "UnrecognizedClientException": 403,
    "UnknownOperationException": 404,
    "ThrottlingException": 400,  # as in AWS's common errors (not 429)
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]+)\s*"
)


class LatencySpec:
    """Response latency in milliseconds, parsed from a spec string.

    `"50"` is a fixed 50 ms; `"20-80"` uniform between 20 and 80 ms;
    `"p50=40,p99=200"` a log-normal distribution with that median and 99th percentile.
    `"0"` (the default) adds nothing.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec.strip() or "0"
        self._fixed: float | None = None
        self._uniform: tuple[float, float] | None = None
        self._lognormal: tuple[float, float] | None = None
        text = self.spec.replace(" ", "")
        try:
            if text.startswith("p"):
                parts = dict(part.split("=", 1) for part in text.split(","))
                p50, p99 = float(parts["p50"]), float(parts["p99"])
                if set(parts) != {"p50", "p99"} or not 0 < p50 <= p99:
                    raise ValueError
                # z(0.99) = 2.326: sigma places p99 where asked around the median p50.
                self._lognormal = (math.log(p50), math.log(p99 / p50) / 2.3263478740408408)
            elif "-" in text:
                low, high = (float(part) for part in text.split("-", 1))
                if not 0 <= low <= high:
                    raise ValueError
                self._uniform = (low, high)
            else:
                self._fixed = float(text)
                if self._fixed < 0:
                    raise ValueError
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"bad latency spec {spec!r}: use milliseconds as '50', '20-80' or 'p50=40,p99=200'"
            ) from exc

    def sample_seconds(self, rng: random.Random) -> float:
        """One latency draw, in seconds."""
        if self._fixed is not None:
            return self._fixed / 1000.0
        if self._uniform is not None:
            return rng.uniform(*self._uniform) / 1000.0
        assert self._lognormal is not None
        return rng.lognormvariate(*self._lognormal) / 1000.0


@dataclass(frozen=True)
class ChannelConfig:
    """One channel the emulator serves; `external_id` set means requests must carry it."""

    arn: str
    external_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ChannelConfig:
        """`ARN` or `ARN=EXTERNALID`, as given to --channel; ValueError when the ARN is malformed."""
        arn, sep, external_id = text.partition("=")
        if not CHANNEL_ARN_PATTERN.fullmatch(arn):
            raise ValueError(f"bad channel ARN {arn!r}: expected arn:aws:cloudtrail:REGION:ACCOUNT:channel/ID")
        if sep and not external_id:
            raise ValueError(f"empty external id for channel {arn!r}")
        return cls(arn, external_id if sep else None)


@dataclass(frozen=True)
class CloudTrailEmulatorConfig:
    """Everything the emulator is started with; the fault fields can change at run time."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port
    channels: tuple[ChannelConfig, ...] = (ChannelConfig(DEFAULT_CHANNEL_ARN),)
    db_path: str = ":memory:"
    tps: float = 100.0  # PutAuditEvents requests per second over the whole server
    latency_ms: str = "0"  # LatencySpec
    throttle_rate: float = 0.0  # fraction of valid events answered Throttling
    internal_failure_rate: float = 0.0  # fraction of valid events answered InternalFailure
    error_rate: float = 0.0  # fraction of requests answered 500 InternalFailure / 503 ServiceUnavailable
    seed: int | None = None
    max_request_bytes: int = MAX_REQUEST_BYTES
    allow_unknown_fields: bool = False
    # SigV4 must name this access key (else UnrecognizedClientException) and be signed with this secret
    # (else InvalidSignatureException): by default the documented local test credentials testing/testing
    # (moto's docs, README). None: any access key / no signature check.
    access_key: str | None = DEFAULT_ACCESS_KEY
    secret_key: str | None = DEFAULT_SECRET_KEY
    # The region credentials must be scoped to (None: the region of the first channel).
    region: str | None = None
    # Take any well-formed SigV4 header: no key, signature, clock or region check.
    accept_any_signature: bool = False
    # The event data store every channel delivers into, served by the query API.
    event_data_store_arn: str = DEFAULT_EVENT_DATA_STORE_ARN


@dataclass
class Faults:
    """The fault settings in force; change them with CloudTrailEmulator.set_faults()."""

    tps: float = 100.0
    latency_ms: str = "0"
    throttle_rate: float = 0.0
    internal_failure_rate: float = 0.0
    error_rate: float = 0.0
    # Any REQUEST_ERROR_STATUS name: every PutAuditEvents that gets past the channel
    # checks answers it (e.g. ChannelUnsupportedSchema, AccessDeniedException).
    force_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form served at GET /_emulator/faults."""
        return {
            "tps": self.tps,
            "latency_ms": self.latency_ms,
            "throttle_rate": self.throttle_rate,
            "internal_failure_rate": self.internal_failure_rate,
            "error_rate": self.error_rate,
            "force_error": self.force_error,
        }


@dataclass
class ChannelState:
    """A channel as it is now: removed channels answer ChannelNotFound, unsubscribed
    ones fail every event with AccountNotSubscribed."""

    arn: str
    external_id: str | None = None
    present: bool = True
    subscribed: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The JSON form served at /_emulator/channels."""
        return {
            "arn": self.arn,
            "present": self.present,
            "external_id": self.external_id,
            "subscribed": self.subscribed,
        }


@dataclass(frozen=True)
class StoredEvent:
    """One accepted audit event as stored in the emulator's lake."""

    event_id: str  # the eventID the emulator assigned (uuid4)
    id: str  # the caller's id
    channel_arn: str
    event_data: dict[str, Any]
    received_at: str  # UTC ISO 8601 with milliseconds


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, body and AWS error type (None on success)."""

    status: int
    body: bytes
    error_type: str | None = None


class RequestError(Exception):
    """A whole-request AWS error: type name (REQUEST_ERROR_STATUS key) and message."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class TokenBucket:
    """Requests-per-second quota: capacity `rate` tokens (one second of burst), refilled continuously."""

    def __init__(self, rate: float) -> None:
        self._lock = threading.Lock()
        self.reset(rate)

    def reset(self, rate: float) -> None:
        """Change the rate; the bucket starts full."""
        with self._lock:
            self._rate = rate
            self._capacity = max(rate, 1.0)
            self._tokens = self._capacity
            self._stamp = time.monotonic()

    def try_take(self) -> bool:
        """Take one token if there is one."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class EmulatorStats:
    """Counters served at GET /_emulator/stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._requests = 0
            self._events_received = 0
            self._events_accepted = 0
            self._failed_by_code: Counter[str] = Counter()
            self._requests_by_error: Counter[str] = Counter()

    def count_request(self) -> None:
        """One PutAuditEvents request arrived."""
        with self._lock:
            self._requests += 1

    def count_error(self, error_type: str) -> None:
        """One request was answered with a whole-request error."""
        with self._lock:
            self._requests_by_error[error_type] += 1

    def count_events(self, received: int, accepted: int, failed_codes: Iterable[str]) -> None:
        """The per-event outcome of one request that reached validation."""
        with self._lock:
            self._events_received += received
            self._events_accepted += accepted
            self._failed_by_code.update(failed_codes)

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        with self._lock:
            return {
                "requests": self._requests,
                "requests_ok": self._requests - sum(self._requests_by_error.values()),
                "requests_throttled": self._requests_by_error["ThrottlingException"],
                "requests_by_error": dict(self._requests_by_error),
                "events_received": self._events_received,
                "events_accepted": self._events_accepted,
                "events_failed": sum(self._failed_by_code.values()),
                "events_failed_by_code": dict(self._failed_by_code),
            }


class AuditEventStore:
    """The `audit_events` table: one connection, one writer lock, one transaction per request.

    Columns: event_id (the eventID CloudTrail assigned), id (the caller's), channel_arn,
    event_data (the eventData JSON text), received_at (UTC ISO 8601), and since schema
    version 1 what CloudTrail adds after ingestion: event_time (the event's own time,
    eventData.eventTime, as `YYYY-MM-DD HH:MM:SS.mmm`)
    and envelope (JSON: eventVersion, eventCategory, eventType, awsRegion,
    recipientAccountId, metadata.ingestionTime/channelARN). Older files are migrated
    in place on open; readers of the first five columns are unaffected.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS audit_events("
        "event_id TEXT PRIMARY KEY, id TEXT, channel_arn TEXT, event_data TEXT, received_at TEXT, "
        "event_time TEXT, envelope TEXT)"
    )
    VERSION = 1
    PAGE_SIZE = 16384

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Takes effect only on a new file (an existing one keeps its page size). 16 KiB pages write
        # a request's rows in a quarter of the WAL frames, and each frame costs two system calls.
        self._db.execute(f"PRAGMA page_size={self.PAGE_SIZE}")
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            # In WAL, NORMAL loses at most the last commits on power loss, never integrity.
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(self.SCHEMA)
        # No index on event_time: it would double the cost of every insert, and the query API's
        # scans of an emulator-sized table are fast without one.
        self._migrate()

    def _migrate(self) -> None:
        """Bring a file written by an older emulator to VERSION: add and fill event_time and envelope."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(audit_events)")}
        if "event_time" not in columns:
            self._db.execute("ALTER TABLE audit_events ADD COLUMN event_time TEXT")
        if "envelope" not in columns:
            self._db.execute("ALTER TABLE audit_events ADD COLUMN envelope TEXT")
        rows = self._db.execute(
            "SELECT rowid, channel_arn, received_at FROM audit_events WHERE envelope IS NULL"
        ).fetchall()
        if rows:
            self._db.execute("BEGIN")
            for rowid, channel_arn, received_at in rows:
                self._db.execute(
                    f"UPDATE audit_events SET event_time = {_event_time_sql('event_data')}, envelope = ? "
                    "WHERE rowid = ?",
                    (ingestion_envelope(channel_arn, received_at), rowid),
                )
            self._db.execute("COMMIT")
        self._db.execute(f"PRAGMA user_version = {self.VERSION}")

    def insert(self, rows: Sequence[tuple[str, str, str, str, str, str | None, str]]) -> None:
        """Store (event_id, id, channel_arn, event_data, received_at, event_time, envelope) rows
        atomically. An event_time of None is derived from eventData.eventTime by SQLite, as
        `_migrate` does; `stored_event_time()` gives the same value without SQLite's JSON parse."""
        if not rows:
            return
        # One multi-row INSERT is one implicit transaction and one sqlite3_step: the GIL
        # is released once per request, not once per row as executemany does, which
        # matters with many handler threads. coalesce() evaluates its second argument only
        # when the first is NULL, and eventData is bound there only then.
        sql = (
            "INSERT INTO audit_events(event_id, id, channel_arn, event_data, received_at, event_time, envelope) "
            "VALUES " + ",".join([f"(?,?,?,?,?,coalesce(?,{_event_time_sql('?')}),?)"] * len(rows))
        )
        params = [value for row in rows for value in (*row[:6], row[3] if row[5] is None else None, row[6])]
        with self._lock:
            self._db.execute(sql, params)

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (the query API's translated SQL)."""
        with self._lock:
            return self._db.execute(sql, list(params)).fetchall()

    def events(self, channel_arn: str | None = None, limit: int | None = None) -> list[StoredEvent]:
        """Stored events in arrival order, optionally of one channel and at most `limit`."""
        sql = "SELECT event_id, id, channel_arn, event_data, received_at FROM audit_events"
        params: list[Any] = []
        if channel_arn is not None:
            sql += " WHERE channel_arn = ?"
            params.append(channel_arn)
        sql += " ORDER BY rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [StoredEvent(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows]

    def count(self) -> int:
        """Number of stored events."""
        with self._lock:
            value: int = self._db.execute("SELECT count(*) FROM audit_events").fetchone()[0]
        return value

    def clear(self) -> None:
        """Delete every stored event."""
        with self._lock:
            self._db.execute("DELETE FROM audit_events")

    def close(self) -> None:
        """Close the connection (a WAL file database is checkpointed)."""
        with self._lock:
            self._db.close()


def _event_time_sql(operand: str) -> str:
    """SQL for the stored event_time of an eventData JSON text (`operand`: a column or `?`)."""
    return f"strftime('%Y-%m-%d %H:%M:%f', json_extract({operand}, '$.eventTime'))"


def stored_event_time(event_data: str, accepted: AcceptedEventData) -> str | None:
    """The event_time column of an accepted event, exactly as `_event_time_sql` computes it from
    the eventData text, or None where only SQLite can tell (AuditEventStore.insert then asks it).

    The validator accepted eventTime as `YYYY-MM-DDTHH:MM:SSZ`, which SQLite stores as
    `YYYY-MM-DD HH:MM:SS.000`, unless: the text has NaN or Infinity (json_extract refuses it,
    and the INSERT fails); the digits are not ASCII (the validator takes any script's, SQLite's
    dates do not: NULL); the text has a backslash (json_extract matches keys as written, json.loads
    unescapes them); "eventTime" occurs twice (json_extract takes the first key, json.loads the
    last). Without a backslash every quote delimits a string, so one '"eventTime"' is the key.
    """
    event_time: str = accepted.data["eventTime"]
    if (
        not accepted.strict_json
        or not event_time.isascii()
        or "\\" in event_data
        or event_data.count('"eventTime"') != 1
    ):
        return None
    return f"{event_time[:10]} {event_time[11:19]}.000"


def ingestion_envelope(channel_arn: str, received_at: str) -> str:
    """The JSON of what CloudTrail adds around eventData after ingestion (eventID and
    eventTime live in their own columns)."""
    parts = channel_arn.split(":")
    region, account = (parts[3], parts[4]) if len(parts) > 5 else ("", "")
    return json.dumps(
        {
            "eventVersion": "1.0",
            "eventCategory": "ActivityAuditLog",
            "eventType": "ActivityLog",
            "awsRegion": region,
            "recipientAccountId": account,
            "metadata": {
                "ingestionTime": received_at.replace("T", " ").removesuffix("Z"),
                "channelARN": channel_arn,
            },
        },
        separators=(",", ":"),
    )


class CloudTrailEmulator:
    """The PutAuditEvents service: HTTP server, channels, faults, stats and storage.

    `start()` serves in a background thread; `url` is valid after it. Methods are
    thread-safe and may be called while requests are being served.
    """

    def __init__(self, config: CloudTrailEmulatorConfig | None = None) -> None:
        self.config = config or CloudTrailEmulatorConfig()
        self._lock = threading.Lock()
        self._channels = {c.arn: ChannelState(c.arn, c.external_id) for c in self.config.channels}
        self._faults = Faults()
        self._latency = LatencySpec("0")
        self._bucket = TokenBucket(self.config.tps)
        self._rng = random.Random(self.config.seed)
        self._event_ids = EventIdSource()
        self.set_faults(
            tps=self.config.tps,
            latency_ms=self.config.latency_ms,
            throttle_rate=self.config.throttle_rate,
            internal_failure_rate=self.config.internal_failure_rate,
            error_rate=self.config.error_rate,
        )
        self._stats = EmulatorStats()
        self.store = AuditEventStore(self.config.db_path)
        self.lake = EventDataStoreService(self.config.event_data_store_arn, self.store.read)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def bind(self) -> None:
        """Open the listening socket (port 0 picks a free one); OSError when it cannot."""
        if self._server is None:
            self._server = _Server(self.config.host, self.config.port, self)

    def start(self) -> CloudTrailEmulator:
        """Bind and serve in a daemon thread; returns self so `CloudTrailEmulator(c).start()` reads well."""
        self.bind()
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="cloudtrail-emulator"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and close the database. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            if self._thread is not None:
                server.shutdown()
                self._thread.join(timeout=5)
            server.close_connections()
            server.server_close()
            self.store.close()

    def __enter__(self) -> CloudTrailEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """Base URL for boto3's endpoint_url, e.g. http://127.0.0.1:8091."""
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    # ---- run-time control ------------------------------------------------------

    def set_channel_present(self, arn: str, present: bool) -> None:
        """Make a channel disappear (ChannelNotFound) or (re)appear; an unknown ARN is created."""
        self.set_channel(arn, present=present)

    def set_channel(
        self,
        arn: str,
        *,
        present: bool | None = None,
        subscribed: bool | None = None,
        external_id: str | None = None,
        clear_external_id: bool = False,
    ) -> ChannelState:
        """Create or change a channel; arguments left None keep their value. Returns the new state."""
        if not CHANNEL_ARN_PATTERN.fullmatch(arn):
            raise ValueError(f"bad channel ARN {arn!r}")
        with self._lock:
            state = self._channels.setdefault(arn, ChannelState(arn))
            if present is not None:
                state.present = present
            if subscribed is not None:
                state.subscribed = subscribed
            if clear_external_id:
                state.external_id = None
            elif external_id is not None:
                state.external_id = external_id
            return ChannelState(state.arn, state.external_id, state.present, state.subscribed)

    def channels(self) -> list[ChannelState]:
        """A copy of every channel's state."""
        with self._lock:
            return [ChannelState(c.arn, c.external_id, c.present, c.subscribed) for c in self._channels.values()]

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault settings by Faults field name (tps, latency_ms, throttle_rate,
        internal_failure_rate, error_rate, force_error); ValueError on a bad name or
        value, and then nothing changes. Returns the settings now in force."""
        with self._lock:
            current = self._faults.as_dict()
            unknown = set(changes) - set(current)
            if unknown:
                raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
            new = Faults(**{**current, **changes})
            try:
                new.tps = float(new.tps)
                if not new.tps > 0:
                    raise ValueError("tps must be > 0")
                for name in ("throttle_rate", "internal_failure_rate", "error_rate"):
                    value = float(getattr(new, name))
                    if not 0.0 <= value <= 1.0:
                        raise ValueError(f"{name} must be between 0 and 1")
                    setattr(new, name, value)
                new.latency_ms = str(new.latency_ms)
                latency = LatencySpec(new.latency_ms)
            except TypeError as exc:
                raise ValueError(str(exc)) from exc
            if new.force_error is not None and new.force_error not in REQUEST_ERROR_STATUS:
                raise ValueError(f"force_error must be null or one of: {', '.join(sorted(REQUEST_ERROR_STATUS))}")
            if new.tps != self._faults.tps:
                self._bucket.reset(new.tps)
            self._faults, self._latency = new, latency
            return Faults(**new.as_dict())

    def faults(self) -> Faults:
        """A copy of the fault settings in force."""
        with self._lock:
            return Faults(**self._faults.as_dict())

    def stats(self) -> dict[str, Any]:
        """Counters: requests, requests_ok, requests_throttled, requests_by_error {type: n},
        events_received, events_accepted, events_failed, events_failed_by_code {code: n}."""
        return self._stats.snapshot()

    def events(self, channel_arn: str | None = None) -> list[StoredEvent]:
        """Every stored event, in arrival order (optionally of one channel)."""
        return self.store.events(channel_arn)

    def reset(self) -> None:
        """Forget stored events and zero the counters (channels and faults stay)."""
        self.store.clear()
        self._stats.clear()

    # ---- the API -----------------------------------------------------------------

    def latency_seconds(self) -> float:
        """The delay to add before answering one PutAuditEvents request."""
        with self._lock:
            latency = self._latency
        return latency.sample_seconds(self._rng)

    def put_audit_events(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None, body_length: int
    ) -> Response:
        """Answer one PutAuditEvents HTTP request (`body` None when it was too large to keep)."""
        self._stats.count_request()
        try:
            result = self._put_audit_events(method, target, headers, body, body_length)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("PutAuditEvents failed unexpectedly")
                exc = RequestError("InternalFailure", f"Unexpected emulator error: {exc}")
            self._stats.count_error(exc.error_type)
            log.info("PutAuditEvents -> %s: %s", exc.error_type, exc.message)
            return Response(
                REQUEST_ERROR_STATUS[exc.error_type],
                json.dumps({"__type": exc.error_type, "message": exc.message}).encode(),
                exc.error_type,
            )
        return Response(200, put_audit_events_answer(result))

    def _put_audit_events(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None, body_length: int
    ) -> dict[str, list[dict[str, str]]]:
        self._authenticate(method, target, headers, body)
        with self._lock:
            faults = self._faults
        if not self._bucket.try_take():
            raise RequestError("ThrottlingException", "Rate exceeded")
        if faults.error_rate and self._rng.random() < faults.error_rate:
            if self._rng.random() < 0.5:
                raise RequestError("InternalFailure", "Injected internal failure")
            raise RequestError("ServiceUnavailable", "Injected service unavailable")
        if body is None or body_length > self.config.max_request_bytes:
            raise RequestError(
                "ValidationException",
                f"Request body of {body_length} bytes exceeds the limit of {self.config.max_request_bytes} bytes",
            )
        query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
        events = _parse_request_body(body)
        channel_arn = query.get("channelArn")
        if not channel_arn:
            raise RequestError(
                "ValidationException",
                "1 validation error detected: Value null at 'channelArn' failed to satisfy constraint: "
                "Member must not be null",
            )
        channel = self._check_channel(channel_arn, query.get("externalId"))
        if faults.force_error is not None:
            raise RequestError(faults.force_error, f"Injected {faults.force_error}")
        seen: set[str] = set()
        for entry in events:
            if entry["id"] in seen:
                raise RequestError("DuplicatedAuditEventId", f"Duplicated audit event id: {entry['id']}")
            seen.add(entry["id"])
        return self._ingest(channel, events, faults)

    def _authenticate(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        service: str = SIGNING_SERVICE,
        now: float | None = None,
    ) -> None:
        """Check a request's SigV4 Authorization as AWS does, for the signing `service` of its operation
        (`cloudtrail-data` for PutAuditEvents, `cloudtrail` for the Lake query API); RequestError if refused."""
        authorization = headers.get("authorization")
        if not authorization:
            raise RequestError("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTHORIZATION.fullmatch(authorization.strip())
        if match is None:
            raise RequestError(
                "IncompleteSignatureException",
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' (AWS4-HMAC-SHA256)",
            )
        scope = match["credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise RequestError("IncompleteSignatureException", f"Malformed credential scope: {match['credential']}")
        access_key, scope_date, region, scoped_service, _ = scope
        if scoped_service != service:
            raise RequestError(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{service}'.",
            )
        amz_date = headers.get("x-amz-date")
        if not amz_date:
            raise RequestError("IncompleteSignatureException", "Missing X-Amz-Date header")
        if self.config.accept_any_signature:
            return
        expected_region = self.config.region or _arn_region(self.config.channels[0].arn)
        if region != expected_region:
            raise RequestError(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region}'. This endpoint serves "
                f"'{expected_region}'.",
            )
        _check_request_time(amz_date, scope_date, time.time() if now is None else now)
        if self.config.access_key is not None and access_key != self.config.access_key:
            raise RequestError("UnrecognizedClientException", "The security token included in the request is invalid.")
        if self.config.secret_key is not None and body is not None:
            expected = _sigv4_signature(self.config.secret_key, method, target, headers, body, match, amz_date)
            if not hmac.compare_digest(expected, match["signature"]):
                raise RequestError(
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided. "
                    "Check your AWS Secret Access Key and signing method.",
                )

    def cloudtrail_api(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> Response:
        """Answer one request of the `cloudtrail` query API (JSON 1.1, X-Amz-Target), authenticated
        as PutAuditEvents is but scoped to the `cloudtrail` signing name."""
        operation = operation_of(headers.get("x-amz-target")) or "?"
        try:
            self._authenticate(method, target, headers, body, service=QUERY_SIGNING_SERVICE)
            try:
                payload = json.loads(body or b"{}")
            except ValueError as exc:
                raise RequestError("SerializationException", f"The request body is not valid JSON: {exc}") from exc
            if not isinstance(payload, dict):
                raise RequestError("SerializationException", "The request body must be a JSON object")
            result = self.lake.handle(operation, payload)
        except RequestError as exc:
            status, code, message = REQUEST_ERROR_STATUS[exc.error_type], exc.error_type, exc.message
        except ApiError as exc:
            status, code, message = exc.status, exc.code, exc.message
        else:
            return Response(200, json.dumps(result, separators=(",", ":")).encode())
        log.info("%s -> %s: %s", operation, code, message)
        return Response(status, json.dumps({"__type": code, "message": message}).encode(), code)

    def _check_channel(self, channel_arn: str, external_id: str | None) -> ChannelState:
        if not CHANNEL_ARN_PATTERN.fullmatch(channel_arn):
            raise RequestError("InvalidChannelARN", f"The channel ARN {channel_arn!r} is not valid.")
        with self._lock:
            state = self._channels.get(channel_arn)
            channel = None if state is None else ChannelState(**state.as_dict())
        if channel is None or not channel.present:
            raise RequestError("ChannelNotFound", f"Channel {channel_arn} was not found.")
        if channel.external_id is not None and external_id != channel.external_id:
            raise RequestError(
                "ChannelInsufficientPermission",
                f"The externalId is {'wrong' if external_id else 'missing'} for channel {channel_arn}.",
            )
        return channel

    def _ingest(
        self, channel: ChannelState, events: list[dict[str, str]], faults: Faults
    ) -> dict[str, list[dict[str, str]]]:
        account = channel_account(channel.arn)
        successful: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []
        rows: list[tuple[str, str, str, str, str, str | None, str]] = []
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        envelope = ingestion_envelope(channel.arn, received_at)
        rng = self._rng
        allow_unknown = self.config.allow_unknown_fields
        new_ids = self._event_ids.take(len(events))
        for entry, new_id in zip(events, new_ids, strict=True):
            event_id, event_data = entry["id"], entry["eventData"]
            if not channel.subscribed:
                failed.append(_failure(event_id, EventErrorCode.ACCOUNT_NOT_SUBSCRIBED, "Account is not subscribed"))
                continue
            accepted = parse_event_data(
                event_data, account, entry.get("eventDataChecksum"), allow_unknown_fields=allow_unknown
            )
            if isinstance(accepted, EventError):
                failed.append(_failure(event_id, accepted.code, accepted.message))
            elif faults.throttle_rate and rng.random() < faults.throttle_rate:
                failed.append(_failure(event_id, EventErrorCode.THROTTLING, "Injected throttling"))
            elif faults.internal_failure_rate and rng.random() < faults.internal_failure_rate:
                failed.append(_failure(event_id, EventErrorCode.INTERNAL_FAILURE, "Injected internal failure"))
            else:
                event_time = stored_event_time(event_data, accepted)
                rows.append((new_id, event_id, channel.arn, event_data, received_at, event_time, envelope))
                successful.append({"id": event_id, "eventID": new_id})
        try:
            self.store.insert(rows)
        except sqlite3.Error as exc:
            log.error("storing %d events failed: %s", len(rows), exc)
            raise RequestError("InternalFailure", "The events could not be stored") from exc
        self._stats.count_events(len(events), len(successful), (f["errorCode"] for f in failed))
        return {"successful": successful, "failed": failed}

    # ---- /_emulator control endpoints ----------------------------------------------

    def control(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """Answer a /_emulator/... request: (HTTP status, JSON-ready body)."""
        parts = urlsplit(target)
        name = parts.path.removeprefix("/_emulator/").strip("/")
        try:
            payload = json.loads(body) if body.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
            if name == "health" and method == "GET":
                return 200, {"status": "ok"}
            if name == "stats" and method == "GET":
                return 200, self.stats()
            if name == "faults" and method == "GET":
                return 200, self.faults().as_dict()
            if name == "faults" and method == "POST":
                return 200, self.set_faults(**payload).as_dict()
            if name == "channels" and method == "GET":
                return 200, {"channels": [c.as_dict() for c in self.channels()]}
            if name == "channels" and method == "POST":
                return 200, self._control_channel(payload)
            if name == "events" and method == "GET":
                return 200, self._control_events(dict(parse_qsl(parts.query)))
            if name == "query-faults" and method == "GET":
                return 200, asdict(self.lake.faults())
            if name == "query-faults" and method == "POST":
                return 200, asdict(self.lake.set_faults(**payload))
            if name == "reset" and method == "POST":
                self.reset()
                return 200, {"status": "reset"}
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": f"no such emulator endpoint: {method} {parts.path}"}

    def _control_channel(self, payload: dict[str, Any]) -> dict[str, Any]:
        arn = payload.get("arn")
        if not isinstance(arn, str):
            raise ValueError("'arn' (string) is required")
        unknown = set(payload) - {"arn", "present", "subscribed", "external_id"}
        if unknown:
            raise ValueError(f"unknown channel setting(s): {', '.join(sorted(unknown))}")
        for key in ("present", "subscribed"):
            if key in payload and not isinstance(payload[key], bool):
                raise ValueError(f"'{key}' must be true or false")
        external_id = payload.get("external_id")
        if external_id is not None and not isinstance(external_id, str):
            raise ValueError("'external_id' must be a string or null")
        state = self.set_channel(
            arn,
            present=payload.get("present"),
            subscribed=payload.get("subscribed"),
            external_id=external_id,
            clear_external_id="external_id" in payload and external_id is None,
        )
        return state.as_dict()

    def _control_events(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query["limit"]) if "limit" in query else None
        events = self.store.events(query.get("channelArn"), limit)
        return {
            "count": self.store.count(),
            "events": [
                {
                    "eventID": e.event_id,
                    "id": e.id,
                    "channelArn": e.channel_arn,
                    "eventData": e.event_data,
                    "receivedAt": e.received_at,
                }
                for e in events
            ],
        }


class EventIdSource:
    """Fresh eventIDs: version-4 UUID strings whose first 48 bits count up from the start
    time in microseconds and whose other 74 bits are random.

    Increasing ids append to the primary-key index of audit_events; fully random ones
    make every insert slower as the table grows (a third of the request time at 100k rows).
    """

    _MASK = (1 << 48) - 1
    # The variant digit (RFC 4122: 8, 9, a or b) keeps the low two bits of a random hex digit.
    _VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

    def __init__(self) -> None:
        self._counter = itertools.count(time.time_ns() // 1000 & self._MASK)

    def take(self, count: int) -> list[str]:
        """`count` new ids; one os.urandom call (it releases the GIL, which costs dearly
        once per event with many handler threads)."""
        pool = os.urandom(10 * count).hex()
        ids = []
        for start in range(0, 20 * count, 20):
            # 12 counter digits, then 20 random ones whose first gives way to the version, '4'.
            t = f"{next(self._counter) & self._MASK:012x}"
            r = pool[start : start + 20]
            ids.append(f"{t[:8]}-{t[8:]}-4{r[1:4]}-{self._VARIANT[r[4]]}{r[5:8]}-{r[8:]}")
        return ids


def _failure(event_id: str, code: str, message: str) -> dict[str, str]:
    return {"id": event_id, "errorCode": str(code), "errorMessage": message}


def put_audit_events_answer(result: Mapping[str, list[dict[str, str]]]) -> bytes:
    """The body of a PutAuditEvents answer: exactly `json.dumps(result, separators=(",", ":"))`.

    Successful entries are written directly, which costs a sixth of json.dumps: their ids passed
    the id pattern ([-_A-Za-z0-9]) and their eventIDs are UUIDs, so nothing in them needs escaping.
    """
    successful = ",".join([f'{{"id":"{s["id"]}","eventID":"{s["eventID"]}"}}' for s in result["successful"]])
    failed = json.dumps(result["failed"], separators=(",", ":"))
    return f'{{"successful":[{successful}],"failed":{failed}}}'.encode()


def _parse_request_body(body: bytes) -> list[dict[str, str]]:
    """The auditEvents of a request body, checked against the service model's constraints."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise RequestError("SerializationException", f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError("SerializationException", "The request body must be a JSON object")
    events = payload.get("auditEvents")
    if not isinstance(events, list):
        raise RequestError(
            "ValidationException",
            "1 validation error detected: Value null at 'auditEvents' failed to satisfy constraint: "
            "Member must not be null",
        )
    if not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        raise RequestError(
            "ValidationException",
            f"1 validation error detected: Value with {len(events)} elements at 'auditEvents' failed to "
            f"satisfy constraint: Member must have length between 1 and {MAX_EVENTS_PER_REQUEST}",
        )
    for index, entry in enumerate(events, start=1):
        where = f"'auditEvents.{index}.member"
        if not isinstance(entry, dict):
            raise RequestError("SerializationException", f"{where}' must be a JSON object")
        problem = audit_event_id_problem(entry.get("id"))
        if problem:
            raise RequestError(
                "ValidationException",
                f"1 validation error detected: Value {str(entry.get('id'))[:160]!r} at {where}.id' failed to "
                f"satisfy constraint: Member {problem}",
            )
        if not isinstance(entry.get("eventData"), str):
            raise RequestError(
                "ValidationException",
                f"1 validation error detected: Value at {where}.eventData' failed to satisfy constraint: "
                "Member must be a string and not null",
            )
        checksum = entry.get("eventDataChecksum")
        if checksum is not None and not isinstance(checksum, str):
            raise RequestError("SerializationException", f"{where}.eventDataChecksum' must be a string")
    return events


def _arn_region(arn: str) -> str:
    """The region field of an ARN (arn:partition:service:REGION:account:resource)."""
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""


def _check_request_time(amz_date: str, scope_date: str, now: float) -> None:
    """Refuse an X-Amz-Date more than 15 minutes from `now`, or one the credential scope's date contradicts."""
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RequestError(
            "IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ) from None
    if scope_date != amz_date[:8]:
        raise RequestError(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )

    def stamp(moment: float) -> str:
        return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y%m%dT%H%M%SZ")

    if signed_at < now - MAX_CLOCK_SKEW_S:
        raise RequestError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {stamp(now - MAX_CLOCK_SKEW_S)} "
            f"({stamp(now)} - 15 min.)",
        )
    if signed_at > now + MAX_CLOCK_SKEW_S:
        raise RequestError(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than {stamp(now + MAX_CLOCK_SKEW_S)} "
            f"({stamp(now)} + 15 min.)",
        )


def _sigv4_signature(
    secret_key: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    authorization: re.Match[str],
    amz_date: str,
) -> str:
    """The SigV4 signature the request should carry, computed as botocore does."""
    _, date, region, service, terminator = authorization["credential"].split("/")
    parts = urlsplit(target)
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, _, value = pair.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    signed = authorization["signed"].split(";")
    canonical_headers = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        (
            method,
            quote(parts.path or "/", safe="/~"),
            canonical_query,
            canonical_headers,
            ";".join(signed),
            payload_hash,
        )
    )
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class _Server(EmulatorHTTPServer):
    allow_reuse_address = True

    def __init__(self, host: str, port: int, emulator: CloudTrailEmulator) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down kept-alive connections so their handler threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    server_version = "CloudTrailEmulator"
    disable_nagle_algorithm = True
    timeout = 120  # an idle kept-alive connection is closed after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        limit = emulator.config.max_request_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, b'{"message":"Content-Length is required"}')
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send(HTTPStatus.BAD_REQUEST, b'{"message":"Bad Content-Length"}')
            return
        body = self._read_body(length, limit)
        path = urlsplit(self.path).path
        if path.startswith("/_emulator/"):
            status, answer = emulator.control(self.command, self.path, body or b"")
            self._send(status, json.dumps(answer).encode())
            return
        if path == "/" and self.command == "POST" and operation_of(self.headers.get("X-Amz-Target")):
            headers = {key.lower(): value for key, value in self.headers.items()}
            response = emulator.cloudtrail_api(self.command, self.path, headers, body)
        elif path.rstrip("/") == "/PutAuditEvents" and self.command == "POST":
            headers = {key.lower(): value for key, value in self.headers.items()}
            response = emulator.put_audit_events(self.command, self.path, headers, body, length)
            delay = emulator.latency_seconds()
            if delay > 0:
                time.sleep(delay)
        else:
            message = (
                f"No operation at {self.command} {path}; this emulator serves POST /PutAuditEvents "
                "and the CloudTrail Lake query API (POST / with X-Amz-Target)"
            )
            response = Response(
                404,
                json.dumps({"__type": "UnknownOperationException", "message": message}).encode(),
                "UnknownOperationException",
            )
        self._send(response.status, response.body, response.error_type)

    def _read_body(self, length: int, limit: int) -> bytes | None:
        """The body, or None after discarding one larger than the limit (the connection stays usable)."""
        if length <= limit:
            return self.rfile.read(length) if length else b""
        if length > 64 * limit:
            self.close_connection = True
            return None
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        return None

    def _send(self, status: int, body: bytes, error_type: str | None = None) -> None:
        # One write for head and body: two small writes meet Nagle and delayed ACKs.
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"x-amzn-RequestId: {uuid.uuid4()}",
        ]
        if error_type is not None:
            head.append(f"X-Amzn-ErrorType: {error_type}")
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.log_request(status, len(body))


# ---- command line ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falcon-lake emulate cloudtrail",
        description=(
            "Run the CloudTrail Lake cloudtrail-data emulator (PutAuditEvents, AWS rest-json, SigV4 "
            "required) and the CloudTrail Lake query API of one event data store (StartQuery, "
            "GetQueryResults, ...) in the foreground. Point boto3 at it with endpoint_url or "
            "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA and AWS_ENDPOINT_URL_CLOUDTRAIL. "
            "Run-time control (no auth): GET /_emulator/stats, "
            "GET|POST /_emulator/faults, GET|POST /_emulator/query-faults, GET|POST /_emulator/channels, "
            "GET /_emulator/events, "
            "POST /_emulator/reset. Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one (default %(default)s)"
    )
    parser.add_argument(
        "--channel",
        action="append",
        metavar="ARN[=EXTERNALID]",
        help=(
            "a channel to serve, repeatable; with =EXTERNALID requests must pass that externalId "
            f"(default {DEFAULT_CHANNEL_ARN})"
        ),
    )
    parser.add_argument(
        "--db", default=":memory:", metavar="PATH", help="SQLite file for the audit_events table (default: in memory)"
    )
    parser.add_argument(
        "--tps",
        type=float,
        default=100.0,
        help="PutAuditEvents requests per second over the whole server; excess requests get "
        "ThrottlingException (HTTP 400, as AWS) (default %(default)s, the real quota)",
    )
    parser.add_argument(
        "--latency-ms",
        default="0",
        metavar="SPEC",
        help="latency added to every PutAuditEvents answer: '50' fixed, '20-80' uniform, "
        "'p50=40,p99=200' log-normal (default %(default)s)",
    )
    parser.add_argument(
        "--throttle-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of valid events failed with Throttling",
    )
    parser.add_argument(
        "--internal-failure-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of valid events failed with InternalFailure",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction of requests answered 500 InternalFailure or 503 ServiceUnavailable",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for every random choice (default: random)")
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="BYTES",
        default=MAX_REQUEST_BYTES,
        help="largest request body accepted; larger gets ValidationException (default %(default)s)",
    )
    parser.add_argument(
        "--allow-unknown-fields",
        action="store_true",
        help="accept eventData fields outside the integrations schema (default: InvalidData)",
    )
    parser.add_argument(
        "--access-key",
        default=DEFAULT_ACCESS_KEY,
        help="accept only this SigV4 access key id (default %(default)s, the documented local test key)",
    )
    parser.add_argument(
        "--secret-key",
        default=DEFAULT_SECRET_KEY,
        help="verify SigV4 signatures with this secret key (default %(default)s)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="the region credentials must be scoped to (default: the first channel's region)",
    )
    parser.add_argument(
        "--accept-any-signature",
        action="store_true",
        help="take any well-formed SigV4 request: no access key, signature, clock (15 min) or region check",
    )
    parser.add_argument(
        "--event-data-store",
        default=DEFAULT_EVENT_DATA_STORE_ARN,
        metavar="ARN",
        help="ARN of the event data store the channels deliver into, served by the query API "
        "(StartQuery, GetQueryResults, ...) (default %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> CloudTrailEmulatorConfig:
    """The configuration the parsed command line asks for; ValueError naming a bad flag."""
    channels = tuple(ChannelConfig.parse(text) for text in args.channel or [DEFAULT_CHANNEL_ARN])
    for flag, value in (
        ("--throttle-rate", args.throttle_rate),
        ("--internal-failure-rate", args.internal_failure_rate),
        ("--error-rate", args.error_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag} must be between 0 and 1, not {value}")
    if not args.tps > 0:
        raise ValueError(f"--tps must be > 0, not {args.tps}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, not {args.port}")
    if args.max_request_bytes < 1:
        raise ValueError("--max-request-bytes must be positive")
    try:
        LatencySpec(args.latency_ms)
    except ValueError as exc:
        raise ValueError(f"--latency-ms: {exc}") from exc
    return CloudTrailEmulatorConfig(
        host=args.host,
        port=args.port,
        channels=channels,
        db_path=args.db,
        tps=args.tps,
        latency_ms=args.latency_ms,
        throttle_rate=args.throttle_rate,
        internal_failure_rate=args.internal_failure_rate,
        error_rate=args.error_rate,
        seed=args.seed,
        max_request_bytes=args.max_request_bytes,
        allow_unknown_fields=args.allow_unknown_fields,
        access_key=args.access_key,
        secret_key=args.secret_key,
        event_data_store_arn=args.event_data_store,
        region=args.region,
        accept_any_signature=args.accept_any_signature,
    )


def main(argv: Sequence[str]) -> int:
    """`falcon-lake emulate cloudtrail`: serve until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad input."""
    args = _parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        emulator = CloudTrailEmulator(config)
    except (ValueError, sqlite3.Error) as exc:
        print(f"falcon-lake emulate cloudtrail: {exc}", file=sys.stderr)
        return 2
    try:
        emulator.bind()
    except OSError as exc:
        print(
            f"falcon-lake emulate cloudtrail: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emulator.start()
    print(f"cloudtrail emulator listening on {emulator.url}", flush=True)
    while not stopping.wait(0.5):
        pass
    emulator.stop()
    return 0
