"""The shortcuts conversion takes give the plain answers: the IPv6 pattern agrees with Python's
ipaddress, the prepared CloudTrail rules give the same first problem as checking each rule in
turn (also with the converter's constant fields checked once), serialising with fixed members
gives the same text, and decode_strict decodes and fails exactly as the strict decoder does."""

from __future__ import annotations

import ipaddress
import json
from json.encoder import encode_basestring
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from publisher.json_text import STRICT_DECODER, decode_strict
from publisher.schema_check import (
    fixed_plan,
    get_path,
    is_ip_address,
    output_schema,
    serialise,
    utf8_size,
)
from schemas import FieldRule

FAST_PATH_SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_is_ip_address(value: str) -> bool:
    if "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def reference_first_problem(record: Any, rules: tuple[FieldRule, ...]) -> str | None:
    """The rule-by-rule check the prepared rules replace, as it was written before them."""
    for rule in rules:
        path = rule.path
        value = record.get(path[0]) if len(path) == 1 else get_path(record, path)
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
        if rule.ip_address and not reference_is_ip_address(value):
            return f"{rule.name} is not an IPv4 or IPv6 address"
        if rule.max_bytes is not None and utf8_size(value) > rule.max_bytes:
            return f"{rule.name} is {utf8_size(value)} bytes; at most {rule.max_bytes} allowed"
        if rule.json_object and not value.startswith("{"):
            return f"{rule.name} must be a JSON object"
    return None


hextets = st.text("0123456789abcdefABCDEFg", min_size=0, max_size=5)
address_like = (
    st.ip_addresses().map(str)
    | st.ip_addresses(v=6).map(lambda address: address.exploded)
    | st.lists(hextets, min_size=1, max_size=10).map(":".join)
    | st.text("0123456789abcdef:.%", max_size=45)
    | st.text(max_size=12)
)


@FAST_PATH_SETTINGS
@given(value=address_like)
def test_ip_addresses_are_those_ipaddress_reads(value: str) -> None:
    assert is_ip_address(value) == reference_is_ip_address(value)


IPV6_EDGES = [
    *("::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4::5:6:7:8"),
    *("1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7::8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8"),
    *(":1::", "1::2::3", "12345::", "::ffff:1.2.3.4", "fe80::1%eth0", "\uff11::", "1:2:3:4:5:6:7:8\n"),
]


@pytest.mark.parametrize("value", IPV6_EDGES)
def test_ipv6_edges(value: str) -> None:
    assert is_ip_address(value) == reference_is_ip_address(value)


text = st.text(max_size=20) | st.sampled_from(["", "1.0", "2024-11-26T08:00:00Z", "123456789012", "198.51.100.7"])
json_text = st.sampled_from(["{}", '{"a":1}', "[]", "x", "", "{" + "x" * 30_000]) | text
field_values = st.none() | text | json_text | st.integers() | st.lists(st.integers(), max_size=2)
identities = (
    st.none()
    | st.integers()
    | st.fixed_dictionaries({}, optional={"type": field_values, "principalId": field_values, "details": field_values})
)
FIELDS = [rule.path[0] for rule in output_schema().rules if len(rule.path) == 1]
records = st.fixed_dictionaries({}, optional={name: field_values for name in FIELDS if name != "userIdentity"}).flatmap(
    lambda record: identities.map(lambda identity: {**record, "userIdentity": identity})
)
CONSTANT = {
    "userAgent": "falcon-lake/1.0",
    "eventSource": "crowdstrike",
    "recipientAccountId": "123456789012",
    "responseElements": None,
}


@FAST_PATH_SETTINGS
@given(record=records)
def test_prepared_rules_find_the_same_first_problem(record: dict[str, Any]) -> None:
    output = output_schema()
    assert output.record_rules.first_problem(record) == reference_first_problem(record, output.rules)


@FAST_PATH_SETTINGS
@given(record=records)
def test_constant_fields_checked_once_leave_the_first_problem_unchanged(record: dict[str, Any]) -> None:
    output = output_schema()
    rules = output.record_rules.without_constant(CONSTANT)
    assert len(rules.rules) < len(output.rules)
    record.update(CONSTANT)
    assert rules.first_problem(record) == reference_first_problem(record, output.rules)


def test_a_constant_that_breaks_its_rule_keeps_every_rule() -> None:
    rules = output_schema().record_rules
    too_long = {**CONSTANT, "userAgent": "x" * 2000}
    assert rules.without_constant(too_long).rules == rules.rules
    assert rules.without_constant({"userIdentity": {}}).rules == rules.rules  # a record field: not fixed


def reference_serialise(record: Any, fields: list[dict[str, Any]]) -> str:
    """eventData as it was written before the plan: each present member, in schema order."""
    members = []
    for field in fields:
        value = record.get(field["name"])
        if value is None:
            continue
        if isinstance(field["type"], dict) and field["type"].get("type") == "record":
            value = reference_serialise(value, field["type"]["fields"])
        elif not field.get("jsonObject"):
            value = encode_basestring(value)
        members.append(f"{encode_basestring(field['name'])}:{value}")
    return "{" + ",".join(members) + "}"


@FAST_PATH_SETTINGS
@given(record=records)
def test_fixed_members_serialise_as_the_values_would(record: dict[str, Any]) -> None:
    output = output_schema()
    record = {name: value for name, value in record.items() if isinstance(value, str | type(None))}
    record["userIdentity"] = {"type": "t", "principalId": "p", "details": '{"AuditKeyValues":[]}'}
    expected = reference_serialise(record, output.schema["fields"])
    assert serialise(record, output.plan) == expected
    record.update(CONSTANT)
    expected = reference_serialise(record, output.schema["fields"])
    assert serialise(record, fixed_plan(output.plan, CONSTANT)) == expected
    assert '"responseElements"' not in expected and ',"userAgent":"falcon-lake/1.0",' in expected


def _outcome(decode: Any, text: str) -> tuple[str, Any]:
    try:
        return ("value", decode(text))
    except (ValueError, RecursionError) as exc:
        return (type(exc).__name__, str(exc))


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=10,
).map(json.dumps)
texts = (
    json_documents
    | st.tuples(
        st.sampled_from(["", " ", "\n\t", "\ufeff"]), json_documents, st.sampled_from(["", " ", "x", "{}"])
    ).map("".join)
    | st.text(' \t\n[]{}":,0123456789.eE+-truefalsnNaIiy\\u', max_size=30)
)


@FAST_PATH_SETTINGS
@given(text=texts)
def test_decode_strict_is_the_strict_decoder(text: str) -> None:
    assert _outcome(decode_strict, text) == _outcome(STRICT_DECODER.decode, text)
