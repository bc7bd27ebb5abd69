"""The converter: the old gateway's mapping, stable ids, limits, shrink rules and rejections."""

from __future__ import annotations

import json
from typing import Any

import pytest

from falcon_lake import __version__
from publisher.convert import (
    MAPPINGS,
    AuditEvent,
    Converter,
    EventMapping,
    Filtered,
    MappedFields,
    Rejected,
    channel_account,
    check_event_data,
)
from publisher.filter import EventFilter
from schemas import load_schemas

ARN = "arn:aws:cloudtrail:eu-west-1:210987654321:channel/0a1b2c3d-4e5f"
NOW = 1_732_700_000.0
CID = "0123456789abcdef0123456789abcdef"


def falcon_event(event: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """The REFERENCE.md §1 example, with fields replaced."""
    base_event = {
        "UserId": "analyst@example.com",
        "UserIp": "198.51.100.20",
        "OperationName": "twoFactorAuthenticate",
        "ServiceName": "CrowdStrike Authentication",
        "Success": False,
        "UTCTimestamp": 1732608000,
        "AuditKeyValues": [{"Key": "reason", "ValueString": "invalid code"}],
        "Attributes": {"reason": "invalid code"},
    }
    base_metadata = {
        "customerIDString": CID,
        "offset": 48643,
        "eventType": "AuthActivityAuditEvent",
        "eventCreationTime": 1732608000123,
        "version": "1.0",
    }
    base_metadata.update(metadata)
    if event is not None:
        base_event.update(event)
    return {"metadata": base_metadata, "event": {k: v for k, v in base_event.items() if v is not ...}}


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def converter() -> Converter:
    return Converter(ARN, EventFilter.from_preset("all-user-activity"), now=lambda: NOW)


def converted(converter: Converter, value: Any, feed: str = "0") -> dict[str, Any]:
    result = converter.convert(encode(value), feed)
    assert isinstance(result, AuditEvent), result
    data: dict[str, Any] = json.loads(result.event_data)
    assert data["UID"] == result.id
    return data


def rejected(converter: Converter, raw: bytes, feed: str = "0") -> Rejected:
    result = converter.convert(raw, feed)
    assert isinstance(result, Rejected), result
    return result


def test_mapping_keeps_the_old_gateway_values(converter: Converter) -> None:
    event = falcon_event()
    result = converter.convert(encode(event), "0")
    assert isinstance(result, AuditEvent)
    assert result.id == f"{CID}-0-48643"
    assert json.loads(result.event_data) == {
        "version": "1.0",
        "userIdentity": {
            "type": "AuthActivityAuditEvent",
            "principalId": "analyst@example.com",
            "details": {"AuditKeyValues": [{"Key": "reason", "ValueString": "invalid code"}]},
        },
        "userAgent": f"falcon-lake/{__version__}",
        "eventSource": "crowdstrike",
        "eventName": "twoFactorAuthenticate",
        "eventTime": "2024-11-26T08:00:00Z",
        "UID": f"{CID}-0-48643",
        "requestParameters": {"reason": "invalid code"},
        "errorCode": "AuthenticationFailed",
        "errorMessage": "invalid code",
        "sourceIPAddress": "198.51.100.20",
        "recipientAccountId": "210987654321",
        "additionalEventData": {"raw": event},
    }


def test_event_data_is_compact_utf8_json(converter: Converter) -> None:
    result = converter.convert(encode(falcon_event({"UserId": "jürgen@例え.jp"})), "0")
    assert isinstance(result, AuditEvent)
    assert ", " not in result.event_data and '": ' not in result.event_data
    assert "jürgen@例え.jp" in result.event_data  # not \\u-escaped
    assert result.event_data.startswith('{"version":"1.0","userIdentity":{')


def test_id_is_cid_feed_offset_and_stable_across_resends(converter: Converter) -> None:
    raw = encode(falcon_event(offset=7))
    first, second = converter.convert(raw, "3"), converter.convert(raw, "3")
    assert isinstance(first, AuditEvent) and first == second
    assert first.id == f"{CID}-3-7"
    other_feed = converter.convert(raw, "4")
    assert isinstance(other_feed, AuditEvent) and other_feed.id == f"{CID}-4-7"


def test_event_time_is_creation_time_in_utc_seconds(converter: Converter) -> None:
    assert converted(converter, falcon_event(eventCreationTime=0))["eventTime"] == "1970-01-01T00:00:00Z"
    assert converted(converter, falcon_event(eventCreationTime=1709251199999))["eventTime"] == "2024-02-29T23:59:59Z"


@pytest.mark.parametrize(
    ("user_ip", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("256.1.1.1", None),
        ("010.1.1.1", None),
        ("fe80::1%eth0", None),
        ("10.0.0.1, 10.0.0.2", None),
        ("", None),
        (None, None),
    ],
)
def test_source_ip_only_when_a_valid_address(converter: Converter, user_ip: str | None, expected: str | None) -> None:
    data = converted(converter, falcon_event({"UserIp": user_ip}))
    assert data.get("sourceIPAddress") == expected
    assert data["additionalEventData"]["raw"]["event"]["UserIp"] == user_ip  # kept as sent


def test_success_true_or_absent_sets_no_error(converter: Converter) -> None:
    for success in (True, ...):
        data = converted(converter, falcon_event({"Success": success}))
        assert "errorCode" not in data and "errorMessage" not in data


def test_failed_operation_that_is_not_a_sign_in_is_operation_failed(converter: Converter) -> None:
    data = converted(converter, falcon_event({"OperationName": "createUser", "Attributes": {}, "AuditKeyValues": []}))
    assert data["errorCode"] == "OperationFailed"
    assert "errorMessage" not in data  # no reason given: nothing invented


def test_error_message_prefers_attributes_then_audit_key_values(converter: Converter) -> None:
    data = converted(
        converter,
        falcon_event(
            {
                "Attributes": {"Message": "from attributes", "other": "x"},
                "AuditKeyValues": [{"Key": "REASON", "ValueString": "from key values"}],
            }
        ),
    )
    assert data["errorMessage"] == "from attributes"
    data = converted(
        converter, falcon_event({"Attributes": ..., "AuditKeyValues": [{"Key": "Error", "ValueString": "e"}]})
    )
    assert data["errorMessage"] == "e"


def test_long_error_message_is_cut_to_256_with_a_marker(converter: Converter) -> None:
    data = converted(converter, falcon_event({"Attributes": {"reason": "é" * 1000}}))
    assert len(data["errorMessage"]) == 256
    assert data["errorMessage"].endswith("…")
    assert data["additionalEventData"]["raw"]["event"]["Attributes"]["reason"] == "é" * 1000


def test_request_parameters_from_attributes_else_audit_key_values(converter: Converter) -> None:
    data = converted(converter, falcon_event({"Attributes": {"a": 1, "b": [True, None]}}))
    assert data["requestParameters"] == {"a": 1, "b": [True, None]}
    data = converted(
        converter,
        falcon_event(
            {"Attributes": ..., "AuditKeyValues": [{"Key": "k", "ValueString": "v"}, {"Key": "n"}]},
        ),
    )
    assert data["requestParameters"] == {"k": "v", "n": None}
    data = converted(converter, falcon_event({"Attributes": {}, "AuditKeyValues": []}))
    assert "requestParameters" not in data
    assert data["userIdentity"]["details"] == {"AuditKeyValues": []}
    data = converted(converter, falcon_event({"Attributes": ..., "AuditKeyValues": ...}))
    assert "requestParameters" not in data and "details" not in data["userIdentity"]


def test_attributes_as_a_list_are_read_as_a_map(converter: Converter) -> None:
    attributes = [{"Key": "a", "ValueString": "1"}, {"Key": "b", "Value": 2}]
    data = converted(converter, falcon_event({"Attributes": attributes}))
    assert data["requestParameters"] == {"a": "1", "b": 2}
    assert data["additionalEventData"]["raw"]["event"]["Attributes"] == attributes  # raw as sent


def test_attributes_list_of_another_shape_is_invalid(converter: Converter) -> None:
    result = rejected(converter, encode(falcon_event({"Attributes": [{"Key": "a"}, "b"]})))
    assert result == Rejected("invalid-event", "event.Attributes[1]: expected an object with a text Key, got string")


def test_extra_fields_are_tolerated_and_kept_in_raw(converter: Converter) -> None:
    event = falcon_event({"Unknown": {"deep": [1, 2]}}, partition=3)
    event["extra"] = True
    data = converted(converter, event)
    assert data["additionalEventData"]["raw"] == event


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"UserId": 5}, "event.UserId: expected string, got integer"),
        ({"UserId": ...}, "event.UserId: expected string, missing or null"),
        ({"OperationName": None}, "event.OperationName: expected string, missing or null"),
        ({"Success": "false"}, "event.Success: expected null or boolean, got string"),
        ({"AuditKeyValues": [{"Key": 1}]}, "event.AuditKeyValues[].Key: expected string, got integer"),
        ({"AuditKeyValues": {"Key": "a"}}, "event.AuditKeyValues: expected null or array, got object"),
        (
            {"Attributes": {"a": {"b": {"c": 1}}}},
            "event.Attributes: expected null or string or boolean or integer or number or array, got object",
        ),
        ({"UTCTimestamp": "yesterday"}, "event.UTCTimestamp: expected null or integer or number, got string"),
    ],
)
def test_invalid_event_names_the_field(converter: Converter, change: dict[str, Any], message: str) -> None:
    assert rejected(converter, encode(falcon_event(change))) == Rejected("invalid-event", message)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"offset": "1"}, "metadata.offset: expected integer, got string"),
        ({"offset": 2**63}, "metadata.offset: expected integer, got integer"),
        ({"offset": True}, "metadata.offset: expected integer, got boolean"),
        ({"offset": -1}, "metadata.offset: -1 is out of range"),
        ({"eventCreationTime": 1.5}, "metadata.eventCreationTime: expected integer, got number"),
        ({"eventCreationTime": 10**15}, "metadata.eventCreationTime: 1000000000000000 is out of range"),
        ({"eventCreationTime": -1}, "metadata.eventCreationTime: -1 is out of range"),
        ({"version": None}, "metadata.version: expected string, missing or null"),
    ],
)
def test_invalid_metadata_names_the_field(converter: Converter, metadata: dict[str, Any], message: str) -> None:
    assert rejected(converter, encode(falcon_event(**metadata))) == Rejected("invalid-event", message)


