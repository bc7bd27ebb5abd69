"""JSON as conversion reads and writes it: a strict decoder (no NaN, no infinities), a compact
encoder (no spaces, UTF-8 not \\u-escaped) and the small text helpers every conversion step uses."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.decoder import WHITESPACE, JSONDecodeError  # type: ignore[attr-defined]
from json.encoder import encode_basestring
from typing import Any

CUT_MARKER = "…"
_MESSAGE_LIMIT = 300


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_SCAN: Callable[[str, int], tuple[Any, int]] = STRICT_DECODER.scan_once  # type: ignore[attr-defined]
_SKIP_SPACE = WHITESPACE.match


def decode_strict(text: str) -> Any:
    """`STRICT_DECODER.decode(text)`: the same value, or the same JSONDecodeError. It runs the
    steps of JSONDecoder.decode and raw_decode itself, which saves a sixth of the decoding time."""
    try:
        value, end = _SCAN(text, _SKIP_SPACE(text, 0).end())
    except StopIteration as exc:
        raise JSONDecodeError("Expecting value", text, exc.value) from None
    end = _SKIP_SPACE(text, end).end()
    if end != len(text):
        raise JSONDecodeError("Extra data", text, end)
    return value


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


compact = _compact_encoder()


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def json_type(value: object) -> str:
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


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + CUT_MARKER
