"""The compiled Avro check gives fastavro's answer: for every schema in schemas/ and a set of
synthetic ones, on data that is mostly of the right shape and often wrong (wrong types, bools
for numbers, numbers past 32 and 64 bits, missing fields, extra keys, non-text map keys,
tuples, odd Mapping and Sequence types), `AvroValidity(schema)(datum)` equals
`fastavro.validation.validate(datum, schema, raise_errors=False)`, or raises what it raises."""

from __future__ import annotations

import array
import collections
import decimal
import enum
import fractions
import types
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from publisher.avro_validity import AvroValidity
from publisher.convert import Converter
from publisher.filter import EventFilter
from publisher.schema_check import avro_problem
from schemas import load_schemas

DIFFERENTIAL_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
INT_BOUNDS = (-(2**31) - 1, -(2**31), 2**31 - 1, 2**31)
LONG_BOUNDS = (-(2**63) - 1, -(2**63), 2**63 - 1, 2**63)


class Level(enum.IntEnum):
    LOW = 1
    HUGE = 2**64


class Text(str):
    pass


def _repo_schemas() -> dict[str, Any]:
    loaded = load_schemas()
    found = {"falcon_metadata": loaded.falcon_metadata, "cloudtrail": loaded.cloudtrail}
    found.update({f"falcon_event_{name}": schema for name, schema in loaded.falcon_events.items()})
    found["falcon_audit_key_value"] = loaded.falcon_metadata["__named_schemas"]["falcon.AuditKeyValue"]
    return found


_PRIMITIVE_NAMES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
_SYNTHETIC: dict[str, Any] = {
    **{name: name for name in _PRIMITIVE_NAMES},
    "all_primitives_record": {
        "type": "record",
        "name": "t.AllPrimitives",
        "fields": [{"name": f"f_{name}", "type": name} for name in _PRIMITIVE_NAMES],
    },
    "defaults": {
        "type": "record",
        "name": "t.Defaults",
        "fields": [
            {"name": "text", "type": "string", "default": "x"},
            {"name": "count", "type": "long", "default": 5},
            {"name": "ratio", "type": ["double", "null"], "default": 0.5},
            {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
            {"name": "flag", "type": ["null", "boolean"], "default": None},
            {"name": "required", "type": "int"},
        ],
    },
    "nested": {
        "type": "record",
        "name": "t.Outer",
        "fields": [
            {
                "name": "inner",
                "type": {"type": "record", "name": "Inner", "fields": [{"name": "value", "type": "long"}]},
            },
            {"name": "maybe_inner", "type": ["null", "t.Inner"]},
            {"name": "by_name", "type": {"type": "map", "values": {"type": "array", "items": "t.Inner"}}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "either", "type": ["string", {"type": "array", "items": "int"}, {"type": "map", "values": "int"}]},
        ],
    },
    "linked_list": {
        "type": "record",
        "name": "t.Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "t.Node"]}],
    },
    "no_namespace": {  # its full name (for "-type") depends on where it sits: left to fastavro
        "type": "record",
        "name": "Plain",
        "fields": [{"name": "child", "type": ["null", {"type": "record", "name": "Child", "fields": []}]}],
    },
    "union_of_numbers": ["int", "boolean", "long", "float", "string", "null"],
    "union_of_records": [
        {"type": "record", "name": "t.A", "fields": [{"name": "a", "type": "int"}]},
        {"type": "record", "name": "t.B", "fields": [{"name": "b", "type": "string"}]},
        "null",
    ],
    "array_of_strings": {"type": "array", "items": "string"},
    "array_of_unions": {"type": "array", "items": ["null", "long", {"type": "map", "values": "double"}]},
    "map_of_maps": {"type": "map", "values": {"type": "map", "values": ["string", "null"]}},
    "error": {"type": "error", "name": "t.Failure", "fields": [{"name": "message", "type": "string"}]},
    "fixed_and_logical": {  # answered by fastavro, node by node
        "type": "record",
        "name": "t.Logical",
        "fields": [
            {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "plain", "type": "string"},
        ],
    },
}


def _parsed_synthetic() -> dict[str, Any]:
    parsed = {name: fastavro.parse_schema(schema, {}) for name, schema in _SYNTHETIC.items()}
    parsed["unparsed_record"] = _SYNTHETIC["nested"]  # validate() parses it on every call
    return parsed


SCHEMAS = {**_repo_schemas(), **_parsed_synthetic()}

odd_scalars = st.sampled_from(
    [
        Level.LOW,
        Level.HUGE,
        fractions.Fraction(1, 3),
        decimal.Decimal("1.5"),
        Text("subclass"),
        b"raw",
        bytearray(b"buf"),
        array.array("i", [1, 2]),
        float("nan"),
        float("inf"),
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(INT_BOUNDS + LONG_BOUNDS)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["A", "B", "x", "", "t.Inner", "t.Node", "string", "long", "null"])
    | odd_scalars
)


map_keys = st.text(max_size=6) | st.integers(max_value=9) | st.none() | st.just(("k",)) | st.just(b"k")


def _odd_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
        | st.dictionaries(map_keys, children, max_size=3)
        | st.tuples(st.sampled_from(["string", "long", "null", "t.A", "t.Inner", "int", "x"]), children)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), children, max_size=3).map(types.MappingProxyType)
        | st.dictionaries(st.text(max_size=6), children, max_size=3).map(collections.OrderedDict)
    )


