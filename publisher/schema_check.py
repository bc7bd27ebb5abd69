"""Schema-driven checks of the CloudTrail record: the limits of
schemas/cloudtrail_open_audit_event.avsc (the single source of field limits), fastavro validation
with messages that name the field a user knows, the channel ARN's account, and eventData
serialisation in the schema's field order."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from fastavro.validation import ValidationError, validate

from publisher.avro_validity import AvroValidity
from publisher.json_text import STRICT_DECODER, compact, json_type, utf8_size
from schemas import FieldRule, ParsedSchema, SchemaSet, load_schemas

_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def _hex_ipv6() -> re.Pattern[str]:
    """IPv6 addresses written in hextets only, each of 1 to 4 ASCII hex digits: eight of them,
    or at most seven around one '::' (which then stands for at least one zero hextet). A subset
    of what ipaddress accepts (it also reads an IPv4 tail), so a miss still asks ipaddress."""
    hextet = "[0-9A-Fa-f]{1,4}"
    forms = [f"{hextet}(?::{hextet}){{7}}"]
    for before in range(8):  # hextets before the '::'; those after make at most 7 in all
        head = "" if before == 0 else f"{hextet}(?::{hextet}){{{before - 1}}}"
        tail = "" if before == 7 else f"(?:{hextet}(?::{hextet}){{0,{6 - before}}})?"
        forms.append(f"{head}::{tail}")
    return re.compile("|".join(f"(?:{form})" for form in forms))


_IPV6_HEXTETS = _hex_ipv6()


def is_ip_address(value: str) -> bool:
    """A valid IPv4 or IPv6 address (as Python's ipaddress reads them), without an IPv6 zone."""
    if _IPV4.fullmatch(value) or _IPV6_HEXTETS.fullmatch(value):  # the common cases, without ipaddress's cost
        return True
    if "%" in value:  # a scoped IPv6 address is not an address CloudTrail stores
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- Avro validation messages -------------------------------------------------------------

_AVRO_TYPE_NAMES = {
    "long": "integer",
    "int": "integer",
    "double": "number",
    "float": "number",
    "record": "object",
    "map": "object",
}


def record_paths(schema: ParsedSchema, prefix: str, named: Mapping[str, Any], out: dict[str, str]) -> None:
    """Record full name -> the path a user knows it by (e.g. falcon.AuditKeyValue -> event.AuditKeyValues[])."""
    out.setdefault(schema["name"], prefix)
    for field in schema["fields"]:
        _type_paths(field["type"], f"{prefix}.{field['name']}", named, out)


def _type_paths(ftype: Any, path: str, named: Mapping[str, Any], out: dict[str, str]) -> None:
    if isinstance(ftype, list):
        for branch in ftype:
            _type_paths(branch, path, named, out)
    elif isinstance(ftype, str) and ftype in named and ftype not in out:
        record_paths(named[ftype], path, named, out)
    elif isinstance(ftype, dict):
        kind = ftype.get("type")
        if kind == "record" and ftype["name"] not in out:
            record_paths(ftype, path, named, out)
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
    got = "missing or null" if last.datum is None else f"got {json_type(last.datum)}"
    return f"{where}: expected {' or '.join(expected)}, {got}"


def avro_problem(datum: Any, validity: AvroValidity, paths: Mapping[str, str]) -> str | None:
    """None when datum matches the parsed schema of `validity` (extra dict keys are ignored),
    else a message naming the field. The compiled check answers first; only an invalid datum
    pays for fastavro's raising mode, which builds an exception (with a formatted message) for
    every union branch that does not match, to name what is wrong."""
    if validity(datum):
        return None
    try:
        validate(datum, validity.schema, raise_errors=True)
    except ValidationError as exc:
        return _validation_message(exc, paths)
    return "does not match the schema"


# --- the CloudTrail record ----------------------------------------------------------------

_KIND_TEXT, _KIND_JSON, _KIND_RECORD, _KIND_FIXED = 0, 1, 2, 3
# (field, ',"field":' (or, for a fixed value, the whole member), kind, the plan of a record's fields)
_Plan = tuple[tuple[str, str, int, Any], ...]


def _serialisation_plan(fields: Sequence[Mapping[str, Any]]) -> _Plan:
    plan: list[tuple[str, str, int, Any]] = []
    for field in fields:
        name = field["name"]
        ftype = field["type"]
        prefix = f",{encode_basestring(name)}:"
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            plan.append((name, prefix, _KIND_RECORD, _serialisation_plan(ftype["fields"])))
        elif field.get("jsonObject"):
            plan.append((name, prefix, _KIND_JSON, None))
        else:
            plan.append((name, prefix, _KIND_TEXT, None))
    return tuple(plan)


def fixed_plan(plan: _Plan, constant: Mapping[str, Any]) -> _Plan:
    """The plan for records whose top-level fields named in `constant` always hold that value:
    their members are serialised once, here (a None value: left out)."""
    fixed: list[tuple[str, str, int, Any]] = []
    for name, prefix, kind, sub in plan:
        if name not in constant or kind == _KIND_RECORD:
            fixed.append((name, prefix, kind, sub))
        elif constant[name] is not None:
            value = constant[name] if kind == _KIND_JSON else encode_basestring(constant[name])
            fixed.append((name, prefix + value, _KIND_FIXED, None))
    return tuple(fixed)


def serialise(record: Mapping[str, Any], plan: _Plan) -> str:
    """Compact JSON of the record, members in plan order, None members left out; text fields
    as JSON strings (not \\u-escaped), JSON object fields (their compact text) as they are."""
    parts = ["{"]
    append = parts.append
    for name, prefix, kind, sub in plan:
        if kind == _KIND_FIXED:
            append(prefix)
            continue
        value = record.get(name)
        if value is None:
            continue
        append(prefix)
        if kind == _KIND_TEXT:
            append(encode_basestring(value))
        elif kind == _KIND_JSON:
            append(value)
        else:
            append(serialise(value, sub))
    if len(parts) > 1:
        parts[1] = parts[1][1:]  # the first member's leading comma
    append("}")
    return "".join(parts)


def get_path(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class RecordRules:
    """The rules of the schema, prepared for checking records: `first_problem(record)` gives the
    first rule the record breaks, as a message, or None when it meets them all.

    Checks presence, type (text or nested record) and every limit, so on records built by this
    module it is a complete check against the schema, at a fraction of fastavro's cost.
    """

    def __init__(self, rules: Sequence[FieldRule]) -> None:
        self.rules = tuple(rules)
        # the rule, then its fields unpacked: (rule, first key, second key or None, longer path
        # or None, required, record, max_length, min_length, pattern, ip_address, max_bytes, json_object)
        self._steps = tuple(
            (
                rule,
                rule.path[0],
                rule.path[1] if len(rule.path) == 2 else None,
                rule.path if len(rule.path) > 2 else None,
                rule.required,
                rule.record,
                rule.max_length,
                rule.min_length,
                rule.pattern,
                rule.ip_address,
                rule.max_bytes,
                rule.json_object,
            )
            for rule in self.rules
        )

    def without_constant(self, constant: Mapping[str, Any]) -> RecordRules:
        """These rules less those of the top-level fields that always hold `constant[name]`,
        when every such value meets its rules; otherwise all of them, so the first problem of
        any record stays the same."""
        fixed = [rule for rule in self.rules if rule.path[0] in constant]
        if any(len(rule.path) != 1 or rule.record for rule in fixed):
            return self
        if RecordRules(fixed).first_problem(constant) is not None:
            return self
        return RecordRules([rule for rule in self.rules if rule.path[0] not in constant])

    def first_problem(self, record: Mapping[str, Any]) -> str | None:
        for step in self._steps:
            rule, first, second, deep, required, is_record, max_length, min_length, pattern, ip, max_bytes, json = step
            if second is None and deep is None:
                value = record.get(first)
            elif deep is None:  # get_path, inline
                value = record.get(first) if isinstance(record, dict) else None
                value = value.get(second) if isinstance(value, dict) else None
            else:
                value = get_path(record, deep)
            if value is None:
                if required:
                    return f"{rule.name} is required"
                continue
            if is_record:
                if not isinstance(value, dict):
                    return f"{rule.name} must be an object"
                continue
            if not isinstance(value, str):
                return f"{rule.name} must be {'a JSON object' if json else 'text'}"
            if max_length is not None and len(value) > max_length:
                return f"{rule.name} is {len(value)} characters; at most {max_length} allowed"
            if min_length is not None and len(value) < min_length:
                return f"{rule.name} is empty" if not value else f"{rule.name} is too short"
            if pattern is not None and not pattern.fullmatch(value):
                return f"{rule.name} does not match {pattern.pattern}"
            if ip and not is_ip_address(value):
                return f"{rule.name} is not an IPv4 or IPv6 address"
            if max_bytes is not None and utf8_size(value) > max_bytes:
                return f"{rule.name} is {utf8_size(value)} bytes; at most {max_bytes} allowed"
            if json and not value.startswith("{"):
                return f"{rule.name} must be a JSON object"
        return None


class OutputSchema:
    """The CloudTrail schema, prepared for checking and serialising records."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schema = schemas.cloudtrail
        self.validity = AvroValidity(self.schema)
        self.rules = schemas.cloudtrail_fields
        self.record_rules = RecordRules(self.rules)
        self.plan = _serialisation_plan(self.schema["fields"])
        self.json_fields = tuple(rule for rule in self.rules if rule.json_object)
        self.paths: dict[str, str] = {}
        record_paths(self.schema, "eventData", self.schema.get("__named_schemas", {}), self.paths)

    def check(self, record: Mapping[str, Any], *, avro: bool) -> str | None:
        """The first problem of a record (JSON object fields as their text), or None. With
        avro=False only the rules drawn from the schema run (enough for records this module
        builds); avro=True validates with fastavro first."""
        if avro:
            problem = avro_problem(record, self.validity, self.paths)
            if problem is not None:
                return problem
        return self.record_rules.first_problem(record)


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
    output = output_schema()
    try:
        parsed = STRICT_DECODER.decode(event_data)
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
        value = get_path(record, rule.path)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{rule.name} must be a JSON object"
        container = record if len(rule.path) == 1 else record[rule.path[0]]
        container[rule.path[-1]] = compact(value)
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
def output_schema() -> OutputSchema:
    return OutputSchema(load_schemas())


# --- shrinking ----------------------------------------------------------------------------
