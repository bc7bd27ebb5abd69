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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from falcon_lake import __version__
from publisher.avro_validity import AvroValidity
from publisher.filter import EventFilter, Filtered
from publisher.json_text import compact, decode_strict, json_type, one_line, utf8_size
from publisher.mapping import MAPPINGS, EventMapping, MappedFields, map_user_activity
from publisher.schema_check import (
    avro_problem,
    channel_account,
    check_event_data,
    fixed_plan,
    get_path,
    output_schema,
    record_paths,
    serialise,
)
from publisher.shrink import (
    DETAILS_TRUNCATED,
    REQUEST_PARAMETERS_TRUNCATED,
    cut,
    shrink_details,
    shrink_object,
    shrink_raw,
)
from schemas import load_schemas

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

FIELD_SOURCES = {
    "version": "metadata.version",
    "userIdentity.type": "metadata.eventType",
    "userIdentity.principalId": "event.UserId",
    "eventName": "event.OperationName",
    "UID": "metadata.customerIDString, feed, metadata.offset",
}


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
            return f"event.Attributes[{index}]: expected an object with a text Key, got {json_type(item)}"
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
            raise ValueError(f"no mapping for event type {', '.join(unmapped)}: add one to publisher.mapping.MAPPINGS")
        self._metadata_validity = AvroValidity(schemas.falcon_metadata)
        self._metadata_fields = tuple(field["name"] for field in schemas.falcon_metadata["fields"])
        self._numbers = schemas.metadata_numbers
        self._event_validity = {
            event_type: AvroValidity(schema) for event_type, schema in schemas.falcon_events.items()
        }
        self._id_pattern = schemas.audit_event_id_pattern
        self._output = output_schema()
        self._paths: dict[str, str] = {}
        record_paths(schemas.falcon_metadata, "metadata", {}, self._paths)
        for event_schema in schemas.falcon_events.values():
            record_paths(event_schema, "event", event_schema.get("__named_schemas", {}), self._paths)
        rule = schemas.cloudtrail_field
        # Fields every record of this converter holds with the same value: their rules are
        # checked and their members serialised once, here (when one breaks its rule, every
        # record is still checked for it, so the messages stay the same).
        self._constant: dict[str, Any] = {
            "userAgent": USER_AGENT,
            "eventSource": EVENT_SOURCE,
            "responseElements": None,
            "recipientAccountId": self.channel_account,
        }
        self._record_rules = self._output.record_rules.without_constant(self._constant)
        self._plan = fixed_plan(self._output.plan, self._constant)
        self._required_text = tuple(
            (r, r.path) for r in self._record_rules.rules if r.required and (r.max_length or r.min_length)
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
            return Rejected(INTERNAL_ERROR, one_line(f"{type(exc).__name__}: {exc}"))

    def _decode(self, raw: bytes) -> dict[str, Any] | Rejected:
        try:
            text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(UNDECODABLE, f"not UTF-8: invalid byte at position {exc.start}")
        if text.startswith("\ufeff"):
            return Rejected(UNDECODABLE, "not JSON: starts with a byte order mark")
        try:
            value = decode_strict(text)
        except RecursionError:
            return Rejected(UNDECODABLE, "not JSON: nested too deeply")
        except ValueError as exc:
            return Rejected(UNDECODABLE, one_line(f"not JSON: {exc}"))
        if not isinstance(value, dict):
            return Rejected(UNDECODABLE, f"not a JSON object: got {json_type(value)}")
        return value

    def _convert(self, raw: bytes, feed: str) -> ConversionResult:
        envelope = self._decode(raw)
        if isinstance(envelope, Rejected):
            return envelope
        metadata = envelope.get("metadata")
        if not isinstance(metadata, dict):
            return Rejected(INVALID_EVENT, f"metadata: expected object, {_got(metadata)}")
        problem = avro_problem(metadata, self._metadata_validity, self._paths)
        if problem is not None:
            return Rejected(INVALID_EVENT, one_line(problem))
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
            return Rejected(INVALID_EVENT, one_line(view))
        problem = avro_problem(view, self._event_validity[event_type], self._paths)
        if problem is not None:
            return Rejected(INVALID_EVENT, one_line(problem))
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
            return Rejected(INVALID_ID, one_line(f"metadata.customerIDString {cid!r} may hold only {allowed}"))
        if not isinstance(feed, str) or not feed or not self._id_pattern.fullmatch(feed):
            return Rejected(INVALID_ID, one_line(f"feed id {feed!r} may hold only {allowed}"))
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
            **self._constant,
            "version": metadata["version"],
            "userIdentity": identity,
            "eventName": mapped.event_name,
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(metadata["eventCreationTime"] // 1000)),
            "UID": audit_id,
            "requestParameters": None,
            "errorCode": cut(mapped.error_code, self._error_code_limit),
            "errorMessage": cut(mapped.error_message, self._error_message_limit),
            "sourceIPAddress": mapped.source_ip,
            "additionalEventData": None,
        }
        for rule, path in self._required_text:
            value: Any = record.get(path[0]) if len(path) == 1 else get_path(record, path)
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
            text = compact(mapped.details)
            if utf8_size(text) > self._details_limit:
                text = compact(shrink_details(mapped.details, self._details_limit))
                markers[DETAILS_TRUNCATED] = True
            identity["details"] = text
        if mapped.request_parameters:
            text = compact(mapped.request_parameters)
            if utf8_size(text) > self._request_parameters_limit:
                shrunk = shrink_object(mapped.request_parameters, self._request_parameters_limit)
                markers[REQUEST_PARAMETERS_TRUNCATED] = True
                text = compact(shrunk)
            record["requestParameters"] = text if text != "{}" else None
        additional = compact({"raw": envelope, **markers})
        if len(additional) * 4 > self._additional_limit and utf8_size(additional) > self._additional_limit:
            additional = shrink_raw(
                envelope, self._metadata_fields, mapping.kept_fields, markers, self._additional_limit
            )
        record["additionalEventData"] = additional
        problem = self._record_rules.first_problem(record)
        if problem is not None:
            return Rejected(INVALID_OUTPUT, one_line(problem))
        event_data = serialise(record, self._plan)
        event_data.encode("utf-8")  # UnicodeEncodeError (a lone surrogate) -> Rejected by convert()
        return AuditEvent(audit_id, event_data)


def _got(value: object) -> str:
    return "missing or null" if value is None else f"got {json_type(value)}"