junk = st.recursive(scalars, _odd_containers, max_leaves=12)


def _named(schema: Any, named: dict[str, Any]) -> Any:
    return named.get(schema, schema) if isinstance(schema, str) else schema


def data_for(schema: Any, named: dict[str, Any], depth: int = 4) -> st.SearchStrategy[Any]:
    """Mostly values of the schema's shape (each part of which may still be wrong), sometimes junk."""
    if depth <= 0:
        return junk
    return st.one_of(_shaped(schema, named, depth), _shaped(schema, named, depth), junk)


def _shaped(schema: Any, named: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    schema = _named(schema, named)
    if isinstance(schema, list):
        return st.one_of([data_for(branch, named, depth - 1) for branch in schema])
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if kind == "record" or kind == "error":
        fields = {field["name"]: data_for(field["type"], named, depth - 1) for field in schema["fields"]}
        extras = {"extra": junk, "-type": st.sampled_from([schema["name"], "other.Name"])}
        return st.fixed_dictionaries({}, optional={**fields, **extras})
    if kind == "array":
        return st.lists(data_for(schema["items"], named, depth - 1), max_size=4)
    if kind == "map":
        values = data_for(schema["values"], named, depth - 1)
        return st.dictionaries(st.text(max_size=6), values, max_size=4) | st.dictionaries(map_keys, values, max_size=3)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind in ("int", "long"):
        return st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.sampled_from(INT_BOUNDS + LONG_BOUNDS)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "float": st.floats() | st.integers(),
        "double": st.floats() | st.integers(),
        "bytes": st.binary(max_size=8),
        "string": st.text(max_size=8) | st.uuids().map(str) | st.text(max_size=3).map(Text),
    }.get(kind, junk)


def outcome(check: Any, datum: Any) -> tuple[str, Any]:
    try:
        return ("answer", check(datum))
    except Exception as exc:
        return ("raises", f"{type(exc).__name__}: {exc}")


def assert_same_answer(name: str, datum: Any) -> None:
    schema = SCHEMAS[name]
    expected = outcome(lambda value: validate(value, schema, raise_errors=False), datum)
    assert outcome(AvroValidity(schema), datum) == expected, f"{name}: {datum!r}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@DIFFERENTIAL_SETTINGS
@given(data=st.data())
def test_the_compiled_check_answers_as_fastavro_does(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    named: dict[str, Any] = {}
    fastavro.parse_schema(schema, named)
    assert_same_answer(name, data.draw(data_for(schema, named)))


@pytest.mark.parametrize("value", [*INT_BOUNDS, *LONG_BOUNDS, True, False, 0, 1.0, Level.LOW, Level.HUGE, None])
@pytest.mark.parametrize("name", ["int", "long", "double", "union_of_numbers", "all_primitives_record"])
def test_numbers_at_the_edges(name: str, value: Any) -> None:
    datum = {f"f_{kind}": value for kind in _PRIMITIVE_NAMES} if name == "all_primitives_record" else value
    assert_same_answer(name, datum)


ODD_VALUES = [
    Text("ab"),
    ("string", "x"),
    ("long", True),
    ("t.Inner", {"value": 1}),
    ("x",),
    ("a", 1, 2),
    (1, 2),
    [1, "x", None],
    collections.OrderedDict(value=1, inner={"value": 2}),
    types.MappingProxyType({"value": Level.LOW, "next": None}),
    collections.UserDict({"a": 1}),
    {1: "x"},
    {"-type": "t.Node", "value": 1},
    array.array("q", [1, 2**62]),
    b"ab",
    bytearray(b"abcd"),
    Level.HUGE,
    fractions.Fraction(7, 2),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_odd_python_values(name: str, value: Any) -> None:
    assert_same_answer(name, value)
    assert_same_answer(name, [value])
    assert_same_answer(name, {"value": value, "f_string": value, "inner": value, "text": value, "a": value})


def test_every_schema_of_the_repository_is_compiled_whole() -> None:
    """No node of our own schemas falls back to fastavro, so the speed holds for each."""
    for name, schema in _repo_schemas().items():
        assert AvroValidity(schema).native, name
    assert not AvroValidity(SCHEMAS["fixed_and_logical"]).native
    assert not AvroValidity(SCHEMAS["no_namespace"]).native


def test_a_schema_fastavro_cannot_parse_raises_as_fastavro_does() -> None:
    broken = {"type": "array", "items": "t.Unknown"}
    assert outcome(AvroValidity(broken), []) == outcome(lambda v: validate(v, broken, raise_errors=False), [])
    assert outcome(AvroValidity(broken), [])[0] == "raises"


def test_an_invalid_event_keeps_fastavro_message() -> None:
    converter = Converter("arn:aws:cloudtrail:us-east-1:123456789012:channel/x", EventFilter.from_preset("gateway"))
    validity = converter._metadata_validity
    problem = avro_problem({"customerIDString": "c", "offset": True}, validity, converter._paths)
    assert problem == "metadata.offset: expected integer, got boolean"
    assert (
        avro_problem(
            {"customerIDString": "c", "offset": 1, "eventType": "x", "eventCreationTime": 1, "version": "1"},
            validity,
            converter._paths,
        )
        is None
    )
