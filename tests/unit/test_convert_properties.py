"""Property tests: whatever arrives, conversion returns exactly one of three results, never
raises, and every AuditEvent is one CloudTrail Lake would accept."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from publisher.convert import AuditEvent, Converter, Filtered, Rejected, check_event_data
from publisher.filter import EventFilter

ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/props"
ACCOUNT = "123456789012"
NOW = 1_732_700_000.0
ID = re.compile(r"^[-_A-Za-z0-9]{1,128}$")
REJECTION_CODES = {
    "undecodable",
    "invalid-event",
    "invalid-id",
    "field-too-long",
    "field-empty",
    "invalid-output",
    "internal-error",
}
RULES = {"event-type", "service-name", "operation-name", "max-age"}
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONVERTER = Converter(ARN, EventFilter.from_options("all-user-activity", max_age_days=400), now=lambda: NOW)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)


@st.composite
def long_text(draw: st.DrawFn) -> str:
    """Text of any size up to well past every limit, cheap to build."""
    unit = draw(st.sampled_from(["x", "é", "例", "😀", "\\", '"', "\n"]))
    return unit * draw(st.integers(min_value=0, max_value=160_000))


def either(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything at all."""
    return st.one_of(right, right, right, json_values)


def deeply_nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


audit_key_values = st.lists(
    st.fixed_dictionaries(
        {"Key": either(st.sampled_from(["reason", "target_name", "Reason", "roles"]) | st.text(max_size=8))},
        optional={"ValueString": either(st.text(max_size=40) | long_text()), "Other": json_values},
    ),
    max_size=5,
)
attributes = st.dictionaries(st.text(max_size=12), either(st.text(max_size=40) | long_text()), max_size=5) | st.lists(
    st.fixed_dictionaries({"Key": either(st.text(max_size=8))}, optional={"ValueString": json_scalars}),
    max_size=4,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "UserId": either(st.emails() | st.text(max_size=40) | long_text()),
        "UserIp": either(st.ip_addresses().map(str) | st.text(max_size=20)),
        "OperationName": either(
            st.sampled_from(["userAuthenticate", "twoFactorAuthenticate", "streamStarted", "detection_update"])
            | st.text(max_size=30)
            | long_text()
        ),
        "ServiceName": either(
            st.sampled_from(["CrowdStrike Authentication", "detections", "Crowdstrike Streaming API"])
        ),
        "Success": either(st.booleans()),
        "UTCTimestamp": either(st.integers(min_value=-(2**70), max_value=2**70)),
        "AuditKeyValues": either(audit_key_values),
        "Attributes": either(attributes),
        "Extra": json_values | long_text() | st.integers(min_value=1, max_value=600).map(deeply_nested),
    },
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "customerIDString": either(st.from_regex(r"[-_A-Za-z0-9]{0,130}", fullmatch=True) | st.text(max_size=40)),
        "offset": either(st.integers(min_value=-(2**70), max_value=2**70)),
        "eventType": either(
            st.sampled_from(["AuthActivityAuditEvent", "UserActivityAuditEvent", "DetectionSummaryEvent", ""])
        ),
        "eventCreationTime": either(st.integers(min_value=-(2**70), max_value=2**70)),
        "version": either(st.just("1.0") | st.text(max_size=10) | long_text()),
        "extra": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {}, optional={"metadata": either(metadata), "event": either(events), "x": json_values}
)

