"""The falcon.* headers every record of the events topic carries, so consumers route without parsing JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FEED = "falcon.feed"
OFFSET = "falcon.offset"
EVENT_TYPE = "falcon.event_type"
CID = "falcon.cid"
CREATED_MS = "falcon.created_ms"
# How many partitions the topic had when the ingestor chose this record's partition (see ingestor/resume.py).
PARTITIONS = "falcon.partitions"
# Set by `falcon-lake dlq redrive` ("<dlq partition>:<dlq offset>"): the record is an old event sent again,
# so its falcon.offset says nothing about where the ingestor resumes.
REDRIVEN_FROM = "falcon.redriven_from"

# What confluent-kafka hands back and accepts.
KafkaHeaders = list[tuple[str, str | bytes | None]]


def _items(headers: Any) -> Iterable[tuple[str, Any]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def first_values(headers: Any) -> dict[str, Any]:
    """Each header's first non-empty value by name (one pass; read many names with `text_of`)."""
    values: dict[str, Any] = {}
    for key, value in _items(headers):
        if value is not None and key not in values:
            values[key] = value
    return values


def text_of(value: Any) -> str | None:
    """A header value as text (UTF-8, replacing bad bytes); None stays None."""
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def int_of(value: Any) -> int | None:
    """A header value as an integer; None when absent or not a number."""
    text = text_of(value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def header_text(headers: Any, name: str) -> str | None:
    """The first value of header `name` as text (UTF-8, replacing bad bytes), or None."""
    for key, value in _items(headers):
        if key == name and value is not None:
            return text_of(value)
    return None


def header_int(headers: Any, name: str) -> int | None:
    for key, value in _items(headers):
        if key == name and value is not None:
            return int_of(value)
    return None


def as_bytes_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """Headers as (name, bytes) pairs, dropping empty values."""
    pairs: list[tuple[str, bytes]] = []
    for key, value in _items(headers):
        if value is None:
            continue
        pairs.append((key, value if isinstance(value, bytes) else str(value).encode()))
    return pairs
