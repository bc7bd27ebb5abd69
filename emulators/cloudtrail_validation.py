"""The PutAuditEvents rules of CloudTrail Lake, as pure functions with no I/O.

The emulator answers with these rules, and any test can check a converter's output
against the very same ones: `validate_event_data(event_data, channel_account)` returns
None for an event the service would accept, else the `EventError` it would report in
`failed[]`; `parse_event_data` is the same check handing back what it parsed. Request-level
limits (event count, body size, id pattern) are here as constants and
`audit_event_id_problem()`, so a batcher can be checked against them too.

Where REFERENCE.md leaves the real service's behaviour open, the choice is the strict
one and says so (unknown fields, empty required strings, reserved AWS event sources).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

MAX_EVENTS_PER_REQUEST = 100
# "1 MB per request": measured on the request body as sent; the decimal megabyte is
# the strict reading, so a batcher that passes here passes the real service.
MAX_REQUEST_BYTES = 1_000_000
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"[-_A-Za-z0-9]+")

# Maximum lengths in characters of the string fields (REFERENCE.md §2).
STRING_FIELD_LIMITS: dict[str, int] = {
    "version": 256,
    "userAgent": 1024,
    "eventSource": 1024,
    "eventName": 1024,
    "UID": 1024,
    "errorCode": 256,
    "errorMessage": 256,
}
USER_IDENTITY_TYPE_LIMIT = 128
USER_IDENTITY_PRINCIPAL_ID_LIMIT = 1024
# Maximum sizes in bytes of the object fields, measured as compact UTF-8 JSON
# (separators "," and ":"); kB read as 1000 bytes, the strict reading.
OBJECT_FIELD_LIMITS: dict[str, int] = {
    "requestParameters": 100_000,
    "responseElements": 100_000,
    "additionalEventData": 28_000,
}
REQUIRED_FIELDS = ("version", "userIdentity", "eventSource", "eventName", "eventTime", "UID", "recipientAccountId")
TOP_LEVEL_FIELDS = frozenset(
    (
        *REQUIRED_FIELDS,
        "userAgent",
        "requestParameters",
        "responseElements",
        "errorCode",
        "errorMessage",
        "sourceIPAddress",
        "additionalEventData",
    )
)
USER_IDENTITY_FIELDS = frozenset(("type", "principalId", "details"))
# Re-serialised compactly as UTF-8, a JSON value grows at most 4.5 times over its
# text (a float "1e15" becomes "1000000000000000.0"), so an eventData this many times
# smaller than a limit cannot hold an object over it and the sizing is skipped.
_OBJECT_GROWTH_BOUND = 5
# Event sources of AWS services are reserved for CloudTrail itself (emulator rule).
RESERVED_EVENT_SOURCE_SUFFIX = ".amazonaws.com"

_EVENT_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
_EVENT_TIME_LENGTH = len("YYYY-MM-DDTHH:MM:SSZ")


class EventErrorCode(StrEnum):
    """The per-event `errorCode` values of PutAuditEvents' `failed[]` entries."""

    FIELD_TOO_LONG = "FieldTooLong"
    FIELD_NOT_FOUND = "FieldNotFound"
    INVALID_CHECKSUM = "InvalidChecksum"
    INVALID_DATA = "InvalidData"
    INVALID_RECIPIENT = "InvalidRecipient"
    INVALID_EVENT_SOURCE = "InvalidEventSource"
    ACCOUNT_NOT_SUBSCRIBED = "AccountNotSubscribed"
    THROTTLING = "Throttling"
    INTERNAL_FAILURE = "InternalFailure"


# Only these are worth a retry; every other code means the event itself is wrong.
RETRYABLE_EVENT_ERROR_CODES = frozenset((EventErrorCode.THROTTLING, EventErrorCode.INTERNAL_FAILURE))


@dataclass(frozen=True)
class EventError:
    """Why one audit event would be refused: `code` is an EventErrorCode value."""

    code: str
    message: str

    def __post_init__(self) -> None:
        # A plain str, so the code prints, compares and serialises as the wire value.
        object.__setattr__(self, "code", str(self.code))


def event_data_checksum(event_data: str) -> str:
    """The `eventDataChecksum` of eventData: base64 of the SHA-256 of its UTF-8 bytes."""
    return base64.b64encode(hashlib.sha256(event_data.encode("utf-8")).digest()).decode("ascii")


