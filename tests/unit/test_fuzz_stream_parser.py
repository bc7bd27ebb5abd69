"""Fuzzing the feed parser: whatever bytes arrive, in whatever chunks, nothing raises, nothing stalls,
and every non-blank line ends as an event (exact bytes) or a malformed record with a reason."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.ndjson import FalconEvent, LineSplitter, Malformed, parse_line

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def event_lines(draw: st.DrawFn) -> bytes:
    """A line that is a valid event, an event with wrong types, or arbitrary JSON or bytes."""
    kind = draw(st.sampled_from(["event", "wrong-types", "json", "bytes", "huge-number", "deep"]))
    if kind == "event":
        offset = draw(st.integers(min_value=0, max_value=2**63))
        body = {"metadata": {"offset": offset, "eventType": draw(st.text(max_size=30))}, "event": draw(json_values)}
        return json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    if kind == "wrong-types":
        body = {"metadata": {"offset": draw(json_values), "eventType": draw(json_values)}, "event": draw(json_values)}
        return json.dumps(body).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "huge-number":
        return b'{"metadata": {"offset": ' + b"9" * draw(st.integers(1, 5000)) + b"}}"
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        return b'{"a":' * depth + b"1" + b"}" * depth
    return draw(st.binary(max_size=300)).replace(b"\n", b" ")


def run_stream(lines: list[bytes], cuts: list[int], max_line: int = 64 * 1024) -> list[FalconEvent | Malformed]:
    data = b"\n".join(lines) + b"\n"
    positions = sorted({min(len(data), c) for c in cuts} | {0, len(data)})
    splitter = LineSplitter(max_line_bytes=max_line)
    out: list[FalconEvent | Malformed] = []
    for start, end in itertools.pairwise(positions):
        for line in splitter.feed(data[start:end]):
            out.extend([line] if isinstance(line, Malformed) else parse_line(line))
    assert splitter.pending() == b""
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_lines(), max_size=12), st.lists(st.integers(min_value=0, max_value=20_000), max_size=10))
def test_every_line_has_a_fate_and_valid_events_keep_their_bytes(lines: list[bytes], cuts: list[int]) -> None:
    out = run_stream(lines, cuts)
    assert all(isinstance(item, FalconEvent | Malformed) for item in out)
    assert all(item.reason for item in out if isinstance(item, Malformed))
    non_blank = [line.strip(b" \t\r") for line in lines if line.strip(b" \t\r")]
    # One line gives one outcome, unless objects were run together on it (then more).
    assert len(out) >= len(non_blank)
    events = [item for item in out if isinstance(item, FalconEvent)]
    for event in events:
        assert isinstance(event.offset, int) and event.offset >= 0
        assert json.loads(event.raw)["metadata"]["offset"] == event.offset


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=2, max_value=10), st.binary(min_size=1, max_size=50))
def test_ten_megabyte_lines_are_cut_off_and_the_stream_carries_on(megabytes: int, filler: bytes) -> None:
    good = json.dumps({"metadata": {"offset": 5, "eventType": "X"}}).encode()
    big = (filler.replace(b"\n", b"x") * (megabytes * 1024 * 1024 // len(filler) + 1))[: megabytes * 1024 * 1024]
    out = run_stream([big, good], cuts=[4096 * i for i in range(1, 50)], max_line=1024 * 1024)
    assert isinstance(out[0], Malformed) and "longer than" in out[0].reason
    assert len(out[0].raw) == 1024 * 1024  # memory stays bounded: only the first MiB is kept
    assert isinstance(out[-1], FalconEvent) and out[-1].offset == 5
