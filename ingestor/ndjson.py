"""Splitting the Falcon feed body into events.

The body is newline-delimited JSON, but a robust reader also takes blank lines, CRLF,
lines split across network chunks, several objects on one line with no newline between
them, and lines that are not JSON at all. Every input line ends in exactly one outcome:
a FalconEvent (its exact bytes plus the metadata the ingestor needs) or a Malformed
record (the bytes and the reason), never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_LINE_BYTES = 16 * 1024 * 1024
_decoder = json.JSONDecoder()
# The C scanner behind json.loads; calling it directly skips the wrapper's per-call overhead.
_scan_once: Callable[[str, int], tuple[object, int]] = _decoder.scan_once  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class FalconEvent:
    raw: bytes
    offset: int
    event_type: str
    cid: str
    created_ms: int | None


@dataclass(frozen=True, slots=True)
class Malformed:
    raw: bytes
    reason: str


class LineSplitter:
    """Turns a stream of byte chunks into complete lines (without the line break).

    A line longer than `max_line_bytes` is reported once as an oversize fragment (the
    first `max_line_bytes` bytes) and the rest of it is skipped, so memory stays bounded.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> Iterator[bytes | Malformed]:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            piece = chunk[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                self._buffer.clear()
                continue
            if self._buffer:
                self._buffer += piece
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = piece
            if len(line) > self._max:
                yield Malformed(line[: self._max], f"line longer than {self._max} bytes")
                continue
            yield line
        rest = chunk[start:]
        if rest and not self._skipping:
            self._buffer += rest
            if len(self._buffer) > self._max:
                yield Malformed(bytes(self._buffer[: self._max]), f"line longer than {self._max} bytes")
                self._buffer.clear()
                self._skipping = True

    def pending(self) -> bytes:
        """What is buffered after the last line break (a line the stream cut short)."""
        return bytes(self._buffer)


def _as_event(raw: bytes, obj: object) -> FalconEvent | Malformed:
    if type(obj) is not dict:
        return Malformed(raw, f"not a JSON object but {type(obj).__name__}")
    metadata = obj.get("metadata")
    if type(metadata) is not dict:
        return Malformed(raw, "no metadata object")
    offset = metadata.get("offset")
    # type() is not isinstance(): a JSON bool is not an offset.
    if type(offset) is not int or offset < 0:
        return Malformed(raw, f"metadata.offset is not a non-negative integer: {str(offset)[:40]!r}")
    event_type = metadata.get("eventType")
    cid = metadata.get("customerIDString")
    created = metadata.get("eventCreationTime")
    return FalconEvent(
        raw,
        offset,
        event_type if type(event_type) is str else "",
        cid if type(cid) is str else "",
        created if type(created) is int else None,
    )


def parse_line(line: bytes) -> list[FalconEvent | Malformed]:
    """The events of one line: none for a blank line, several when objects are run together."""
    line = line.strip(b" \t\r\n")
    if not line:
        return []
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Malformed(line, f"invalid UTF-8 at byte {exc.start}")]
    try:
        # The whole line is still parsed, so it is validated as JSON.
        obj, end = _scan_once(text, 0)
    except RecursionError:
        return [Malformed(line, "JSON nested too deeply")]
    except (ValueError, StopIteration):
        end = -1
    if end == len(text):
        return [_as_event(line, obj)]
    return list(_run_together(text))


def _run_together(text: str) -> Iterator[FalconEvent | Malformed]:
    """Objects run together with no newline ("}{"), or a line that is not JSON: decode one by one."""
    position = 0
    while position < len(text):
        while position < len(text) and text[position] in " \t\r":
            position += 1
        if position >= len(text):
            return
        try:
            obj, end = _decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                reason = exc.msg
            elif isinstance(exc, RecursionError):
                reason = "JSON nested too deeply"
            else:  # e.g. a number beyond Python's int digit limit
                reason = str(exc)[:120]
            yield Malformed(text[position:].encode("utf-8"), f"invalid JSON: {reason}")
            return
        yield _as_event(text[position:end].encode("utf-8"), obj)
        position = end


def parse_final_remainder(rest: bytes) -> tuple[list[FalconEvent], bool]:
    """The complete events in what a cleanly ended stream left after its last line break, and
    whether that was all of it.

    A server may end a stream with a complete object and no final newline: those events count.
    Anything from the first piece that is not a complete event on is left out (False): a
    truncated line is read again when the feed reopens after the last event handed on.
    """
    events: list[FalconEvent] = []
    for item in parse_line(rest):
        if isinstance(item, Malformed):
            return events, False
        events.append(item)
    return events, True
