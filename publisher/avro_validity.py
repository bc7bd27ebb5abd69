"""The yes/no answer of fastavro's validation, compiled once per schema into small closures.

`fastavro.validation.validate(datum, schema, raise_errors=False)` walks the schema anew on every
call (re-parsing it, dispatching on type names, building field names). `AvroValidity(schema)`
walks it once and keeps a closure per schema node, so a call only looks at the datum. The rules
are fastavro's own (fastavro/_validation.pyx), applied in fastavro's order, so that even an
exception from an odd object comes where fastavro would raise it:

- null: None; boolean: a bool; string: a str; bytes: bytes or bytearray;
- int / long: a `numbers.Integral` in the signed 32 / 64-bit range, not a bool;
- float / double: an int, float or `numbers.Real`, not a bool;
- enum: `datum in symbols`;
- array: a Sequence or array.array other than str, every item valid;
- map: a Mapping whose keys are all str (all checked before any value), every value valid;
- record: a Mapping without a contradicting "-type" key, each field (in order) valid, a missing
  field read as its default, or None without one; other keys are ignored;
- union: a (name, value) tuple picks its branch by name; any other datum is valid when a branch,
  tried in order, accepts it.

Every node the compiler does not handle itself (logical types, fixed, a record name without a
namespace, unknown or malformed types, and tuples reaching a union) is answered by fastavro's
own validation of that node, so the answer is never a different one.
"""

from __future__ import annotations

import array
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastavro import parse_schema
from fastavro.const import INT_MAX_VALUE, INT_MIN_VALUE, LONG_MAX_VALUE, LONG_MIN_VALUE
from fastavro.validation import _validate, validate

Check = Callable[[Any], bool]
# A node's answer for a value of one exact type: True or False whatever the value, or a check
# that is right for values of that type (and skips the type tests the full check makes). Only
# the types JSON decodes to are listed; anything else takes the node's full check.
Answer = bool | Check
Dispatch = dict[type, Answer]

JSON_TYPES: tuple[type, ...] = (type(None), bool, int, float, str, list, dict)
# validate(raise_errors=False) with its defaults: not strict, tuple notation on
_OPTIONS = {"strict": False, "disable_tuple_notation": False}
# Type names fastavro dispatches on itself before it looks a name up among the named types.
_RESERVED_NAMES = frozenset({"union", "error_union", "record", "error", "request", "array", "map", "enum", "fixed"})


def _is_null(datum: Any) -> bool:
    return datum is None


def _is_boolean(datum: Any) -> bool:
    return isinstance(datum, bool)


def _is_string(datum: Any) -> bool:
    return isinstance(datum, str)


def _is_bytes(datum: Any) -> bool:
    return isinstance(datum, bytes | bytearray)


def _is_number(datum: Any) -> bool:
    return isinstance(datum, int | float | numbers.Real) and not isinstance(datum, bool)


def _integer(low: int, high: int) -> tuple[Check, Check]:
    """The full check of an int or long, and the one for a plain int."""

    def check(datum: Any) -> bool:
        return (
            isinstance(datum, int | numbers.Integral)
            and low <= datum <= high  # type: ignore[operator]
            and not isinstance(datum, bool)
        )

    def check_int(datum: int) -> bool:
        return low <= datum <= high

    return check, check_int


def _only(accepted: Mapping[type, Answer]) -> Dispatch:
    """A dispatch that answers False for every JSON type but those given."""
    return {exact: accepted.get(exact, False) for exact in JSON_TYPES}


def _primitives() -> dict[str, tuple[Check, Dispatch]]:
    check_int, int_only = _integer(INT_MIN_VALUE, INT_MAX_VALUE)
    check_long, long_only = _integer(LONG_MIN_VALUE, LONG_MAX_VALUE)
    return {
        "null": (_is_null, _only({type(None): True})),
        "boolean": (_is_boolean, _only({bool: True})),
        "string": (_is_string, _only({str: True})),
        "bytes": (_is_bytes, _only({})),
        "int": (check_int, _only({int: int_only})),
        "long": (check_long, _only({int: long_only})),
        "float": (_is_number, _only({int: True, float: True})),
        "double": (_is_number, _only({int: True, float: True})),
    }


_PRIMITIVES = _primitives()
# Answers that cannot raise on a value of their type (an int compared with two ints), so a
# union may skip them when a later branch accepts the type whatever the value.
_NEVER_RAISE = frozenset({_PRIMITIVES["int"][1][int], _PRIMITIVES["long"][1][int]})


class _Node:
    """One compiled schema node: its full check, its answers by exact type, and whether every
    node under it was compiled (False where one asks fastavro)."""

    __slots__ = ("check", "dispatch", "native")

    def __init__(self, check: Check, dispatch: Dispatch, *, native: bool = True) -> None:
        self.check = check
        self.dispatch = dispatch
        self.native = native


def _first_accepting(answers: list[Answer]) -> Answer:
    """A union's answer for one type, from its branches' answers for it, in order."""
    answers = [answer for answer in answers if answer is not False]
    if not answers:
        return False
    if True in answers and all(answer in _NEVER_RAISE for answer in answers[: answers.index(True)]):
        return True  # e.g. an int for ["null", "long", "double"]: the double branch takes any int
    if len(answers) == 1:
        return answers[0]
    candidates = tuple(answers)

    def check(datum: Any) -> bool:
        return any(answer is True or answer(datum) for answer in candidates)  # type: ignore[operator]

    return check