def test_missing_metadata_or_event(converter: Converter) -> None:
    assert rejected(converter, b'{"event": {}}') == Rejected(
        "invalid-event", "metadata: expected object, missing or null"
    )
    event = falcon_event()
    event["event"] = []
    assert rejected(converter, encode(event)) == Rejected("invalid-event", "event: expected object, got array")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff{}", "not UTF-8: invalid byte at position 0"),
        (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"a": NaN}', "not JSON: NaN is not a JSON number"),
        (b'{"a": -Infinity}', "not JSON: -Infinity is not a JSON number"),
        (b'{"a": 1e400}', "not JSON: number 1e400 is out of range"),
        (b"[" * 100_000, "not JSON: nested too deeply"),
        (b"[]", "not a JSON object: got array"),
        (b'"text"', "not a JSON object: got string"),
        (b"\xef\xbb\xbf{}", "not JSON: starts with a byte order mark"),
    ],
)
def test_undecodable_input(converter: Converter, raw: bytes, message: str) -> None:
    assert rejected(converter, raw) == Rejected("undecodable", message)


def test_unpaired_surrogate_is_rejected_not_sent(converter: Converter) -> None:
    raw = encode(falcon_event()).replace(b"analyst@", b"analyst\\ud800@")
    assert rejected(converter, raw).code == "undecodable"


