"""The per-event PutAuditEvents rules the emulator applies (and converter tests reuse)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulators.cloudtrail_validation import (
    AcceptedEventData,
    EventError,
    EventErrorCode,
    audit_event_id_problem,
    channel_account,
    event_data_checksum,
    parse_event_data,
    validate_event_data,
)

ACCOUNT = "123456789012"


def event(**changes: Any) -> dict[str, Any]:
    """A valid eventData object, with top-level fields replaced (None removes one)."""
    data: dict[str, Any] = {
        "version": "1.0",
        "userIdentity": {
            "type": "AuthActivityAuditEvent",
            "principalId": "analyst@example.com",
            "details": {"AuditKeyValues": [{"Key": "reason", "ValueString": "invalid code"}]},
        },
        "userAgent": "falcon-lake",
        "eventSource": "crowdstrike",
        "eventName": "twoFactorAuthenticate",
        "eventTime": "2024-11-26T08:00:00Z",
        "UID": "0123456789abcdef0123456789abcdef-0-48643",
        "sourceIPAddress": "198.51.100.20",
        "recipientAccountId": ACCOUNT,
        "additionalEventData": {"raw": {"event": {"Success": False}}},
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def check(data: Any, **kwargs: Any) -> EventError | None:
    return validate_event_data(json.dumps(data), ACCOUNT, **kwargs)


def code_of(data: Any, **kwargs: Any) -> str | None:
    error = check(data, **kwargs)
    return None if error is None else error.code


def test_a_complete_event_is_accepted() -> None:
    assert check(event()) is None


def test_only_the_required_fields_are_enough() -> None:
    minimal = {
        "version": "1.0",
        "userIdentity": {"type": "T", "principalId": "p"},
        "eventSource": "crowdstrike",
        "eventName": "userAuthenticate",
        "eventTime": "2024-02-29T23:59:59Z",
        "UID": "u-1",
        "recipientAccountId": ACCOUNT,
    }
    assert check(minimal) is None


@pytest.mark.parametrize(
    "missing", ["version", "userIdentity", "eventSource", "eventName", "eventTime", "UID", "recipientAccountId"]
)
def test_a_missing_required_field_is_field_not_found(missing: str) -> None:
    error = check(event(**{missing: None}))
    assert error is not None
    assert error.code == "FieldNotFound"
    assert missing in error.message


@pytest.mark.parametrize("missing", ["type", "principalId"])
def test_a_missing_user_identity_field_is_field_not_found(missing: str) -> None:
    identity = {"type": "T", "principalId": "p"}
    del identity[missing]
    error = check(event(userIdentity=identity))
    assert error is not None and error.code == "FieldNotFound"
    assert f"userIdentity.{missing}" in error.message


def test_a_null_required_field_is_not_found() -> None:
    data = event()
    data["eventName"] = None
    assert code_of(data) == "FieldNotFound"


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("version", 256),
        ("userAgent", 1024),
        ("eventSource", 1024),
        ("eventName", 1024),
        ("UID", 1024),
        ("errorCode", 256),
        ("errorMessage", 256),
    ],
)
def test_string_fields_are_limited_in_characters(field: str, limit: int) -> None:
    assert check(event(**{field: "é" * limit})) is None  # characters, not bytes
    error = check(event(**{field: "x" * (limit + 1)}))
    assert error is not None and error.code == "FieldTooLong"
    assert field in error.message


@pytest.mark.parametrize(("field", "limit"), [("type", 128), ("principalId", 1024)])
def test_user_identity_strings_are_limited(field: str, limit: int) -> None:
    identity = {"type": "T", "principalId": "p"}
    assert check(event(userIdentity={**identity, field: "x" * limit})) is None
    assert code_of(event(userIdentity={**identity, field: "x" * (limit + 1)})) == "FieldTooLong"


@pytest.mark.parametrize(
    ("field", "limit"), [("requestParameters", 100_000), ("responseElements", 100_000), ("additionalEventData", 28_000)]
)
def test_object_fields_are_limited_in_bytes_of_compact_json(field: str, limit: int) -> None:
    overhead = len('{"k":""}')
    assert check(event(**{field: {"k": "x" * (limit - overhead)}})) is None
    error = check(event(**{field: {"k": "x" * (limit - overhead + 1)}}))
    assert error is not None and error.code == "FieldTooLong"
    assert field in error.message
    # Multi-byte characters count as their UTF-8 bytes.
    assert code_of(event(**{field: {"k": "é" * (limit // 2)}})) == "FieldTooLong"


def test_a_number_that_grows_when_reserialised_is_still_measured() -> None:
    # 5000 x "1e15" is 20 kB of text but 90 kB as Python re-serialises it.
    assert code_of(event(additionalEventData={"n": [1e15] * 5000})) == "FieldTooLong"


@pytest.mark.parametrize(
    "time",
    ["2024-11-26T08:00:00", "2024-11-26 08:00:00Z", "2024-11-26T08:00:00.123Z", "2024-13-01T00:00:00Z",
     "2023-02-29T00:00:00Z", "2024-11-26T24:00:00Z", "1732608000", "2024-11-26T08:00:00+00:00"],
)  # fmt: skip
def test_event_time_must_be_utc_seconds(time: str) -> None:
    error = check(event(eventTime=time))
    assert error is not None and error.code == "InvalidData"
    assert "eventTime" in error.message


def test_event_time_must_be_a_string() -> None:
    assert code_of(event(eventTime=1732608000)) == "InvalidData"


@pytest.mark.parametrize("address", ["198.51.100.20", "2001:db8::1", "::ffff:192.0.2.1", "0.0.0.0"])
def test_source_ip_accepts_ipv4_and_ipv6(address: str) -> None:
    assert check(event(sourceIPAddress=address)) is None


@pytest.mark.parametrize("address", ["", "256.1.1.1", "example.com", "198.51.100.20:443", "1.2.3"])
def test_source_ip_rejects_what_is_not_an_address(address: str) -> None:
    assert code_of(event(sourceIPAddress=address)) == "InvalidData"


def test_source_ip_must_be_a_string() -> None:
    assert code_of(event(sourceIPAddress=3232235777)) == "InvalidData"


def test_recipient_must_be_the_channel_account() -> None:
    error = check(event(recipientAccountId="210987654321"))
    assert error is not None and error.code == "InvalidRecipient"
    assert validate_event_data(json.dumps(event(recipientAccountId="210987654321")), "210987654321") is None


def test_a_number_is_not_the_recipient_account() -> None:
    assert code_of(event(recipientAccountId=123456789012)) == "InvalidRecipient"


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"a string"', "", "{"])
def test_event_data_must_be_a_json_object(text: str) -> None:
    error = validate_event_data(text, ACCOUNT)
    assert error is not None and error.code == "InvalidData"


def test_parse_event_data_hands_back_what_json_loads_makes_of_an_accepted_text() -> None:
    text = json.dumps(event(eventName="connexion réussie"), ensure_ascii=False)
    assert parse_event_data(text, ACCOUNT) == AcceptedEventData(json.loads(text), strict_json=True)
    refused = parse_event_data(json.dumps(event(UID=None)), ACCOUNT)
    assert refused == validate_event_data(json.dumps(event(UID=None)), ACCOUNT)
    assert isinstance(refused, EventError) and refused.code == "FieldNotFound"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_accepted_as_json_loads_takes_them_but_not_strict_json(constant: str) -> None:
    text = json.dumps(event()).replace('"raw"', f'"score": {constant}, "raw"')
    assert validate_event_data(text, ACCOUNT) is None
    parsed = parse_event_data(text, ACCOUNT)
    assert isinstance(parsed, AcceptedEventData) and not parsed.strict_json
    assert json.dumps(parsed.data) == json.dumps(json.loads(text))


@pytest.mark.parametrize(
    "text",
    ["\ufeff" + json.dumps(event()), '{"score": NaN, "x": }', '{"x": , "score": NaN}', "[NaN", "{'a': 1}"],
)
def test_invalid_json_is_reported_with_json_loads_own_message(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        json.loads(text)
    assert parse_event_data(text, ACCOUNT) == EventError("InvalidData", f"eventData is not valid JSON: {raised.value}")


@pytest.mark.parametrize(
    "changes",
    [
        {"userIdentity": "analyst"},
        {"userIdentity": {"type": "T", "principalId": "p", "details": ["a"]}},
        {"userIdentity": {"type": 1, "principalId": "p"}},
        {"requestParameters": ["a"]},
        {"responseElements": "text"},
        {"additionalEventData": 5},
        {"eventName": 5},
        {"version": ""},
        {"userIdentity": {"type": "", "principalId": "p"}},
    ],
)
def test_wrong_types_and_empty_required_strings_are_invalid_data(changes: dict[str, Any]) -> None:
    assert code_of(event(**changes)) == "InvalidData"


def test_unknown_fields_are_invalid_unless_allowed() -> None:
    data = event(eventID="x")
    error = check(data)
    assert error is not None and error.code == "InvalidData" and "eventID" in error.message
    assert check(data, allow_unknown_fields=True) is None
    identity = event(userIdentity={"type": "T", "principalId": "p", "arn": "x"})
    assert code_of(identity) == "InvalidData"
    assert check(identity, allow_unknown_fields=True) is None


def test_aws_service_event_sources_are_reserved() -> None:
    assert code_of(event(eventSource="signin.amazonaws.com")) == "InvalidEventSource"


def test_checksum_is_verified_when_given() -> None:
    text = json.dumps(event(eventName="connexion réussie"), ensure_ascii=False)
    assert validate_event_data(text, ACCOUNT, event_data_checksum(text)) is None
    error = validate_event_data(text, ACCOUNT, event_data_checksum(text + " "))
    assert error is not None and error.code == "InvalidChecksum"


def test_checksum_is_base64_sha256_of_the_utf8_text() -> None:
    # printf %s '{}' | openssl dgst -binary -sha256 | base64
    assert event_data_checksum("{}") == "RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="


def test_error_codes_are_plain_wire_strings() -> None:
    error = check(event(UID=None))
    assert error is not None
    assert type(error.code) is str
    assert json.dumps({"errorCode": error.code}) == '{"errorCode": "FieldNotFound"}'
    assert {code.value for code in EventErrorCode} == {
        "FieldTooLong", "FieldNotFound", "InvalidChecksum", "InvalidData", "InvalidRecipient",
        "InvalidEventSource", "AccountNotSubscribed", "Throttling", "InternalFailure",
    }  # fmt: skip


@pytest.mark.parametrize("good", ["a", "A-b_9", "x" * 128, "0123456789abcdef0123456789abcdef-0-48643"])
def test_legal_ids(good: str) -> None:
    assert audit_event_id_problem(good) is None


@pytest.mark.parametrize("bad", ["", "x" * 129, "a b", "a.b", "0_48643/1", "é", None, 5])
def test_illegal_ids(bad: object) -> None:
    assert audit_event_id_problem(bad) is not None


def test_channel_account_is_the_fifth_arn_field() -> None:
    assert channel_account("arn:aws:cloudtrail:us-east-1:123456789012:channel/demo") == ACCOUNT
    assert channel_account("nonsense") == ""