class _Compiler:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.records: dict[tuple[int, str], list[Check]] = {}

    def fastavro(self, schema: Any, field: str) -> Check:
        """fastavro's validation of this node, exactly as validate() runs it there."""
        named = self.named

        def check(datum: Any) -> bool:
            return bool(_validate(datum, schema, named, field, False, _OPTIONS))

        return check

    def fallback(self, schema: Any, field: str) -> _Node:
        return _Node(self.fastavro(schema, field), {}, native=False)

    def node(self, schema: Any, field: str) -> _Node:
        """`field` is the name fastavro would carry at this node; only fallbacks need it."""
        if isinstance(schema, list):
            return self.union(schema, field)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _Node(*_PRIMITIVES[schema])
            target = self.named.get(schema)
            if isinstance(target, dict) and schema not in _RESERVED_NAMES:
                return self.node(target, field)
            return self.fallback(schema, field)
        if not isinstance(schema, dict):
            return self.fallback(schema, field)
        kind = schema.get("type")
        if not isinstance(kind, str) or schema.get("logicalType"):
            return self.fallback(schema, field)
        if kind in _PRIMITIVES:
            return _Node(*_PRIMITIVES[kind])
        if kind in ("record", "error"):
            return self.record(schema, field)
        if kind == "array" and "items" in schema:
            return self.array(self.node(schema["items"], field))
        if kind == "map" and "values" in schema:
            return self.map(self.node(schema["values"], field))
        if kind == "enum" and isinstance(schema.get("symbols"), list):
            return self.enum(schema["symbols"])
        return self.fallback(schema, field)

    def union(self, branches: list[Any], field: str) -> _Node:
        nodes = [self.node(branch, field) for branch in branches]
        checks = tuple(node.check for node in nodes)
        tuple_notation = self.fastavro(branches, field)
        dispatch = {
            exact: _first_accepting([node.dispatch.get(exact, node.check) for node in nodes]) for exact in JSON_TYPES
        }

        def check(datum: Any) -> bool:
            if isinstance(datum, tuple):
                return tuple_notation(datum)
            return any(branch(datum) for branch in checks)

        return _Node(check, dispatch, native=all(node.native for node in nodes))

    def record(self, schema: dict[str, Any], field: str) -> _Node:
        name = schema.get("name")
        fields = schema.get("fields")
        if (
            not isinstance(name, str)
            or "." not in name  # without a namespace, its full name depends on where it sits
            or not isinstance(fields, list)
            or not all(
                isinstance(item, dict) and "type" in item and isinstance(item.get("name"), str) for item in fields
            )
        ):
            return self.fallback(schema, field)
        key = (id(schema), field)
        if key in self.records:  # a recursive type: call the record being compiled
            cell = self.records[key]
            return _Node(lambda datum: cell[0](datum), _only({dict: lambda datum: cell[1](datum)}))
        cell = self.records[key] = []
        nodes = [self.node(item["type"], f"{name}.{item['name']}") for item in fields]
        # (field, value when missing, answers by type, full check)
        steps = tuple(
            (item["name"], item.get("default"), node.dispatch, node.check)
            for item, node in zip(fields, nodes, strict=True)
        )

        def check_dict(datum: Mapping[str, Any]) -> bool:
            if "-type" in datum and datum["-type"] != name:
                return False
            get = datum.get
            for field_name, missing, dispatch, full in steps:
                value = get(field_name, missing)
                answer = dispatch.get(type(value), full)
                if answer is not True and (answer is False or not answer(value)):
                    return False
            return True

        def check(datum: Any) -> bool:
            return isinstance(datum, Mapping) and check_dict(datum)

        cell += [check, check_dict]
        return _Node(check, _only({dict: check_dict}), native=all(node.native for node in nodes))

    def array(self, items: _Node) -> _Node:
        dispatch, full = items.dispatch, items.check

        def check_list(datum: Any) -> bool:
            for item in datum:
                answer = dispatch.get(type(item), full)
                if answer is not True and (answer is False or not answer(item)):
                    return False
            return True

        def check(datum: Any) -> bool:
            return isinstance(datum, Sequence | array.array) and not isinstance(datum, str) and check_list(datum)

        return _Node(check, _only({list: check_list}), native=items.native)

    def map(self, values: _Node) -> _Node:
        dispatch, full = values.dispatch, values.check

        def check_mapping(datum: Any) -> bool:
            for key in datum:
                if not isinstance(key, str):
                    return False
            for value in datum.values():
                answer = dispatch.get(type(value), full)
                if answer is not True and (answer is False or not answer(value)):
                    return False
            return True

        def check(datum: Any) -> bool:
            return isinstance(datum, Mapping) and check_mapping(datum)

        return _Node(check, _only({dict: check_mapping}), native=values.native)

    def enum(self, symbols: list[Any]) -> _Node:
        def check(datum: Any) -> bool:
            return datum in symbols

        return _Node(check, {})


class AvroValidity:
    """`validity(datum)` answers what `fastavro.validation.validate(datum, schema,
    raise_errors=False)` answers (and raises what it raises), several times faster.

    Build it once per parsed schema; the schema must not change afterwards. `native` is False
    when some node of the schema is answered by fastavro itself.
    """

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        named: dict[str, Any] = {}
        try:
            parsed = parse_schema(schema, named)  # as validate() does on every call
        except Exception:  # validate() raises the same on every call: let it
            self._dispatch: Dispatch = {}
            self._check: Check = self._fastavro
            self.native = False
            return
        node = _Compiler(named).node(parsed, "")
        self._dispatch = node.dispatch
        self._check = node.check
        self.native = node.native

    def _fastavro(self, datum: Any) -> bool:
        return bool(validate(datum, self.schema, raise_errors=False))

    def __call__(self, datum: Any) -> bool:
        answer = self._dispatch.get(type(datum), self._check)
        return answer is True or (answer is not False and answer(datum))
