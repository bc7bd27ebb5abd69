"""The event filter: presets, rule options, and a reason naming the rule for every drop."""

from __future__ import annotations

from typing import Any

import pytest

from publisher.filter import PRESETS, EventFilter, Filtered

NOW = 1_732_700_000.0
DAY_MS = 86_400_000


def envelope(
    event_type: str = "AuthActivityAuditEvent",
    service: Any = "CrowdStrike Authentication",
    operation: Any = "userAuthenticate",
    age_days: float = 0.0,
) -> dict[str, Any]:
    return {
        "metadata": {
            "customerIDString": "0123456789abcdef0123456789abcdef",
            "offset": 1,
            "eventType": event_type,
            "eventCreationTime": int(NOW * 1000 - age_days * DAY_MS),
            "version": "1.0",
        },
        "event": {"UserId": "a@example.com", "OperationName": operation, "ServiceName": service},
    }


def test_presets_are_the_two_documented_ones() -> None:
    assert set(PRESETS) == {"gateway", "all-user-activity"}


def test_gateway_preset_forwards_only_what_the_old_gateway_forwarded() -> None:
    gateway = EventFilter.from_preset("gateway")
    assert gateway.check(envelope(), NOW) is None
    assert gateway.check(envelope(service="crowdstrike AUTHENTICATION"), NOW) is None
    assert gateway.check(envelope(service="Falcon Console"), NOW) == Filtered(
        "service-name", "service 'Falcon Console' is not selected (selected: 'crowdstrike authentication')"
    )
    dropped = gateway.check(envelope(event_type="UserActivityAuditEvent", service="detections"), NOW)
    assert dropped is not None and dropped.rule == "event-type"
    assert "UserActivityAuditEvent" in dropped.detail


def test_all_user_activity_preset_takes_every_service_but_drops_stream_noise() -> None:
    everything = EventFilter.from_preset("all-user-activity")
    assert everything.check(envelope(event_type="UserActivityAuditEvent", service="detections"), NOW) is None
    assert everything.check(envelope(service="Falcon Console", operation="createUser"), NOW) is None
    for noise in ("streamStarted", "streamStopped", "STREAMSTARTED"):
        dropped = everything.check(envelope(service="Crowdstrike Streaming API", operation=noise), NOW)
        assert dropped is not None and dropped.rule == "operation-name"
    dropped = everything.check(envelope(event_type="DetectionSummaryEvent"), NOW)
    assert dropped is not None and dropped.rule == "event-type"


def test_header_pre_check_decides_from_the_event_type_alone() -> None:
    gateway = EventFilter.from_preset("gateway")
    assert gateway.check_event_type("AuthActivityAuditEvent") is None
    dropped = gateway.check_event_type("DetectionSummaryEvent")
    assert dropped == Filtered(
        "event-type", "event type 'DetectionSummaryEvent' is not selected (selected: AuthActivityAuditEvent)"
    )
    assert gateway.check_event_type("") is not None


def test_unknown_preset_is_a_one_line_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown filter preset 'nope': choose one of gateway, all-user-activity"):
        EventFilter.from_preset("nope")


def test_unknown_event_type_is_refused_when_the_filter_is_built() -> None:
    with pytest.raises(ValueError, match="unknown event type DetectionSummaryEvent"):
        EventFilter(event_types=["DetectionSummaryEvent"])
    with pytest.raises(ValueError, match="no event type"):
        EventFilter(event_types=[])


@pytest.mark.parametrize("days", [0, -1, float("nan"), float("inf")])
def test_max_age_must_be_a_positive_number_of_days(days: float) -> None:
    with pytest.raises(ValueError, match="maximum event age"):
        EventFilter(event_types=["AuthActivityAuditEvent"], max_age_days=days)


def test_options_replace_the_rules_of_the_preset() -> None:
    custom = EventFilter.from_options(
        "gateway",
        event_types=["AuthActivityAuditEvent", "UserActivityAuditEvent"],
        include_services=["CrowdStrike Authentication", "Detections"],
        max_age_days=21,
    )
    assert custom.check(envelope(event_type="UserActivityAuditEvent", service="detections"), NOW) is None
    assert custom.check(envelope(service="hosts"), NOW) is not None
    assert custom.max_age_days == 21
    assert custom.exclude_operations == frozenset()  # the gateway preset's, kept


def test_an_empty_include_list_lifts_the_restriction() -> None:
    lifted = EventFilter.from_options("gateway", include_services=[""])
    assert lifted.include_services == frozenset()
    assert lifted.check(envelope(service="anything"), NOW) is None


def test_exclude_rules_are_case_insensitive() -> None:
    rules = EventFilter.from_options(
        "all-user-activity", exclude_services=["Detections"], include_operations=["createUser", "deleteUser"]
    )
    dropped = rules.check(envelope(service="DETECTIONS", operation="createUser"), NOW)
    assert dropped == Filtered("service-name", "service 'DETECTIONS' is excluded")
    dropped = rules.check(envelope(service="hosts", operation="updateUser"), NOW)
    assert dropped is not None and dropped.rule == "operation-name"
    assert rules.check(envelope(service="hosts", operation="CREATEUSER"), NOW) is None


def test_max_age_drops_old_events_with_their_age() -> None:
    rules = EventFilter.from_options("gateway", max_age_days=21)
    assert rules.check(envelope(age_days=20.9), NOW) is None
    assert rules.check(envelope(age_days=-3), NOW) is None  # from the future: kept
    dropped = rules.check(envelope(age_days=30), NOW)
    assert dropped == Filtered("max-age", "event is 30.0 days old; the maximum age is 21 days")


def test_no_max_age_by_default() -> None:
    for name in PRESETS:
        assert EventFilter.from_preset(name).check(envelope(age_days=3650), NOW) is None


def test_a_missing_or_odd_name_fails_an_include_rule_and_passes_an_exclude_rule() -> None:
    gateway = EventFilter.from_preset("gateway")
    for service in (None, 42, ["CrowdStrike Authentication"]):
        dropped = gateway.check(envelope(service=service), NOW)
        assert dropped is not None and dropped.rule == "service-name"
    everything = EventFilter.from_preset("all-user-activity")
    assert everything.check(envelope(operation=None), NOW) is None


@pytest.mark.parametrize("junk", [{}, {"metadata": []}, {"metadata": {"eventType": 7}}, {"event": "x"}])
def test_check_never_raises_on_junk(junk: dict[str, Any]) -> None:
    dropped = EventFilter.from_preset("gateway").check(junk, NOW)
    assert dropped is not None and dropped.rule == "event-type"


def test_describe_is_one_line_naming_every_rule() -> None:
    text = EventFilter.from_options("all-user-activity", include_services=["Detections"], max_age_days=7).describe()
    assert "\n" not in text
    for part in ("AuthActivityAuditEvent", "'detections'", "'streamstarted'", "7 days"):
        assert part in text


def test_filters_compare_by_their_rules() -> None:
    assert EventFilter.from_preset("gateway") == EventFilter.from_options("gateway")
    assert EventFilter.from_preset("gateway") != EventFilter.from_preset("all-user-activity")
