"""Which Falcon events go to CloudTrail Lake: named rules, presets, and a reason for every drop.

Rules (each drop names its rule in `Filtered.rule`):
- `event-type`: metadata.eventType must be one of the selected types (exact match);
- `service-name`: event.ServiceName must be in the include list when one is given, and not in
  the exclude list (both case-insensitive);
- `operation-name`: the same for event.OperationName (case-insensitive too);
- `max-age`: the event must be at most this many days old (metadata.eventCreationTime); no
  limit unless set.

Presets: `gateway` (what the old gateway forwarded) and `all-user-activity`; see PRESETS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from falcon_lake.settings import FilterSettings
from schemas import load_schemas

RULE_EVENT_TYPE = "event-type"
RULE_SERVICE_NAME = "service-name"
RULE_OPERATION_NAME = "operation-name"
RULE_MAX_AGE = "max-age"

AUTH_ACTIVITY = "AuthActivityAuditEvent"
USER_ACTIVITY = "UserActivityAuditEvent"
STREAM_NOISE_OPERATIONS = ("streamStarted", "streamStopped")

_DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class Filtered:
    """An event deliberately not delivered: `rule` names the rule, `detail` says why, in one line."""

    rule: str
    detail: str


def _folded(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.casefold() for name in names if name)


def _listing(names: frozenset[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names))


@dataclass(frozen=True, init=False)
class EventFilter:
    """A set of filter rules. Service and operation names are stored casefolded.

    Build one with `EventFilter.from_preset(name)`, `EventFilter.from_options(...)` (a preset
    with some rules replaced, as settings and the command line give them) or the constructor.
    Checks never raise, whatever the input.
    """

    event_types: frozenset[str]
    include_services: frozenset[str] = field(default=frozenset())
    exclude_services: frozenset[str] = field(default=frozenset())
    include_operations: frozenset[str] = field(default=frozenset())
    exclude_operations: frozenset[str] = field(default=frozenset())
    max_age_days: float | None = None

    def __init__(
        self,
        *,
        event_types: Iterable[str],
        include_services: Iterable[str] = (),
        exclude_services: Iterable[str] = (),
        include_operations: Iterable[str] = (),
        exclude_operations: Iterable[str] = (),
        max_age_days: float | None = None,
    ) -> None:
        """Raises ValueError (one line) for an event type without a schema, no event type at
        all, or a maximum age that is not a positive number of days."""
        types = frozenset(event_types)
        known = load_schemas().event_types()
        unknown = sorted(types.difference(known))
        if unknown:
            raise ValueError(f"unknown event type {', '.join(unknown)}: falcon-lake converts only {', '.join(known)}")
        if not types:
            raise ValueError("the filter selects no event type: name at least one")
        if max_age_days is not None and not (max_age_days > 0 and math.isfinite(max_age_days)):
            raise ValueError(f"maximum event age must be a positive number of days, not {max_age_days}")
        object.__setattr__(self, "event_types", types)
        object.__setattr__(self, "include_services", _folded(include_services))
        object.__setattr__(self, "exclude_services", _folded(exclude_services))
        object.__setattr__(self, "include_operations", _folded(include_operations))
        object.__setattr__(self, "exclude_operations", _folded(exclude_operations))
        object.__setattr__(self, "max_age_days", max_age_days)

    @classmethod
    def from_preset(cls, name: str) -> EventFilter:
        """The preset called `name` (see PRESETS); ValueError naming the known presets otherwise."""
        try:
            return PRESETS[name]()
        except KeyError:
            raise ValueError(f"unknown filter preset {name!r}: choose one of {', '.join(PRESETS)}") from None

    @classmethod
    def from_options(
        cls,
        preset: str = "gateway",
        *,
        event_types: Iterable[str] | None = None,
        include_services: Iterable[str] | None = None,
        exclude_services: Iterable[str] | None = None,
        include_operations: Iterable[str] | None = None,
        exclude_operations: Iterable[str] | None = None,
        max_age_days: float | None = None,
    ) -> EventFilter:
        """The preset with every rule that is given (not None) replacing the preset's rule.

        An empty list given for an include rule removes that restriction. ValueError (one line)
        for an unknown preset, event type or a bad age.
        """
        base = cls.from_preset(preset)
        return cls(
            event_types=base.event_types if event_types is None else event_types,
            include_services=base.include_services if include_services is None else include_services,
            exclude_services=base.exclude_services if exclude_services is None else exclude_services,
            include_operations=base.include_operations if include_operations is None else include_operations,
            exclude_operations=base.exclude_operations if exclude_operations is None else exclude_operations,
            max_age_days=base.max_age_days if max_age_days is None else max_age_days,
        )

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> EventFilter:
        """The filter FILTER_PRESET and the FILTER_* rules describe (an empty rule keeps the preset's).

        ValueError (one line) for a bad rule.
        """
        return cls.from_options(
            settings.preset,
            event_types=settings.event_types or None,
            include_services=settings.include_services or None,
            exclude_services=settings.exclude_services or None,
            include_operations=settings.include_operations or None,
            exclude_operations=settings.exclude_operations or None,
            max_age_days=settings.max_age_days,
        )

    def check_event_type(self, event_type: str) -> Filtered | None:
        """The cheap pre-check: Filtered when an event of this type is never delivered, else None.

        Decides from the type alone (e.g. the Kafka header `falcon.event_type`), so a caller
        may drop such an event without parsing it; None means "convert it and see".
        """
        if event_type in self.event_types:
            return None
        return Filtered(
            RULE_EVENT_TYPE,
            f"event type {event_type!r} is not selected (selected: {', '.join(sorted(self.event_types))})",
        )

    def check(self, envelope: Mapping[str, Any], now: float) -> Filtered | None:
        """Every rule on a parsed event `{"metadata": {...}, "event": {...}}`; `now` is epoch seconds.

        Returns the first rule that drops the event (in the order event-type, service-name,
        operation-name, max-age), or None when the event is to be delivered. A missing or
        non-text name counts as absent, so it fails an include rule and passes an exclude rule.
        """
        metadata = envelope.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        event = envelope.get("event")
        event = event if isinstance(event, Mapping) else {}
        event_type = metadata.get("eventType")
        if not isinstance(event_type, str):
            return Filtered(RULE_EVENT_TYPE, "event has no eventType")
        found = self.check_event_type(event_type)
        if found is not None:
            return found
        found = _check_name(
            RULE_SERVICE_NAME, "service", event.get("ServiceName"), self.include_services, self.exclude_services
        )
        if found is not None:
            return found
        found = _check_name(
            RULE_OPERATION_NAME,
            "operation",
            event.get("OperationName"),
            self.include_operations,
            self.exclude_operations,
        )
        if found is not None:
            return found
        if self.max_age_days is not None:
            created = metadata.get("eventCreationTime")
            if isinstance(created, int | float) and not isinstance(created, bool):
                age_days = (now - created / 1000.0) / _DAY_SECONDS
                if age_days > self.max_age_days:
                    return Filtered(
                        RULE_MAX_AGE,
                        f"event is {age_days:.1f} days old; the maximum age is {self.max_age_days:g} days",
                    )
        return None

    def describe(self) -> str:
        """The rules in one line, for logs and `--explain`."""
        parts = [f"event types {', '.join(sorted(self.event_types))}"]
        if self.include_services:
            parts.append(f"services only {_listing(self.include_services)}")
        if self.exclude_services:
            parts.append(f"services except {_listing(self.exclude_services)}")
        if self.include_operations:
            parts.append(f"operations only {_listing(self.include_operations)}")
        if self.exclude_operations:
            parts.append(f"operations except {_listing(self.exclude_operations)}")
        if self.max_age_days is not None:
            parts.append(f"at most {self.max_age_days:g} days old")
        return "; ".join(parts)


def _check_name(
    rule: str, what: str, value: object, include: frozenset[str], exclude: frozenset[str]
) -> Filtered | None:
    if not include and not exclude:
        return None
    if not isinstance(value, str):
        if include:
            return Filtered(rule, f"event has no {what} name; only {_listing(include)} are selected")
        return None
    folded = value.casefold()
    if include and folded not in include:
        return Filtered(rule, f"{what} {value!r} is not selected (selected: {_listing(include)})")
    if folded in exclude:
        return Filtered(rule, f"{what} {value!r} is excluded")
    return None


def _gateway() -> EventFilter:
    # The old gateway also dropped events older than 21 days; a replay would lose them, so the
    # preset leaves max-age unset (use max_age_days=21 / --max-age-days 21 to match it exactly).
    return EventFilter(event_types=[AUTH_ACTIVITY], include_services=["CrowdStrike Authentication"])


def _all_user_activity() -> EventFilter:
    return EventFilter(event_types=[AUTH_ACTIVITY, USER_ACTIVITY], exclude_operations=STREAM_NOISE_OPERATIONS)


PRESETS = {
    "gateway": _gateway,
    "all-user-activity": _all_user_activity,
}
"""Preset name -> factory. `gateway`: AuthActivityAuditEvent from service "CrowdStrike
Authentication" only (the old gateway's choice, and the default). `all-user-activity`:
AuthActivityAuditEvent and UserActivityAuditEvent of every service, except the streaming API's
own streamStarted/streamStopped noise."""