def audit_event_id_problem(event_id: object) -> str | None:
    """None when `event_id` is a legal audit event `id` (1-128 of [-_A-Za-z0-9]), else why not."""
    if not isinstance(event_id, str):
        return "must be a string"
    if not 1 <= len(event_id) <= MAX_ID_LENGTH:
        return f"must have length between 1 and {MAX_ID_LENGTH} (it has {len(event_id)})"
    if ID_PATTERN.fullmatch(event_id) is None:
        return "must match the regular expression ^[-_A-Za-z0-9]+$"
    return None


def channel_account(channel_arn: str) -> str:
    """The account that owns a channel: the 5th colon-separated field of its ARN ('' if absent)."""
    parts = channel_arn.split(":", 5)
    return parts[4] if len(parts) > 4 else ""


def validate_event_data(
    event_data: str,
    channel_account: str,
    checksum: str | None = None,
    *,
    allow_unknown_fields: bool = False,
) -> EventError | None:
    """Check one audit event as PutAuditEvents would; None when it would be accepted.

    `event_data` is the eventData string as sent, `channel_account` the 12-digit account
    of the channel ARN (`recipientAccountId` must equal it), `checksum` the optional
    eventDataChecksum. Checks, in order: checksum (InvalidChecksum), JSON object
    (InvalidData), unknown fields (InvalidData unless allow_unknown_fields), required
    fields present and not null (FieldNotFound), types, formats and empty required
    strings (InvalidData), lengths and sizes (FieldTooLong), recipient
    (InvalidRecipient), reserved `*.amazonaws.com` event sources (InvalidEventSource).
    The first problem found is returned.
    """
    result = parse_event_data(event_data, channel_account, checksum, allow_unknown_fields=allow_unknown_fields)
    return result if isinstance(result, EventError) else None


class AcceptedEventData(NamedTuple):
    """An eventData PutAuditEvents would accept, as parsed by the check."""

    data: dict[str, Any]  # the JSON object, as json.loads returns it
    # No NaN, Infinity or -Infinity in the text: json.loads takes them, stricter parsers
    # (SQLite's JSON functions among them) refuse the whole text.
    strict_json: bool


