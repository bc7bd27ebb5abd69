"""Golden tests: a corpus of realistic Falcon events and the exact output expected for each.

tests/data/falcon_events.ndjson holds one input per line (every operation name of
REFERENCE.md §1, failures, unicode, IPv6, missing optional fields, Attributes as list and
object, an oversized event, fields too long, other event types, stream noise, broken lines).
The expected files hold one result per input line, for each preset. Any difference fails.

To accept a deliberate change of the output, regenerate and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_convert_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from publisher.convert import USER_AGENT, AuditEvent, Converter, Rejected
from publisher.filter import EventFilter, Filtered

DATA = Path(__file__).resolve().parent.parent / "data"
CORPUS = DATA / "falcon_events.ndjson"
EXPECTED = {
    "all-user-activity": DATA / "expected_audit_events.ndjson",
    "gateway": DATA / "expected_gateway.ndjson",
}
CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
NOW = 1_732_700_000.0  # a day after the corpus, so the results do not depend on the clock
FEED = "0"
# the expected files name no version, so a release does not change them
USER_AGENT_IN_FILES = "falcon-lake/{version}"


def _result(line: int, result: AuditEvent | Filtered | Rejected) -> dict[str, Any]:
    if isinstance(result, AuditEvent):
        data = json.loads(result.event_data)
        if data.get("userAgent") == USER_AGENT:
            data["userAgent"] = USER_AGENT_IN_FILES
        return {"line": line, "auditEvent": {"id": result.id, "eventData": data}}
    if isinstance(result, Filtered):
        return {"line": line, "filtered": {"rule": result.rule, "detail": result.detail}}
    return {"line": line, "rejected": {"code": result.code, "message": result.message}}


def _convert_corpus(preset: str) -> tuple[list[dict[str, Any]], list[str]]:
    converter = Converter(CHANNEL_ARN, EventFilter.from_preset(preset), now=lambda: NOW)
    results, event_data = [], []
    for number, raw in enumerate(CORPUS.read_bytes().splitlines(), start=1):
        result = converter.convert(raw, FEED)
        results.append(_result(number, result))
        event_data.append(result.event_data if isinstance(result, AuditEvent) else "")
    return results, event_data


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_corpus_converts_exactly_as_expected(preset: str) -> None:
    actual, event_data = _convert_corpus(preset)
    path = EXPECTED[preset]
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text("".join(_compact(item) + "\n" for item in actual), encoding="utf-8")
    expected = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(actual) == len(expected), f"{path.name}: {len(expected)} results expected, got {len(actual)}"
    for want, got, text in zip(expected, actual, event_data, strict=True):
        assert got == want, f"{path.name} line {want['line']} differs"
        if "auditEvent" in want:
            # the exact bytes too: key order and compact separators
            data = want["auditEvent"]["eventData"]
            data["userAgent"] = data["userAgent"].replace(USER_AGENT_IN_FILES, USER_AGENT)
            assert text == _compact(data), f"{path.name} line {want['line']}"


def test_corpus_covers_what_it_claims() -> None:
    """The corpus keeps every case the golden test is meant to pin down."""
    results, _ = _convert_corpus("all-user-activity")
    names = {r["auditEvent"]["eventData"]["eventName"] for r in results if "auditEvent" in r}
    for operation in (
        "userAuthenticate",
        "twoFactorAuthenticate",
        "saml2Assert",
        "createUser",
        "deleteUser",
        "updateUser",
        "activateUser",
        "grantUserRoles",
        "revokeUserRoles",
        "changePassword",
        "resetPassword",
        "detection_update",
    ):
        assert operation in names
    events = [r["auditEvent"]["eventData"] for r in results if "auditEvent" in r]
    assert any(e.get("errorCode") == "AuthenticationFailed" for e in events)
    assert any(e.get("errorCode") == "OperationFailed" for e in events)
    assert any(":" in e.get("sourceIPAddress", "") for e in events)
    assert any(e["additionalEventData"].get("truncated") for e in events)
    assert any(not e["userIdentity"]["principalId"].isascii() for e in events)
    rules = {r["filtered"]["rule"] for r in results if "filtered" in r}
    assert rules == {"event-type", "operation-name"}
    codes = {r["rejected"]["code"] for r in results if "rejected" in r}
    assert codes == {"field-too-long", "field-empty", "invalid-id", "invalid-event", "undecodable"}
    gateway, _ = _convert_corpus("gateway")
    assert {r["filtered"]["rule"] for r in gateway if "filtered" in r} == {"event-type", "service-name"}