def test_required_field_too_long_is_rejected_never_cut(converter: Converter) -> None:
    result = rejected(converter, encode(falcon_event({"UserId": "ü" * 1025})))
    assert result == Rejected(
        "field-too-long",
        "userIdentity.principalId (event.UserId) is 1025 characters; CloudTrail allows at most 1024",
    )
    assert converted(converter, falcon_event({"UserId": "ü" * 1024}))["userIdentity"]["principalId"] == "ü" * 1024
    result = rejected(converter, encode(falcon_event(version="v" * 257)))
    assert result.code == "field-too-long" and result.message.startswith("version (metadata.version)")
    result = rejected(converter, encode(falcon_event({"OperationName": "x" * 2000})))
    assert result.code == "field-too-long" and result.message.startswith("eventName (event.OperationName)")


def test_empty_required_field_is_rejected(converter: Converter) -> None:
    result = rejected(converter, encode(falcon_event({"OperationName": ""})))
    assert result == Rejected("field-empty", "eventName (event.OperationName) is empty")


@pytest.mark.parametrize(
    ("cid", "feed", "message"),
    [
        ("", "0", "metadata.customerIDString is empty"),
        ("cid with spaces", "0", "metadata.customerIDString 'cid with spaces' may hold only letters, digits, - and _"),
        (CID, "feed/1", "feed id 'feed/1' may hold only letters, digits, - and _"),
        (CID, "", "feed id '' may hold only letters, digits, - and _"),
        ("c" * 125, "0", f"id {'c' * 40}… is 133 characters; at most 128 allowed"),
    ],
)
def test_illegal_id_is_rejected_with_the_reason(converter: Converter, cid: str, feed: str, message: str) -> None:
    assert rejected(converter, encode(falcon_event(customerIDString=cid)), feed) == Rejected("invalid-id", message)


