"""The shrink rules: what is dropped, in which order, when an optional JSON field is over its
limit (docs/conversion.md, "Limits and shrinking"). Required data is never shrunk: an event whose
required field cannot fit is rejected instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from publisher.json_text import CUT_MARKER, compact, utf8_size

# Markers in additionalEventData saying what was shrunk to fit a limit.
TRUNCATED = "truncated"
REQUEST_PARAMETERS_TRUNCATED = "requestParametersTruncated"
DETAILS_TRUNCATED = "detailsTruncated"


def _member_size(key: str, value: Any) -> int:
    return utf8_size(compact(key)) + 1 + utf8_size(compact(value))


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
    overhead = utf8_size(compact({"AuditKeyValues": []}))
    sizes = [(utf8_size(compact(entry)), index) for index, entry in enumerate(entries)]
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
    total = utf8_size(compact(base))
    if total > max_bytes:
        return compact({**markers, TRUNCATED: True})
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
    text = compact({"raw": raw, **markers, TRUNCATED: True})
    if utf8_size(text) > max_bytes:  # cannot happen when the sums above are right; never exceed anyway
        return compact({**markers, TRUNCATED: True})
    return text


# --- the converter ------------------------------------------------------------------------


def cut(text: str | None, limit: int) -> str | None:
    """A derived text cut to `limit` characters, ending in CUT_MARKER when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARKER)] + CUT_MARKER
