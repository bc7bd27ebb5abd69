"""Falcon user-activity events to CloudTrail Lake Open Audit Events, driven by the Avro schemas.

One call, `Converter.convert(raw, feed)`, turns the bytes of one Falcon event into exactly one
of three results and never raises:

- `AuditEvent(id, event_data)`: ready for PutAuditEvents;
- `Filtered(rule, detail)`: deliberately not delivered (see publisher.filter);
- `Rejected(code, message)`: cannot be delivered; goes to the DLQ. Codes: `undecodable`,
  `invalid-event`, `invalid-id`, `field-too-long`, `field-empty`, `invalid-output`,
  `internal-error`.

Pipeline: decode -> validate metadata (schemas/falcon_metadata.avsc) -> event-type filter ->
validate the event (schemas/falcon_event_<type>.avsc) -> the other filter rules -> map (MAPPINGS)
-> enforce the limits of schemas/cloudtrail_open_audit_event.avsc -> validate the record against
that schema -> serialise eventData compactly. docs/conversion.md describes the mapping, the
limits and the shrink rules.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from fastavro.validation import ValidationError, validate

from falcon_lake import __version__
from publisher.filter import EventFilter, Filtered
from schemas import FieldRule, ParsedSchema, SchemaSet, load_schemas

__all__ = [
    "MAPPINGS",
    "AuditEvent",
    "ConversionResult",
    "Converter",
    "EventMapping",
    "Filtered",
    "MappedFields",
    "Rejected",
    "channel_account",
    "check_event_data",
    "map_user_activity",
]

USER_AGENT = f"falcon-lake/{__version__}"
EVENT_SOURCE = "crowdstrike"

UNDECODABLE = "undecodable"
INVALID_EVENT = "invalid-event"
INVALID_ID = "invalid-id"
FIELD_TOO_LONG = "field-too-long"
FIELD_EMPTY = "field-empty"
INVALID_OUTPUT = "invalid-output"
INTERNAL_ERROR = "internal-error"

AUTHENTICATION_FAILED = "AuthenticationFailed"
OPERATION_FAILED = "OperationFailed"
# Operations whose failure is a failed sign-in (errorCode AuthenticationFailed); any other
# failed operation gets OperationFailed. Compared case-insensitively.
AUTHENTICATION_OPERATIONS = frozenset({"userauthenticate", "twofactorauthenticate", "saml2assert"})
# Keys whose value becomes errorMessage, in this order of preference, looked up (case-insensitively)
# in Attributes first, then in AuditKeyValues.
REASON_KEYS = ("reason", "failure_reason", "error", "error_message", "message")
CUT_MARKER = "…"

# Markers in additionalEventData saying what was shrunk to fit a limit.
TRUNCATED = "truncated"
REQUEST_PARAMETERS_TRUNCATED = "requestParametersTruncated"
DETAILS_TRUNCATED = "detailsTruncated"

# Where each required eventData field comes from, to name it in a rejection.
FIELD_SOURCES = {
    "version": "metadata.version",
    "userIdentity.type": "metadata.eventType",
    "userIdentity.principalId": "event.UserId",
    "eventName": "event.OperationName",
    "UID": "metadata.customerIDString, feed, metadata.offset",
}

_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class AuditEvent:
    """One entry for PutAuditEvents: `id` matches ^[-_A-Za-z0-9]{1,128}$ and equals eventData's
    UID (`<cid>-<feed>-<offset>`, the same on every re-send); `event_data` is compact JSON that
    meets every limit of the CloudTrail schema and encodes to valid UTF-8."""

    id: str
    event_data: str


@dataclass(frozen=True)
class Rejected:
    """An event that cannot be delivered. `code` is one of the module's rejection codes;
    `message` is one line (at most a few hundred characters) naming the field at fault."""

    code: str
    message: str


ConversionResult = AuditEvent | Filtered | Rejected


@dataclass(frozen=True)
class MappedFields:
    """What one event type contributes to eventData; the rest is common to every type."""

    principal_id: str
    event_name: str
    details: dict[str, Any] | None = None
    source_ip: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventMapping:
    """How one Falcon event type becomes CloudTrail fields.

    `map_event` gets the validated event object (Attributes already a map) and must not raise
    on it; `kept_fields` are the event fields the shrink rule keeps in additionalEventData.raw.
    """

    map_event: Callable[[Mapping[str, Any]], MappedFields]
    kept_fields: tuple[str, ...]


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return _compact(value)


def _reason(event: Mapping[str, Any]) -> str | None:
    attributes = event.get("Attributes") or {}
    by_key = {str(key).casefold(): value for key, value in attributes.items()}
    for key in REASON_KEYS:
        found = _text(by_key.get(key))
        if found is not None:
            return found
    entries: dict[str, Any] = {}
    for entry in event.get("AuditKeyValues") or ():
        entries.setdefault(entry["Key"].casefold(), entry.get("ValueString"))
    for key in REASON_KEYS:
        found = _text(entries.get(key))
        if found is not None:
            return found
    return None


_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def _is_ip_address(value: str) -> bool:
    """A valid IPv4 or IPv6 address (as Python's ipaddress reads them), without an IPv6 zone."""
    if _IPV4.fullmatch(value):  # the common case, without ipaddress's cost
        return True
    if "%" in value:  # a scoped IPv6 address is not an address CloudTrail stores
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def map_user_activity(event: Mapping[str, Any]) -> MappedFields:
    """The mapping of AuthActivityAuditEvent and UserActivityAuditEvent (docs/conversion.md)."""
    operation: str = event["OperationName"]
    audit_key_values = event.get("AuditKeyValues")
    attributes = event.get("Attributes")
    user_ip = event.get("UserIp")
    if attributes:
        request_parameters: dict[str, Any] | None = dict(attributes)
    elif audit_key_values:
        request_parameters = {entry["Key"]: entry.get("ValueString") for entry in audit_key_values}
    else:
        request_parameters = None
    error_code = error_message = None
    if event.get("Success") is False:
        error_code = AUTHENTICATION_FAILED if operation.casefold() in AUTHENTICATION_OPERATIONS else OPERATION_FAILED
        error_message = _reason(event)
    return MappedFields(
        principal_id=event["UserId"],
        event_name=operation,
        details=None if audit_key_values is None else {"AuditKeyValues": audit_key_values},
        source_ip=user_ip if isinstance(user_ip, str) and _is_ip_address(user_ip) else None,
        error_code=error_code,
        error_message=error_message,
        request_parameters=request_parameters,
    )


_USER_ACTIVITY_FIELDS = ("UserId", "UserIp", "OperationName", "ServiceName", "Success", "UTCTimestamp")

MAPPINGS: Mapping[str, EventMapping] = {
    "AuthActivityAuditEvent": EventMapping(map_user_activity, _USER_ACTIVITY_FIELDS),
    "UserActivityAuditEvent": EventMapping(map_user_activity, _USER_ACTIVITY_FIELDS),
}
"""Event type -> mapping. Adding an event type = a schema file in schemas/ plus an entry here."""


# --- JSON ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON text: no spaces, not \\u-escaped, no NaN. json.dumps builds the C encoder
    anew on every call; building it once saves a sixth of the conversion time."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return encoder.encode
    # markers=None: no cycle check, as nothing decoded from JSON can hold a cycle
    chunks = make_encoder(None, encoder.default, encode_basestring, None, ":", ",", False, False, False)
    return lambda value: "".join(chunks(value, 0))


_compact = _compact_encoder()


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + CUT_MARKER


# --- Avro validation messages -------------------------------------------------------------

_AVRO_TYPE_NAMES = {
    "long": "integer",
    "int": "integer",
    "double": "number",
    "float": "number",
    "record": "object",
    "map": "object",
}


def _record_paths(schema: ParsedSchema, prefix: str, named: Mapping[str, Any], out: dict[str, str]) -> None:
    """Record full name -> the path a user knows it by (e.g. falcon.AuditKeyValue -> event.AuditKeyValues[])."""
    out.setdefault(schema["name"], prefix)
    for field in schema["fields"]:
        _type_paths(field["type"], f"{prefix}.{field['name']}", named, out)


def _type_paths(ftype: Any, path: str, named: Mapping[str, Any], out: dict[str, str]) -> None:
    if isinstance(ftype, list):
        for branch in ftype:
            _type_paths(branch, path, named, out)
    elif isinstance(ftype, str) and ftype in named and ftype not in out:
        _record_paths(named[ftype], path, named, out)
    elif isinstance(ftype, dict):
        kind = ftype.get("type")
        if kind == "record" and ftype["name"] not in out:
            _record_paths(ftype, path, named, out)
        elif kind == "array":
            _type_paths(ftype["items"], f"{path}[]", named, out)
        elif kind == "map":
            _type_paths(ftype["values"], f"{path}{{}}", named, out)


def _expected(schema: Any) -> str:
    if isinstance(schema, dict):
        schema = schema.get("type")
    if isinstance(schema, str):
        return _AVRO_TYPE_NAMES.get(schema, schema if "." not in schema else "object")
    return "a value of another type"


def _validation_message(exc: ValidationError, paths: Mapping[str, str]) -> str:
    errors = exc.errors
    if not errors:
        return "does not match the schema"
    last = errors[-1]
    field = str(last.field)
    record, _, name = field.rpartition(".")
    where = f"{paths[record]}.{name}" if record in paths else field
    expected: list[str] = []
    for error in errors:
        if error.field == last.field:
            kind = _expected(error.schema)
            if kind not in expected:
                expected.append(kind)
    got = "missing or null" if last.datum is None else f"got {_json_type(last.datum)}"
    return f"{where}: expected {' or '.join(expected)}, {got}"


def _avro_problem(datum: Any, schema: ParsedSchema, paths: Mapping[str, str]) -> str | None:
    """None when datum matches the parsed schema (extra dict keys are ignored), else a message
    naming the field. The quiet pass comes first: raising mode builds an exception (with a
    formatted message) for every union branch that does not match, which costs ten times more."""
    if validate(datum, schema, raise_errors=False):
        return None
    try:
        validate(datum, schema, raise_errors=True)
    except ValidationError as exc:
        return _validation_message(exc, paths)
    return "does not match the schema"


# --- the CloudTrail record ----------------------------------------------------------------

_KIND_TEXT, _KIND_JSON, _KIND_RECORD = 0, 1, 2
_Plan = tuple[tuple[str, str, int, Any], ...]


def _serialisation_plan(fields: Sequence[Mapping[str, Any]]) -> _Plan:
    plan: list[tuple[str, str, int, Any]] = []
    for field in fields:
        name = field["name"]
        ftype = field["type"]
        prefix = f"{encode_basestring(name)}:"
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            plan.append((name, prefix, _KIND_RECORD, _serialisation_plan(ftype["fields"])))
        elif field.get("jsonObject"):
            plan.append((name, prefix, _KIND_JSON, None))
        else:
            plan.append((name, prefix, _KIND_TEXT, None))
    return tuple(plan)


def _serialise(record: Mapping[str, Any], plan: _Plan) -> str:
    members = []
    for name, prefix, kind, sub in plan:
        value = record.get(name)
        if value is None:
            continue
        if kind == _KIND_JSON:
            members.append(prefix + value)
        elif kind == _KIND_RECORD:
            members.append(prefix + _serialise(value, sub))
        else:
            members.append(prefix + encode_basestring(value))
    return "{" + ",".join(members) + "}"


def _get(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _check_rules(record: Mapping[str, Any], rules: Sequence[FieldRule]) -> str | None:
    """The first rule of the schema the record breaks, as a message; None when it meets them all.

    Checks presence, type (text or nested record) and every limit, so on records built by this
    module it is a complete check against the schema, at a fraction of fastavro's cost.
    """
    for rule in rules:
        path = rule.path
        value = record.get(path[0]) if len(path) == 1 else _get(record, path)
        if value is None:
            if rule.required:
                return f"{rule.name} is required"
            continue
        if rule.record:
            if not isinstance(value, dict):
                return f"{rule.name} must be an object"
            continue
        if not isinstance(value, str):
            return f"{rule.name} must be {'a JSON object' if rule.json_object else 'text'}"
        if rule.max_length is not None and len(value) > rule.max_length:
            return f"{rule.name} is {len(value)} characters; at most {rule.max_length} allowed"
        if rule.min_length is not None and len(value) < rule.min_length:
            return f"{rule.name} is empty" if not value else f"{rule.name} is too short"
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            return f"{rule.name} does not match {rule.pattern.pattern}"
        if rule.ip_address and not _is_ip_address(value):
            return f"{rule.name} is not an IPv4 or IPv6 address"
        if rule.max_bytes is not None and _utf8_size(value) > rule.max_bytes:
            return f"{rule.name} is {_utf8_size(value)} bytes; at most {rule.max_bytes} allowed"
        if rule.json_object and not value.startswith("{"):
            return f"{rule.name} must be a JSON object"
    return None


class _OutputSchema:
    """The CloudTrail schema, prepared for checking and serialising records."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schema = schemas.cloudtrail
        self.rules = schemas.cloudtrail_fields
        self.plan = _serialisation_plan(self.schema["fields"])
        self.json_fields = tuple(rule for rule in self.rules if rule.json_object)
        self.paths: dict[str, str] = {}
        _record_paths(self.schema, "eventData", self.schema.get("__named_schemas", {}), self.paths)

    def check(self, record: Mapping[str, Any], *, avro: bool) -> str | None:
        """The first problem of a record (JSON object fields as their text), or None. With
        avro=False only the rules drawn from the schema run (enough for records this module
        builds); avro=True validates with fastavro first."""
        if avro:
            problem = _avro_problem(record, self.schema, self.paths)
            if problem is not None:
                return problem
        return _check_rules(record, self.rules)


def channel_account(channel_arn: str) -> str:
    """The account id (5th field) of a CloudTrail Lake channel ARN.

    Raises ValueError with a one-line message unless the ARN reads
    arn:PARTITION:cloudtrail:REGION:ACCOUNT(12 digits):channel/ID.
    """
    parts = channel_arn.split(":", 5) if isinstance(channel_arn, str) else []
    if (
        len(parts) != 6
        or parts[0] != "arn"
        or not re.fullmatch(r"aws[-a-z]*", parts[1])
        or parts[2] != "cloudtrail"
        or not re.fullmatch(r"[a-z0-9-]+", parts[3])
        or not re.fullmatch(r"[0-9]{12}", parts[4])
        or not re.fullmatch(r"channel/[-_.A-Za-z0-9]+", parts[5])
    ):
        raise ValueError(
            f"malformed CloudTrail channel ARN {channel_arn!r}: expected arn:aws:cloudtrail:REGION:ACCOUNT:channel/ID"
        )
    return parts[4]


def check_event_data(event_data: str, channel_account: str) -> str | None:
    """Check an eventData string against the CloudTrail schema and its limits, and its
    recipientAccountId against the channel's account. Returns a one-line problem, or None."""
    output = _output_schema()
    try:
        parsed = _DECODER.decode(event_data)
    except (ValueError, RecursionError) as exc:
        return f"eventData is not JSON: {exc}"
    if not isinstance(parsed, dict):
        return "eventData is not a JSON object"
    unknown = _unknown_fields(parsed, output.plan, "")
    if unknown:
        return f"eventData has fields the schema does not know: {', '.join(unknown)}"
    record: dict[str, Any] = dict(parsed)
    identity = parsed.get("userIdentity")
    if isinstance(identity, dict):
        record["userIdentity"] = dict(identity)
    for rule in output.json_fields:
        value = _get(record, rule.path)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{rule.name} must be a JSON object"
        container = record if len(rule.path) == 1 else record[rule.path[0]]
        container[rule.path[-1]] = _compact(value)
    problem = output.check(record, avro=True)
    if problem is not None:
        return problem
    if record["recipientAccountId"] != channel_account:
        return f"recipientAccountId {record['recipientAccountId']} is not the channel's account {channel_account}"
    return None


def _unknown_fields(obj: Mapping[str, Any], plan: _Plan, prefix: str) -> list[str]:
    known = {name: sub for name, _, kind, sub in plan}
    unknown = [f"{prefix}{name}" for name in obj if name not in known]
    for name, sub in known.items():
        value = obj.get(name)
        if sub is not None and isinstance(value, dict):
            unknown.extend(_unknown_fields(value, sub, f"{prefix}{name}."))
    return sorted(unknown)


@functools.cache
def _output_schema() -> _OutputSchema:
    return _OutputSchema(load_schemas())


# --- shrinking ----------------------------------------------------------------------------


def _member_size(key: str, value: Any) -> int:
    return _utf8_size(_compact(key)) + 1 + _utf8_size(_compact(value))


def _keep_smallest(sizes: Sequence[tuple[int, Any]], budget: int, separator: int = 1) -> set[Any]:
    """Greedy, deterministic: take members smallest first (ties by their key) while the
    running total, with one separator byte per member, stays within budget."""
    kept: set[Any] = set()
    total = 0
    for size, key in sorted(sizes, key=lambda item: (item[0], str(item[1]))):
        cost = size + separator
        if total + cost > budget:
            break
        kept.add(key)
        total += cost
    return kept


def shrink_object(value: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """The largest members of `value` dropped until its compact JSON fits in max_bytes: members
    are kept smallest first (ties by key), in their original order."""
    sizes = [(_member_size(key, member), key) for key, member in value.items()]
    kept = _keep_smallest(sizes, max_bytes - 2 + 1)  # braces; no separator before the first member
    return {key: member for key, member in value.items() if key in kept}


def shrink_details(details: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """{"AuditKeyValues": [...]} with the largest entries dropped until it fits, order kept."""
    entries = details.get("AuditKeyValues") or []
    overhead = _utf8_size(_compact({"AuditKeyValues": []}))
    sizes = [(_utf8_size(_compact(entry)), index) for index, entry in enumerate(entries)]
    kept = _keep_smallest(sizes, max_bytes - overhead + 1)
    return {"AuditKeyValues": [entry for index, entry in enumerate(entries) if index in kept]}


def shrink_raw(
    envelope: Mapping[str, Any],
    metadata_fields: Sequence[str],
    kept_fields: Sequence[str],
    markers: Mapping[str, Any],
    max_bytes: int,
) -> str:
    """additionalEventData as compact JSON of at most max_bytes, marked "truncated": true.

    Keeps raw.metadata's schema fields always, then the mapped event fields (`kept_fields`, in
    that order) while they fit, then every other member of raw, raw.metadata and raw.event
    smallest first (ties by name) while it fits; members keep their original order.
    """
    metadata = envelope["metadata"]
    event = envelope["event"]
    base_meta = {key: metadata[key] for key in metadata if key in metadata_fields}
    base = {"raw": {"metadata": base_meta, "event": {}}, **markers, TRUNCATED: True}
    total = _utf8_size(_compact(base))
    if total > max_bytes:
        return _compact({**markers, TRUNCATED: True})
    chosen: set[tuple[str, str]] = set()
    event_empty = True
    for key in kept_fields:
        if key in event:
            cost = _member_size(key, event[key]) + (0 if event_empty else 1)
            if total + cost <= max_bytes:
                chosen.add(("event", key))
                total += cost
                event_empty = False
    others: list[tuple[int, tuple[str, str]]] = []
    for key, value in envelope.items():
        if key not in ("metadata", "event"):
            others.append((_member_size(key, value) + 1, ("", key)))
    for key, value in metadata.items():
        if key not in metadata_fields:
            others.append((_member_size(key, value) + 1, ("metadata", key)))
    for key, value in event.items():
        if ("event", key) not in chosen and key not in kept_fields:
            others.append((_member_size(key, value), ("event", key)))
    for size, where in sorted(others):
        cost = size + (1 if where[0] == "event" and not event_empty else 0)
        if total + cost <= max_bytes:
            chosen.add(where)
            total += cost
            if where[0] == "event":
                event_empty = False
    raw: dict[str, Any] = {}
    for key, value in envelope.items():
        if key == "metadata":
            raw[key] = {k: v for k, v in metadata.items() if k in metadata_fields or ("metadata", k) in chosen}
        elif key == "event":
            raw[key] = {k: v for k, v in event.items() if ("event", k) in chosen}
        elif ("", key) in chosen:
            raw[key] = value
    text = _compact({"raw": raw, **markers, TRUNCATED: True})
    if _utf8_size(text) > max_bytes:  # cannot happen when the sums above are right; never exceed anyway
        return _compact({**markers, TRUNCATED: True})
    return text


# --- the converter ------------------------------------------------------------------------


def _normalise_attributes(event: dict[str, Any]) -> dict[str, Any] | str:
    """The event with Attributes as a map (a list of {Key, ValueString} or {Key, Value} objects
    becomes {Key: value}); a message when the list has another shape."""
    attributes = event.get("Attributes")
    if not isinstance(attributes, list):
        return event
    mapped: dict[str, Any] = {}
    for index, item in enumerate(attributes):
        key = item.get("Key") if isinstance(item, dict) else None
        if not isinstance(key, str):
            return f"event.Attributes[{index}]: expected an object with a text Key, got {_json_type(item)}"
        mapped[key] = item["ValueString"] if "ValueString" in item else item.get("Value")
    return {**event, "Attributes": mapped}


class Converter:
    """Converts the raw bytes of Falcon events into AuditEvent, Filtered or Rejected.

    Holds no per-event state, so one instance serves any number of events and threads.
    """

    def __init__(self, channel_arn: str, event_filter: EventFilter, now: Callable[[], float] = time.time) -> None:
        """Raises ValueError (one line) for a malformed channel ARN, or a filter selecting an
        event type that has no mapping."""
        self.channel_account = channel_account(channel_arn)
        self.event_filter = event_filter
        self._now = now
        schemas = load_schemas()
        unmapped = sorted(event_type for event_type in event_filter.event_types if event_type not in MAPPINGS)
        if unmapped:
            raise ValueError(f"no mapping for event type {', '.join(unmapped)}: add one to publisher.convert.MAPPINGS")
        self._metadata_schema = schemas.falcon_metadata
        self._metadata_fields = tuple(field["name"] for field in schemas.falcon_metadata["fields"])
        self._numbers = schemas.metadata_numbers
        self._event_schemas = schemas.falcon_events
        self._id_pattern = schemas.audit_event_id_pattern
        self._output = _output_schema()
        self._paths: dict[str, str] = {}
        _record_paths(schemas.falcon_metadata, "metadata", {}, self._paths)
        for event_schema in schemas.falcon_events.values():
            _record_paths(event_schema, "event", event_schema.get("__named_schemas", {}), self._paths)
        rule = schemas.cloudtrail_field
        self._required_text = tuple(
            r for r in schemas.cloudtrail_fields if r.required and (r.max_length or r.min_length)
        )
        self._error_message_limit = rule("errorMessage").max_length or 256
        self._error_code_limit = rule("errorCode").max_length or 256
        self._details_limit = rule("userIdentity.details").max_bytes or 0
        self._request_parameters_limit = rule("requestParameters").max_bytes or 0
        self._additional_limit = rule("additionalEventData").max_bytes or 0

    def convert(self, raw: bytes, feed: str) -> ConversionResult:
        """Convert one event; `feed` is the Falcon feed id (the Kafka key).

        Never raises: returns exactly one of AuditEvent, Filtered, Rejected. The same bytes and
        feed give the same result (given the same clock for the max-age rule).
        """
        try:
            return self._convert(raw, feed)
        except UnicodeEncodeError:
            return Rejected(UNDECODABLE, "the event contains an unpaired UTF-16 surrogate (e.g. \\ud800)")
        except RecursionError:
            return Rejected(UNDECODABLE, "the event is nested too deeply")
        except Exception as exc:  # a bug must cost one event (to the DLQ), never the process
            return Rejected(INTERNAL_ERROR, _one_line(f"{type(exc).__name__}: {exc}"))

    def _decode(self, raw: bytes) -> dict[str, Any] | Rejected:
        try:
            text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(UNDECODABLE, f"not UTF-8: invalid byte at position {exc.start}")
        if text.startswith("\ufeff"):
            return Rejected(UNDECODABLE, "not JSON: starts with a byte order mark")
        try:
            value = _DECODER.decode(text)
        except RecursionError:
            return Rejected(UNDECODABLE, "not JSON: nested too deeply")
        except ValueError as exc:
            return Rejected(UNDECODABLE, _one_line(f"not JSON: {exc}"))
        if not isinstance(value, dict):
            return Rejected(UNDECODABLE, f"not a JSON object: got {_json_type(value)}")
        return value

    def _convert(self, raw: bytes, feed: str) -> ConversionResult:
        envelope = self._decode(raw)
        if isinstance(envelope, Rejected):
            return envelope
        metadata = envelope.get("metadata")
        if not isinstance(metadata, dict):
            return Rejected(INVALID_EVENT, f"metadata: expected object, {_got(metadata)}")
        problem = _avro_problem(metadata, self._metadata_schema, self._paths)
        if problem is not None:
            return Rejected(INVALID_EVENT, _one_line(problem))
        for number in self._numbers:
            value = metadata[number.field]
            if (number.minimum is not None and value < number.minimum) or (
                number.maximum is not None and value > number.maximum
            ):
                return Rejected(INVALID_EVENT, f"metadata.{number.field}: {value} is out of range")
        event_type: str = metadata["eventType"]
        filtered = self.event_filter.check_event_type(event_type)
        if filtered is not None:
            return filtered
        event = envelope.get("event")
        if not isinstance(event, dict):
            return Rejected(INVALID_EVENT, f"event: expected object, {_got(event)}")
        view = _normalise_attributes(event)
        if isinstance(view, str):
            return Rejected(INVALID_EVENT, _one_line(view))
        problem = _avro_problem(view, self._event_schemas[event_type], self._paths)
        if problem is not None:
            return Rejected(INVALID_EVENT, _one_line(problem))
        filtered = self.event_filter.check(envelope, self._now())
        if filtered is not None:
            return filtered
        audit_id = self._audit_id(metadata["customerIDString"], feed, metadata["offset"])
        if isinstance(audit_id, Rejected):
            return audit_id
        mapping = MAPPINGS[event_type]
        return self._build(envelope, metadata, mapping, mapping.map_event(view), audit_id)

    def _audit_id(self, cid: str, feed: str, offset: int) -> str | Rejected:
        audit_id = f"{cid}-{feed}-{offset}"
        if cid and feed and self._id_pattern.fullmatch(audit_id):
            return audit_id
        allowed = "letters, digits, - and _"
        if not cid:
            return Rejected(INVALID_ID, "metadata.customerIDString is empty")
        if not self._id_pattern.fullmatch(cid):
            return Rejected(INVALID_ID, _one_line(f"metadata.customerIDString {cid!r} may hold only {allowed}"))
        if not isinstance(feed, str) or not feed or not self._id_pattern.fullmatch(feed):
            return Rejected(INVALID_ID, _one_line(f"feed id {feed!r} may hold only {allowed}"))
        return Rejected(INVALID_ID, f"id {audit_id[:40]}… is {len(audit_id)} characters; at most 128 allowed")

    def _build(
        self,
        envelope: dict[str, Any],
        metadata: Mapping[str, Any],
        mapping: EventMapping,
        mapped: MappedFields,
        audit_id: str,
    ) -> ConversionResult:
        identity: dict[str, Any] = {"type": metadata["eventType"], "principalId": mapped.principal_id, "details": None}
        record: dict[str, Any] = {
            "version": metadata["version"],
            "userIdentity": identity,
            "userAgent": USER_AGENT,
            "eventSource": EVENT_SOURCE,
            "eventName": mapped.event_name,
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(metadata["eventCreationTime"] // 1000)),
            "UID": audit_id,
            "requestParameters": None,
            "responseElements": None,
            "errorCode": _cut(mapped.error_code, self._error_code_limit),
            "errorMessage": _cut(mapped.error_message, self._error_message_limit),
            "sourceIPAddress": mapped.source_ip,
            "recipientAccountId": self.channel_account,
            "additionalEventData": None,
        }
        for rule in self._required_text:
            value = _get(record, rule.path)
            if rule.max_length is not None and len(value) > rule.max_length:
                return Rejected(
                    FIELD_TOO_LONG,
                    f"{rule.name} ({FIELD_SOURCES.get(rule.name, rule.name)}) is {len(value)} characters; "
                    f"CloudTrail allows at most {rule.max_length}",
                )
            if rule.min_length is not None and len(value) < rule.min_length:
                return Rejected(FIELD_EMPTY, f"{rule.name} ({FIELD_SOURCES.get(rule.name, rule.name)}) is empty")
        markers: dict[str, Any] = {}
        if mapped.details is not None:
            text = _compact(mapped.details)
            if _utf8_size(text) > self._details_limit:
                text = _compact(shrink_details(mapped.details, self._details_limit))
                markers[DETAILS_TRUNCATED] = True
            identity["details"] = text
        if mapped.request_parameters:
            text = _compact(mapped.request_parameters)
            if _utf8_size(text) > self._request_parameters_limit:
                shrunk = shrink_object(mapped.request_parameters, self._request_parameters_limit)
                markers[REQUEST_PARAMETERS_TRUNCATED] = True
                text = _compact(shrunk)
            record["requestParameters"] = text if text != "{}" else None
        additional = _compact({"raw": envelope, **markers})
        if len(additional) * 4 > self._additional_limit and _utf8_size(additional) > self._additional_limit:
            additional = shrink_raw(
                envelope, self._metadata_fields, mapping.kept_fields, markers, self._additional_limit
            )
        record["additionalEventData"] = additional
        problem = self._output.check(record, avro=False)
        if problem is not None:
            return Rejected(INVALID_OUTPUT, _one_line(problem))
        event_data = _serialise(record, self._output.plan)
        event_data.encode("utf-8")  # UnicodeEncodeError (a lone surrogate) -> Rejected by convert()
        return AuditEvent(audit_id, event_data)


def _got(value: object) -> str:
    return "missing or null" if value is None else f"got {_json_type(value)}"


def _cut(text: str | None, limit: int) -> str | None:
    """A derived text cut to `limit` characters, ending in CUT_MARKER when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARKER)] + CUT_MARKER