def test_filtered_events_carry_the_rule() -> None:
    gateway = Converter(ARN, EventFilter.from_options("gateway", max_age_days=21), now=lambda: NOW)
    noise = falcon_event({"ServiceName": "Crowdstrike Streaming API", "OperationName": "streamStarted"})
    assert isinstance(gateway.convert(encode(noise), "0"), Filtered)
    old = gateway.convert(encode(falcon_event(eventCreationTime=int((NOW - 30 * 86400) * 1000))), "0")
    assert old == Filtered("max-age", "event is 30.0 days old; the maximum age is 21 days")
    other = gateway.convert(encode(falcon_event(eventType="DetectionSummaryEvent")), "0")
    assert isinstance(other, Filtered) and other.rule == "event-type"


def test_other_event_types_are_filtered_before_their_event_is_looked_at(converter: Converter) -> None:
    event = {"metadata": falcon_event(eventType="DetectionSummaryEvent")["metadata"], "event": "anything"}
    result = converter.convert(encode(event), "0")
    assert isinstance(result, Filtered) and result.rule == "event-type"


# --- limits and shrinking --------------------------------------------------------------------


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def test_limits_come_from_the_schema() -> None:
    schemas = load_schemas()
    assert schemas.cloudtrail_field("additionalEventData").max_bytes == 28000
    assert schemas.cloudtrail_field("requestParameters").max_bytes == 100000
    assert schemas.cloudtrail_field("userIdentity.principalId").max_length == 1024
    assert schemas.cloudtrail_field("userIdentity.type").max_length == 128
    assert schemas.cloudtrail_field("errorMessage").max_length == 256
    assert schemas.cloudtrail_field("sourceIPAddress").ip_address
    assert schemas.audit_event_id_pattern.pattern == "^[-_A-Za-z0-9]{1,128}$"