def parse_event_data(
    event_data: str,
    channel_account: str,
    checksum: str | None = None,
    *,
    allow_unknown_fields: bool = False,
) -> AcceptedEventData | EventError:
    """`validate_event_data`, handing back what it parsed when the event would be accepted,
    so that a caller need not parse the text again; else the same EventError."""
    if checksum is not None and checksum != event_data_checksum(event_data):
        return EventError(EventErrorCode.INVALID_CHECKSUM, "eventDataChecksum does not match eventData")
    try:
        data, strict_json = _load_json(event_data)
    except ValueError as exc:
        return EventError(EventErrorCode.INVALID_DATA, f"eventData is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return EventError(EventErrorCode.INVALID_DATA, "eventData must be a JSON object")
    problem = _validate_fields(data, channel_account, allow_unknown_fields, len(event_data))
    return AcceptedEventData(data, strict_json) if problem is None else problem


class _NonFiniteNumber(Exception):
    """NaN, Infinity or -Infinity in a JSON text."""


def _refuse_non_finite(constant: str) -> float:
    raise _NonFiniteNumber(constant)


# json.loads's decoder, except that NaN and Infinity raise: one parse also tells strict JSON
# apart, where searching each text for those words would cost about a microsecond.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_non_finite)


def _load_json(text: str) -> tuple[Any, bool]:
    """json.loads(text), with its result and its errors, and whether the text was strict JSON."""
    try:
        return _STRICT_JSON.decode(text), True
    except _NonFiniteNumber:
        return json.loads(text), False
    except ValueError:
        json.loads(text)  # raises json.loads's own error (it refuses a byte order mark before parsing)
        raise


def json_size(value: Any) -> int:
    """The size an object field is measured by: bytes of its compact UTF-8 JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _validate_fields(
    data: dict[str, Any], account: str, allow_unknown_fields: bool, text_length: int
) -> EventError | None:
    if not allow_unknown_fields and not TOP_LEVEL_FIELDS.issuperset(data):
        unknown = sorted(set(data) - TOP_LEVEL_FIELDS)
        return _invalid(f"unknown field(s) in eventData: {', '.join(unknown)}")
    for name in REQUIRED_FIELDS:
        if data.get(name) is None:
            return EventError(EventErrorCode.FIELD_NOT_FOUND, f"required field '{name}' is missing")

    identity = data["userIdentity"]
    if not isinstance(identity, dict):
        return _invalid("field 'userIdentity' must be a JSON object")
    if not allow_unknown_fields and not USER_IDENTITY_FIELDS.issuperset(identity):
        unknown = sorted(set(identity) - USER_IDENTITY_FIELDS)
        return _invalid(f"unknown field(s) in userIdentity: {', '.join(unknown)}")
    problem = _required_string(identity, "type", "userIdentity.type", USER_IDENTITY_TYPE_LIMIT) or _required_string(
        identity, "principalId", "userIdentity.principalId", USER_IDENTITY_PRINCIPAL_ID_LIMIT
    )
    if problem:
        return problem
    details = identity.get("details")
    if details is not None and not isinstance(details, dict):
        return _invalid("field 'userIdentity.details' must be a JSON object")

    for name, limit in STRING_FIELD_LIMITS.items():
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            return _invalid(f"field '{name}' must be a string")
        if not value and name in REQUIRED_FIELDS:
            return _invalid(f"required field '{name}' is empty")
        if len(value) > limit:
            return _too_long(name, len(value), limit, "characters")

    problem = _check_event_time(data["eventTime"])
    if problem:
        return problem

    for name, limit in OBJECT_FIELD_LIMITS.items():
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            return _invalid(f"field '{name}' must be a JSON object")
        if text_length * _OBJECT_GROWTH_BOUND <= limit:
            continue
        size = json_size(value)
        if size > limit:
            return _too_long(name, size, limit, "bytes of JSON")

    source_ip = data.get("sourceIPAddress")
    if source_ip is not None:
        if not isinstance(source_ip, str):
            return _invalid("field 'sourceIPAddress' must be a string")
        if not _is_ip_address(source_ip):
            return _invalid(f"field 'sourceIPAddress' is not an IPv4 or IPv6 address: {source_ip[:64]!r}")

    recipient = data["recipientAccountId"]
    if recipient != account:
        return EventError(
            EventErrorCode.INVALID_RECIPIENT,
            f"recipientAccountId {str(recipient)[:64]!r} is not the channel owner's account {account!r}",
        )
    if data["eventSource"].endswith(RESERVED_EVENT_SOURCE_SUFFIX):
        return EventError(
            EventErrorCode.INVALID_EVENT_SOURCE,
            f"eventSource {data['eventSource'][:128]!r} is reserved for AWS services",
        )
    return None


def _required_string(obj: dict[str, Any], key: str, name: str, limit: int) -> EventError | None:
    value = obj.get(key)
    if value is None:
        return EventError(EventErrorCode.FIELD_NOT_FOUND, f"required field '{name}' is missing")
    if not isinstance(value, str):
        return _invalid(f"field '{name}' must be a string")
    if not value:
        return _invalid(f"required field '{name}' is empty")
    if len(value) > limit:
        return _too_long(name, len(value), limit, "characters")
    return None


@functools.lru_cache(maxsize=4096)
def _is_ip_address(text: str) -> bool:
    # Cached: a feed repeats the same few addresses, and parsing one costs microseconds.
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_event_time(value: object) -> EventError | None:
    if not isinstance(value, str):
        return _invalid("field 'eventTime' must be a string")
    if len(value) != _EVENT_TIME_LENGTH:  # cannot match, and must not fill the cache
        return _event_time_problem.__wrapped__(value)
    return _event_time_problem(value)


@functools.lru_cache(maxsize=4096)
def _event_time_problem(value: str) -> EventError | None:
    # Cached: the events of one second share their eventTime, and checking one costs a microsecond.
    match = _EVENT_TIME.fullmatch(value)
    if match is None:
        return _invalid(f"field 'eventTime' must be UTC 'YYYY-MM-DDTHH:MM:SSZ', not {value[:64]!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return _invalid(f"field 'eventTime' is not a real date and time: {value!r}")
    return None


def _invalid(message: str) -> EventError:
    return EventError(EventErrorCode.INVALID_DATA, message)


def _too_long(name: str, size: int, limit: int, unit: str) -> EventError:
    return EventError(EventErrorCode.FIELD_TOO_LONG, f"field '{name}' is {size} {unit}; the limit is {limit}")