# Events of the accepted types with every required field of the right type: most convert, so
# the output side (limits, shrinking, unicode, IPv6) is what gets explored.
plausible_metadata = st.fixed_dictionaries(
    {
        "customerIDString": st.from_regex(r"[-_A-Za-z0-9]{1,40}", fullmatch=True),
        "offset": st.integers(min_value=0, max_value=2**63 - 1),
        "eventType": st.sampled_from(["AuthActivityAuditEvent", "UserActivityAuditEvent"]),
        "eventCreationTime": st.integers(min_value=int(NOW * 1000) - 10**10, max_value=253402300799999),
        "version": st.just("1.0") | st.text(min_size=1, max_size=300),
    },
    optional={"extra": json_values},
)
plausible_events = st.fixed_dictionaries(
    {
        "UserId": st.emails() | st.text(min_size=1, max_size=1100),
        "OperationName": st.sampled_from(["userAuthenticate", "createUser", "detection_update"])
        | st.text(min_size=1, max_size=1100),
    },
    optional={
        "UserIp": st.ip_addresses().map(str) | st.text(max_size=20),
        "ServiceName": st.sampled_from(["CrowdStrike Authentication", "detections"]) | st.text(max_size=20),
        "Success": st.booleans(),
        "UTCTimestamp": st.integers(min_value=0, max_value=2**40),
        "AuditKeyValues": st.lists(
            st.fixed_dictionaries(
                {"Key": st.sampled_from(["reason", "roles"]) | st.text(max_size=8)},
                optional={"ValueString": st.text(max_size=40) | long_text()},
            ),
            max_size=5,
        ),
        "Attributes": st.dictionaries(
            st.text(max_size=12), st.text(max_size=40) | long_text() | json_scalars, max_size=5
        ),
        "Extra": json_values | long_text() | st.integers(min_value=1, max_value=300).map(deeply_nested),
    },
)
plausible_envelopes = st.fixed_dictionaries({"metadata": plausible_metadata, "event": plausible_events})
feeds = st.sampled_from(["0", "1", "feed_7"]) | st.text(max_size=5)


def check(result: object, raw: bytes, feed: str) -> None:
    assert isinstance(result, AuditEvent | Filtered | Rejected)
    if isinstance(result, AuditEvent):
        assert ID.match(result.id)
        data = json.loads(result.event_data)
        assert data["UID"] == result.id
        result.event_data.encode("utf-8")
        assert check_event_data(result.event_data, ACCOUNT) is None
    elif isinstance(result, Filtered):
        assert result.rule in RULES and result.detail
    else:
        assert result.code in REJECTION_CODES and result.code != "internal-error", result
        assert result.message and "\n" not in result.message and len(result.message) <= 300
    assert CONVERTER.convert(raw, feed) == result  # deterministic


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=2000), feed=feeds)
def test_arbitrary_bytes(raw: bytes, feed: str) -> None:
    check(CONVERTER.convert(raw, feed), raw, feed)


@PROPERTY_SETTINGS
@given(value=json_values)
def test_arbitrary_json(value: Any) -> None:
    raw = json.dumps(value).encode()
    check(CONVERTER.convert(raw, "0"), raw, "0")


@PROPERTY_SETTINGS
@given(envelope=envelopes, feed=feeds, ascii_only=st.booleans())
def test_arbitrary_event_shaped_objects(envelope: dict[str, Any], feed: str, ascii_only: bool) -> None:
    raw = json.dumps(envelope, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    check(CONVERTER.convert(raw, feed), raw, feed)


@PROPERTY_SETTINGS
@given(envelope=plausible_envelopes, feed=st.sampled_from(["0", "12"]))
def test_plausible_events_convert_within_every_limit(envelope: dict[str, Any], feed: str) -> None:
    raw = json.dumps(envelope, ensure_ascii=False).encode("utf-8", "surrogatepass")
    result = CONVERTER.convert(raw, feed)
    check(result, raw, feed)
    if isinstance(result, Rejected):
        assert result.code in {"field-too-long", "invalid-id", "undecodable"}, result


@PROPERTY_SETTINGS
@given(envelope=plausible_envelopes | envelopes, feed=feeds)
def test_audit_events_pass_the_cloudtrail_emulator_validator(envelope: dict[str, Any], feed: str) -> None:
    """The very rules the CloudTrail Lake emulator applies to PutAuditEvents."""
    from emulators.cloudtrail_validation import validate_event_data

    raw = json.dumps(envelope, ensure_ascii=False).encode("utf-8", "surrogatepass")
    result = CONVERTER.convert(raw, feed)
    if isinstance(result, AuditEvent):
        error = validate_event_data(result.event_data, ACCOUNT)
        assert error is None, f"{error.code}: {error.message}"