def test_oversized_raw_is_shrunk_deterministically_and_marked(converter: Converter) -> None:
    event = falcon_event(
        {
            "Attributes": {"small": "s", "big": "b" * 20_000},
            "Blob": "x" * 15_000,
            "Note": "ü" * 5_000,
            "Tiny": 1,
        }
    )
    event["envelopeExtra"] = "e" * 100
    data = converted(converter, event)
    additional = data["additionalEventData"]
    assert additional["truncated"] is True
    assert _size(additional) <= 28000
    raw = additional["raw"]
    assert raw["metadata"] == event["metadata"]
    for field in ("UserId", "UserIp", "OperationName", "ServiceName", "Success", "UTCTimestamp"):
        assert raw["event"][field] == event["event"][field]
    # then the rest smallest first while it fits: Tiny, AuditKeyValues, the envelope extra, Note
    # (10 kB as UTF-8), Blob (15 kB); the 20 kB Attributes no longer fits
    assert set(raw["event"]) == {
        *("UserId", "UserIp", "OperationName", "ServiceName", "Success", "UTCTimestamp"),
        *("AuditKeyValues", "Blob", "Note", "Tiny"),
    }
    assert raw["envelopeExtra"] == "e" * 100
    assert list(raw["event"]) == [k for k in event["event"] if k in raw["event"]]  # original order
    assert converted(converter, event) == data  # same input, same output
    assert data["requestParameters"] == event["event"]["Attributes"]  # still whole there


def test_raw_just_under_the_limit_is_not_touched(converter: Converter) -> None:
    event = falcon_event({"Pad": ""})
    overhead = _size({"raw": event})
    event["event"]["Pad"] = "p" * (28000 - overhead)
    data = converted(converter, event)
    assert _size(data["additionalEventData"]) == 28000
    assert "truncated" not in data["additionalEventData"]
    event["event"]["Pad"] += "p"
    assert converted(converter, event)["additionalEventData"]["truncated"] is True


def test_oversized_request_parameters_drop_their_largest_members(converter: Converter) -> None:
    attributes = {f"k{i}": "v" * (1000 * i) for i in range(1, 20)}  # 190 kB
    data = converted(converter, falcon_event({"Attributes": attributes}))
    kept = data["requestParameters"]
    assert _size(kept) <= 100000
    assert list(kept) == [f"k{i}" for i in range(1, len(kept) + 1)]  # the smallest, in order
    assert data["additionalEventData"]["requestParametersTruncated"] is True
    assert data["additionalEventData"]["truncated"] is True


def test_request_parameters_with_one_huge_member_are_dropped_with_a_marker(converter: Converter) -> None:
    data = converted(converter, falcon_event({"Attributes": {"only": "x" * 150_000}}))
    assert "requestParameters" not in data
    assert data["additionalEventData"]["requestParametersTruncated"] is True


def test_oversized_details_keep_the_smallest_audit_key_values(converter: Converter) -> None:
    entries = [{"Key": f"k{i}", "ValueString": "v" * 30_000} for i in range(4)] + [{"Key": "s", "ValueString": "1"}]
    data = converted(converter, falcon_event({"AuditKeyValues": entries, "Attributes": {"a": "b"}}))
    details = data["userIdentity"]["details"]
    assert _size(details) <= 100000
    assert details["AuditKeyValues"][-1] == {"Key": "s", "ValueString": "1"}
    assert len(details["AuditKeyValues"]) == 4
    assert data["additionalEventData"]["detailsTruncated"] is True


def test_every_result_passes_the_output_schema(converter: Converter) -> None:
    for change in ({}, {"Attributes": {"x": "y" * 200_000}}, {"UserIp": "2001:db8::2"}, {"Success": True}):
        result = converter.convert(encode(falcon_event(change)), "0")
        assert isinstance(result, AuditEvent)
        assert check_event_data(result.event_data, "210987654321") is None


# --- the output check ----------------------------------------------------------------------


