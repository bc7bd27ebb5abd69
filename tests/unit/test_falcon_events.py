"""The Falcon emulator's event generator, event files, faults and flags: no sockets."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from emulators.falcon import (
    FAULT_NAMES,
    FalconEmulator,
    FalconEmulatorConfig,
    Faults,
    GeneratedSource,
    build_parser,
    config_from_args,
)
from emulators.falcon_events import (
    AUTH_OPERATIONS,
    AUTH_SERVICE,
    NON_AUDIT_TYPES,
    STREAMING_SERVICE,
    EventFileError,
    EventGenerator,
    load_event_file,
    write_event_file,
)

SAMPLE = 2000


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return list(EventGenerator(1).events("0", 1, SAMPLE))


def test_same_settings_give_the_same_bytes_in_any_order() -> None:
    first = EventGenerator(7, base_time_ms=1_700_000_000_000)
    forward = [first.line("0", o) for o in range(1, 300)]
    second = EventGenerator(7, base_time_ms=1_700_000_000_000)
    backward = [second.line("0", o) for o in reversed(range(1, 300))]
    assert forward == list(reversed(backward))


def test_seed_and_feed_change_the_events() -> None:
    base = [EventGenerator(1).line("0", o) for o in range(1, 50)]
    assert base != [EventGenerator(2).line("0", o) for o in range(1, 50)]
    assert base != [EventGenerator(1).line("1", o) for o in range(1, 50)]


def test_envelope_carries_offset_type_and_times() -> None:
    gen = EventGenerator(3, base_time_ms=1_732_608_000_000, spacing_ms=250.0, first_offset=100)
    for offset in range(100, 400):
        event = gen.event("0", offset)
        meta = event["metadata"]
        assert meta["offset"] == offset
        assert re.fullmatch(r"[0-9a-f]{32}", meta["customerIDString"])
        assert meta["customerIDString"] == gen.cid
        assert meta["version"] == "1.0"
        assert meta["eventType"] == gen.event_type("0", offset)
        assert meta["eventCreationTime"] == 1_732_608_000_000 + (offset - 100) * 250 == gen.created_ms(offset)
        if "UTCTimestamp" in event["event"]:
            assert event["event"]["UTCTimestamp"] == meta["eventCreationTime"] // 1000


def test_mix_has_every_authentication_operation(sample: list[dict[str, Any]]) -> None:
    auth = [
        e["event"]
        for e in sample
        if e["metadata"]["eventType"] == "AuthActivityAuditEvent" and e["event"]["ServiceName"] == AUTH_SERVICE
    ]
    assert {e["OperationName"] for e in auth} == set(AUTH_OPERATIONS)
    assert any(e["Success"] is False for e in auth)
    assert sum(e["Success"] for e in auth) > len(auth) * 0.7
    failed = [e for e in auth if not e["Success"]]
    assert all(any(kv["Key"] == "reason" for kv in e["AuditKeyValues"]) for e in failed)


def test_mix_has_user_activity_streaming_noise_and_other_types(sample: list[dict[str, Any]]) -> None:
    types = {e["metadata"]["eventType"] for e in sample}
    assert set(NON_AUDIT_TYPES) <= types
    user_activity = [e["event"] for e in sample if e["metadata"]["eventType"] == "UserActivityAuditEvent"]
    assert ("detection_update", "detections") in {(e["OperationName"], e["ServiceName"]) for e in user_activity}
    noise = {e["event"]["OperationName"] for e in sample if e["event"].get("ServiceName") == STREAMING_SERVICE}
    assert noise == {"streamStarted", "streamStopped"}
    detection = next(e["event"] for e in sample if e["metadata"]["eventType"] == "DetectionSummaryEvent")
    assert {"DetectId", "ComputerName", "Severity", "SHA256String", "FalconHostLink"} <= set(detection)
    audit_share = sum(e["metadata"]["eventType"].endswith("AuditEvent") for e in sample) / len(sample)
    assert 0.6 < audit_share < 0.85


def test_audit_bodies_have_the_documented_fields(sample: list[dict[str, Any]]) -> None:
    audit = [e["event"] for e in sample if e["metadata"]["eventType"].endswith("AuditEvent")]
    for body in audit:
        assert {"UserId", "UserIp", "OperationName", "ServiceName", "UTCTimestamp", "AuditKeyValues"} <= set(body)
        assert all(set(kv) == {"Key", "ValueString"} for kv in body["AuditKeyValues"])
    shapes = {type(b.get("Attributes")).__name__ for b in audit}
    assert shapes == {"dict", "list", "NoneType"}
    assert sum(isinstance(b.get("Attributes"), dict) for b in audit) > len(audit) / 2


def test_user_ips_are_ipv4_and_ipv6_and_names_unicode(sample: list[dict[str, Any]]) -> None:
    audit = [e["event"] for e in sample if "UserIp" in e["event"]]
    versions = {ipaddress.ip_address(b["UserIp"]).version for b in audit}
    assert versions == {4, 6}
    assert any(not b["UserId"].isascii() for b in audit)
    # Raw UTF-8 on the wire, not \\u escapes: consumers must keep bytes as they are.
    lines = [EventGenerator(1).line("0", o) for o in range(1, 200)]
    assert any("ü".encode() in line or "田".encode() in line for line in lines)
    assert all(b"\\u" not in line for line in lines)


def test_event_size_pads_events_to_about_that_size() -> None:
    gen = EventGenerator(1, event_size=1024)
    sizes = [len(gen.line("0", o)) for o in range(1, 1000)]
    assert min(sizes) >= 900
    assert 950 <= sum(sizes) / len(sizes) <= 1200
    padded = gen.event("0", 1)
    assert json.dumps(padded)  # still one valid JSON object


def test_generated_source_reads_filters_and_schedules() -> None:
    config = FalconEmulatorConfig(events=100, first_offset=10)
    source = GeneratedSource(config, start_wall=1_700_000_000.0)
    events, next_pos = source.read("0", 0, 5, None, 0.0)
    assert [e[0] for e in events] == [10, 11, 12, 13, 14] and next_pos == 15
    assert source.head("0", 0.0) == 110
    assert source.read("0", 110, 5, None, 0.0) == ([], 110)
    only = frozenset({"DetectionSummaryEvent"})
    filtered, _ = source.read("0", 10, 1000, only, 0.0)
    assert filtered and all(e[1] == "DetectionSummaryEvent" for e in filtered)
    assert source.next_due("0", 50) is None
    # The backlog was created before start, at most one event per second.
    assert source.generator.created_ms(109) < 1_700_000_000_000

    rated = GeneratedSource(FalconEmulatorConfig(rate=10.0), start_wall=1_700_000_000.0)
    rated.start_mono = 1000.0
    assert rated.head("0", 1000.55) == 1 + 5
    assert rated.next_due("0", 7) == pytest.approx(1000.7)
    assert rated.generator.created_ms(11) == 1_700_000_001_000


def test_emulator_exposes_the_bytes_it_serves_without_starting() -> None:
    emulator = FalconEmulator(FalconEmulatorConfig(seed=5, start_time=1_700_000_000, feeds=2))
    twin = FalconEmulator(FalconEmulatorConfig(seed=5, start_time=1_700_000_000, feeds=2))
    assert emulator.event_line("1", 42) == twin.event_line("1", 42)
    assert json.loads(emulator.event_line("1", 42))["metadata"]["offset"] == 42
    with pytest.raises(KeyError):
        emulator.event_line("2", 1)


def test_event_file_round_trip_and_record_lines(tmp_path: Path) -> None:
    gen = EventGenerator(1)
    path = tmp_path / "events.ndjson"
    write_event_file(path, [("0", gen.line("0", 5)), ("1", gen.line("1", 9)), ("0", gen.line("0", 3))])
    with path.open("a") as handle:
        handle.write("\n")
        handle.write(json.dumps({"feed": "1", "offset": 12, "event": gen.event("1", 12)}) + "\n")
        handle.write(json.dumps({"feed": "1", "offset": 13, "malformed": True, "line": '{"meta'}) + "\n")
    feeds = load_event_file(path)
    assert sorted(feeds) == ["0", "1"]
    assert [e.offset for e in feeds["0"]] == [3, 5]
    assert feeds["0"][0].line == gen.line("0", 3)  # a line without "feed" is served byte for byte
    assert [e.offset for e in feeds["1"]] == [9, 12]
    assert json.loads(feeds["1"][0].line) == gen.event("1", 9)
    assert feeds["1"][1].event_type == gen.event_type("1", 12)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", ":1: not a JSON object"),
        ('{"metadata": {"offset": "x"}, "event": {}}\n', ":1: the event has no integer metadata.offset"),
        ('{"hello": 1}\n', ":1: neither a Falcon event"),
        ('{"metadata": {"offset": 1}}\n\n{"metadata": {"offset": 1}}\n', ":3: offset 1 of feed 0 appears twice"),
    ],
)
def test_event_file_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text(content)
    with pytest.raises(EventFileError, match=re.escape(message)):
        load_event_file(path)


def test_missing_event_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="cannot read event file"):
        load_event_file(tmp_path / "nope.ndjson")


def test_faults_update_validates_names_and_values() -> None:
    faults = Faults().updated({"disconnect-every": 3, "idle_gap_seconds": 1, "refresh_404": True})
    assert (faults.disconnect_every, faults.idle_gap_seconds, faults.refresh_404) == (3, 1.0, 1)
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        Faults().updated({"explode": 1})
    with pytest.raises(ValueError, match="malformed_every needs a whole number"):
        Faults().updated({"malformed_every": 1.5})
    with pytest.raises(ValueError, match=">= 0"):
        Faults().updated({"feed_401_every": -1})
    emulator = FalconEmulator(FalconEmulatorConfig())
    assert emulator.set_faults(token_5xx_every=2).token_5xx_every == 2
    assert emulator.set_faults({"reset": True, "malformed_every": 9}) == Faults(malformed_every=9)


def test_flags_map_to_the_config() -> None:
    args = build_parser().parse_args(
        [
            "--port=0",
            "--feeds=3",
            "--events=50",
            "--event-size=1024",
            "--session-ttl=2",
            "--start-time=2026-01-01T00:00:00Z",
            "--disconnect-every=7",
            "--refresh-404",
            "--idle-gap-every=4",
            "--idle-gap-seconds=0.5",
        ]
    )
    config = config_from_args(args)
    assert (config.port, config.feeds, config.events, config.event_size, config.session_ttl) == (0, 3, 50, 1024, 2.0)
    assert config.start_time == 1_767_225_600.0
    assert config.faults == Faults(disconnect_every=7, refresh_404=1, idle_gap_every=4, idle_gap_seconds=0.5)
    assert config_from_args(build_parser().parse_args(["--refresh-404", "3"])).faults.refresh_404 == 3
    assert config_from_args(build_parser().parse_args([])) == FalconEmulatorConfig()


def test_help_documents_every_fault_flag() -> None:
    text = build_parser().format_help()
    for name in FAULT_NAMES:
        assert "--" + name.replace("_", "-") in text
