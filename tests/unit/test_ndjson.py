"""The feed parser: every line ends as an event (exact bytes) or a malformed record with a reason."""

from __future__ import annotations

import json

from falcon_lake.backoff import Backoff
from falcon_lake.partitioner import murmur2, partition_for
from ingestor.ndjson import FalconEvent, LineSplitter, Malformed, parse_final_remainder, parse_line


def event(offset: int, **extra: object) -> bytes:
    body = {
        "metadata": {
            "customerIDString": "0123456789abcdef0123456789abcdef",
            "offset": offset,
            "eventType": "AuthActivityAuditEvent",
            "eventCreationTime": 1732608000123,
            "version": "1.0",
        },
        "event": {"UserId": "ünïcode@example.com", **extra},
    }
    return json.dumps(body, ensure_ascii=False).encode()


def parse_stream(chunks: list[bytes]) -> list[FalconEvent | Malformed]:
    splitter = LineSplitter(max_line_bytes=4096)
    out: list[FalconEvent | Malformed] = []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if isinstance(line, Malformed):
                out.append(line)
            else:
                out.extend(parse_line(line))
    return out


def test_exact_bytes_and_metadata() -> None:
    raw = event(7)
    [parsed] = parse_stream([raw + b"\n"])
    assert isinstance(parsed, FalconEvent)
    assert parsed.raw == raw and parsed.offset == 7 and parsed.event_type == "AuthActivityAuditEvent"
    assert parsed.cid == "0123456789abcdef0123456789abcdef" and parsed.created_ms == 1732608000123


def test_blank_lines_crlf_and_lines_split_across_chunks() -> None:
    data = b"\r\n\n" + event(1) + b"\r\n\n   \n" + event(2) + b"\n" + event(3) + b"\n"
    for size in (1, 3, 17, 1000):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        parsed = parse_stream(chunks)
        assert [p.offset for p in parsed if isinstance(p, FalconEvent)] == [1, 2, 3]
        assert all(isinstance(p, FalconEvent) for p in parsed)
        assert parsed[0].raw == event(1)


def test_objects_without_newline_between_them() -> None:
    parsed = parse_stream([event(1) + event(2) + b" " + event(3) + b"\n"])
    assert [p.offset for p in parsed if isinstance(p, FalconEvent)] == [1, 2, 3]
    assert [p.raw for p in parsed if isinstance(p, FalconEvent)] == [event(1), event(2), event(3)]


def test_the_remainder_of_a_clean_end_yields_its_complete_events_and_says_whether_it_was_whole() -> None:
    assert parse_final_remainder(event(9)) == ([parse_line(event(9))[0]], True)  # type: ignore[list-item]
    events, whole = parse_final_remainder(b"  " + event(9) + event(10) + b"\r")
    assert [e.offset for e in events] == [9, 10] and whole
    events, whole = parse_final_remainder(event(9) + event(10)[:-1])
    assert [e.offset for e in events] == [9] and not whole
    assert parse_final_remainder(event(9)[:25]) == ([], False)
    assert parse_final_remainder(b"12") == ([], False)  # JSON, but no event: read again, never dropped


def test_malformed_lines_have_reasons_and_do_not_stop_the_stream() -> None:
    lines = [
        event(1),
        b'{"metadata": {"offset": 2, "eventType": "X"',  # truncated
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        b'{"event": {}}',
        b'{"metadata": {"offset": -4}}',
        b'{"metadata": {"offset": "5"}}',
        b"[" * 1500 + b"]" * 1500,
        event(9),
    ]
    parsed = parse_stream([b"\n".join(lines) + b"\n"])
    good = [p.offset for p in parsed if isinstance(p, FalconEvent)]
    bad = [p for p in parsed if isinstance(p, Malformed)]
    assert good == [1, 9]
    assert len(bad) == 7
    reasons = " | ".join(b.reason for b in bad)
    for expected in ("invalid JSON", "UTF-8", "not a JSON object", "no metadata", "offset", "nested too deeply"):
        assert expected in reasons
    assert bad[1].raw == b"\xff\xfe not utf-8"


def test_oversized_line_is_reported_once_and_memory_stays_bounded() -> None:
    splitter = LineSplitter(max_line_bytes=1000)
    out: list[bytes | Malformed] = []
    for _ in range(100):
        out.extend(splitter.feed(b"x" * 500))
    out.extend(splitter.feed(b"tail\n" + event(4) + b"\n"))
    malformed = [o for o in out if isinstance(o, Malformed)]
    assert len(malformed) == 1 and len(malformed[0].raw) == 1000
    assert out[-1] == event(4)
    assert len(splitter.pending()) == 0


def test_murmur2_matches_kafka_reference_values() -> None:
    # Values from Kafka's UtilsTest.testMurmur2 (as signed ints in Java).
    cases = {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829,
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    }
    for text, signed in cases.items():
        assert murmur2(text.encode()) == signed & 0xFFFFFFFF
    assert partition_for("0", 3) == partition_for("0", 3)
    assert {partition_for(str(i), 3) for i in range(20)} == {0, 1, 2}


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=1, cap_s=8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays[0] <= 1 and max(delays) <= 8 and delays[-1] >= 4
    assert backoff.next_delay(retry_after=30) == 30
    backoff.reset()
    assert backoff.next_delay() <= 1