def test_check_event_data_finds_what_cloudtrail_would_refuse(converter: Converter) -> None:
    result = converter.convert(encode(falcon_event()), "0")
    assert isinstance(result, AuditEvent)
    good = json.loads(result.event_data)
    assert check_event_data(result.event_data, "999999999999") is not None  # another account

    def problem(**changes: Any) -> str | None:
        return check_event_data(json.dumps({**good, **changes}), "210987654321")

    assert problem(errorMessage="m" * 257) == "errorMessage is 257 characters; at most 256 allowed"
    assert problem(sourceIPAddress="nowhere") == "sourceIPAddress is not an IPv4 or IPv6 address"
    assert problem(eventTime="2024-11-26 08:00:00") is not None
    assert (
        problem(additionalEventData={"raw": "r" * 28000}) == "additionalEventData is 28010 bytes; at most 28000 allowed"
    )
    assert problem(requestParameters=[1]) == "requestParameters must be a JSON object"
    assert problem(surprise=1) == "eventData has fields the schema does not know: surprise"
    assert problem(userIdentity={**good["userIdentity"], "x": 1}) is not None
    assert problem(eventName=7) is not None
    assert check_event_data("[]", "210987654321") == "eventData is not a JSON object"


# --- construction and extension ----------------------------------------------------------


@pytest.mark.parametrize(
    "arn",
    [
        "",
        "channel/demo",
        "arn:aws:cloudtrail:us-east-1:12345:channel/demo",
        "arn:aws:s3:us-east-1:123456789012:channel/demo",
        "arn:aws:cloudtrail:us-east-1:123456789012:trail/demo",
        "arn:aws:cloudtrail:us-east-1:123456789012:channel/",
    ],
)
def test_malformed_channel_arn_is_a_one_line_value_error(arn: str) -> None:
    with pytest.raises(ValueError, match=r"^malformed CloudTrail channel ARN .*: expected arn:aws:cloudtrail:"):
        Converter(arn, EventFilter.from_preset("gateway"))


@pytest.mark.parametrize(
    ("arn", "account"),
    [
        ("arn:aws:cloudtrail:us-east-1:123456789012:channel/demo", "123456789012"),
        ("arn:aws-cn:cloudtrail:cn-north-1:000000000001:channel/a1-b2", "000000000001"),
        ("arn:aws-us-gov:cloudtrail:us-gov-west-1:999999999999:channel/x_y.z", "999999999999"),
    ],
)
def test_channel_account_is_the_fifth_arn_field(arn: str, account: str) -> None:
    assert channel_account(arn) == account


def test_every_schema_event_type_has_a_mapping_and_back() -> None:
    assert set(load_schemas().event_types()) == set(MAPPINGS)


def test_a_new_event_type_is_a_schema_and_a_mapping_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline dispatches on the registry: an entry changes the result, no other code."""

    def mapped(event: Any) -> MappedFields:
        return MappedFields(principal_id="someone", event_name="custom")

    monkeypatch.setitem(MAPPINGS, "UserActivityAuditEvent", EventMapping(mapped, ("UserId",)))
    converter = Converter(ARN, EventFilter.from_preset("all-user-activity"), now=lambda: NOW)
    data = converted(converter, falcon_event(eventType="UserActivityAuditEvent"))
    assert (data["eventName"], data["userIdentity"]) == (
        "custom",
        {"type": "UserActivityAuditEvent", "principalId": "someone"},
    )


def test_a_bug_in_a_mapping_costs_one_event_not_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(event: Any) -> MappedFields:
        raise KeyError("oops")

    monkeypatch.setitem(MAPPINGS, "AuthActivityAuditEvent", EventMapping(broken, ()))
    converter = Converter(ARN, EventFilter.from_preset("gateway"), now=lambda: NOW)
    assert converter.convert(encode(falcon_event()), "0") == Rejected("internal-error", "KeyError: 'oops'")
