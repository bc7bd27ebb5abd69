"""The Avro schemas (`*.avsc`) of the Falcon events falcon-lake accepts and of the CloudTrail
Open Audit Event they become, loaded from this package and parsed once with fastavro.

Files:
- `falcon_metadata.avsc`: the `metadata` object every Falcon event carries;
- `falcon_audit_key_value.avsc`: one `AuditKeyValues` entry, shared by the event schemas;
- `falcon_event_<EventType>.avsc`: the `event` object of one accepted event type; adding a
  type means adding such a file (and a mapping entry in `publisher.mapping.MAPPINGS`);
- `cloudtrail_open_audit_event.avsc`: the CloudTrail `eventData`, with every field limit as a
  custom attribute (`maxLength`, `minLength`, `maxBytes`, `pattern`, `format`, `jsonObject`)
  that `cloudtrail_fields` turns into `FieldRule`s, so the limits live only there.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import fastavro

METADATA_FILE = "falcon_metadata.avsc"
AUDIT_KEY_VALUE_FILE = "falcon_audit_key_value.avsc"
EVENT_FILE_PREFIX = "falcon_event_"
CLOUDTRAIL_FILE = "cloudtrail_open_audit_event.avsc"

ParsedSchema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FieldRule:
    """The limits of one CloudTrail eventData field, as the schema states them.

    `path` is the field's place in eventData, e.g. ("userIdentity", "principalId"); `name` is the
    same, dotted. `record` marks a nested record (its fields have rules of their own); every
    other field holds text (a JSON object field: its compact JSON text). Lengths count
    characters (code points); `max_bytes` counts the UTF-8 bytes of a JSON object field's
    compact text.
    """

    path: tuple[str, ...]
    required: bool
    max_length: int | None = None
    min_length: int | None = None
    max_bytes: int | None = None
    pattern: re.Pattern[str] | None = None
    json_object: bool = False
    ip_address: bool = False
    record: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class NumberRule:
    """A bound on a Falcon number field beyond its Avro type (custom attributes minimum/maximum)."""

    field: str
    minimum: int | None
    maximum: int | None


@dataclass(frozen=True)
class SchemaSet:
    """Every schema falcon-lake uses, parsed once. Treat the parsed dicts as read-only."""

    falcon_metadata: ParsedSchema
    metadata_numbers: tuple[NumberRule, ...]
    falcon_events: Mapping[str, ParsedSchema]
    cloudtrail: ParsedSchema
    cloudtrail_fields: tuple[FieldRule, ...]
    audit_event_id_pattern: re.Pattern[str]

    def event_types(self) -> tuple[str, ...]:
        """The Falcon event types that have a schema, sorted."""
        return tuple(sorted(self.falcon_events))

    def cloudtrail_field(self, name: str) -> FieldRule:
        """The rule of one eventData field by dotted name, e.g. 'userIdentity.principalId'."""
        for rule in self.cloudtrail_fields:
            if rule.name == name:
                return rule
        raise KeyError(f"the CloudTrail schema has no field {name!r}")


def read_schema(filename: str) -> dict[str, Any]:
    """The JSON of one .avsc file of this package, unparsed (custom attributes included)."""
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _event_schema_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for entry in resources.files(__name__).iterdir():
        name = entry.name
        if name.startswith(EVENT_FILE_PREFIX) and name.endswith(".avsc"):
            files[name[len(EVENT_FILE_PREFIX) : -len(".avsc")]] = name
    return files


def _field_rules(fields: list[dict[str, Any]], prefix: tuple[str, ...]) -> list[FieldRule]:
    rules: list[FieldRule] = []
    for field in fields:
        path = (*prefix, field["name"])
        ftype = field["type"]
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            rules.append(FieldRule(path=path, required=True, record=True))
            rules.extend(_field_rules(ftype["fields"], path))
            continue
        pattern = field.get("pattern")
        rules.append(
            FieldRule(
                path=path,
                required=not (isinstance(ftype, list) and "null" in ftype),
                max_length=field.get("maxLength"),
                min_length=field.get("minLength"),
                max_bytes=field.get("maxBytes"),
                pattern=re.compile(pattern) if pattern else None,
                json_object=bool(field.get("jsonObject", False)),
                ip_address=field.get("format") == "ip-address",
            )
        )
    return rules


def _parse(schema: dict[str, Any], named: dict[str, Any]) -> ParsedSchema:
    parsed = fastavro.parse_schema(schema, named)
    if not isinstance(parsed, dict):
        raise ValueError(f"schema {schema.get('name')!r} is not a record")
    return parsed


@functools.cache
def load_schemas() -> SchemaSet:
    """Read and parse every schema of this package; the result is cached, so call it freely.

    Raises ValueError when an event schema file's record name does not match its file name.
    """
    named: dict[str, Any] = {}
    metadata_json = read_schema(METADATA_FILE)
    metadata = _parse(metadata_json, named)
    _parse(read_schema(AUDIT_KEY_VALUE_FILE), named)
    events: dict[str, ParsedSchema] = {}
    for event_type, filename in sorted(_event_schema_files().items()):
        schema_json = read_schema(filename)
        if schema_json.get("name") != event_type:
            raise ValueError(f"schemas/{filename}: record name must be {event_type!r}")
        events[event_type] = _parse(schema_json, named)
    cloudtrail_json = read_schema(CLOUDTRAIL_FILE)
    numbers = tuple(
        NumberRule(field["name"], field.get("minimum"), field.get("maximum"))
        for field in metadata_json["fields"]
        if "minimum" in field or "maximum" in field
    )
    return SchemaSet(
        falcon_metadata=metadata,
        metadata_numbers=numbers,
        falcon_events=MappingProxyType(events),
        cloudtrail=_parse(cloudtrail_json, {}),
        cloudtrail_fields=tuple(_field_rules(cloudtrail_json["fields"], ())),
        audit_event_id_pattern=re.compile(cloudtrail_json["auditEventIdPattern"]),
    )
