"""How each Falcon event type becomes CloudTrail fields: `MAPPINGS` (event type -> EventMapping).

Adding an event type = a schema file in schemas/ plus an entry in `MAPPINGS`; docs/conversion.md
describes the mapping of each field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from publisher.json_text import compact
from publisher.schema_check import is_ip_address

AUTHENTICATION_FAILED = "AuthenticationFailed"
OPERATION_FAILED = "OperationFailed"
# Operations whose failure is a failed sign-in (errorCode AuthenticationFailed); any other
# failed operation gets OperationFailed. Compared case-insensitively.
AUTHENTICATION_OPERATIONS = frozenset({"userauthenticate", "twofactorauthenticate", "saml2assert"})
# Keys whose value becomes errorMessage, in this order of preference, looked up (case-insensitively)
# in Attributes first, then in AuditKeyValues.
REASON_KEYS = ("reason", "failure_reason", "error", "error_message", "message")


@dataclass(frozen=True)
class MappedFields:
    """What one event type contributes to eventData; the rest is common to every type."""

    principal_id: str
    event_name: str
    details: dict[str, Any] | None = None
    source_ip: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventMapping:
    """How one Falcon event type becomes CloudTrail fields.

    `map_event` gets the validated event object (Attributes already a map) and must not raise
    on it; `kept_fields` are the event fields the shrink rule keeps in additionalEventData.raw.
    """

    map_event: Callable[[Mapping[str, Any]], MappedFields]
    kept_fields: tuple[str, ...]


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return compact(value)


def _reason(event: Mapping[str, Any]) -> str | None:
    attributes = event.get("Attributes") or {}
    by_key = {str(key).casefold(): value for key, value in attributes.items()}
    for key in REASON_KEYS:
        found = _text(by_key.get(key))
        if found is not None:
            return found
    entries: dict[str, Any] = {}
    for entry in event.get("AuditKeyValues") or ():
        entries.setdefault(entry["Key"].casefold(), entry.get("ValueString"))
    for key in REASON_KEYS:
        found = _text(entries.get(key))
        if found is not None:
            return found
    return None


def map_user_activity(event: Mapping[str, Any]) -> MappedFields:
    """The mapping of AuthActivityAuditEvent and UserActivityAuditEvent (docs/conversion.md)."""
    operation: str = event["OperationName"]
    audit_key_values = event.get("AuditKeyValues")
    attributes = event.get("Attributes")
    user_ip = event.get("UserIp")
    if attributes:
        request_parameters: dict[str, Any] | None = dict(attributes)
    elif audit_key_values:
        request_parameters = {entry["Key"]: entry.get("ValueString") for entry in audit_key_values}
    else:
        request_parameters = None
    error_code = error_message = None
    if event.get("Success") is False:
        error_code = AUTHENTICATION_FAILED if operation.casefold() in AUTHENTICATION_OPERATIONS else OPERATION_FAILED
        error_message = _reason(event)
    return MappedFields(
        principal_id=event["UserId"],
        event_name=operation,
        details=None if audit_key_values is None else {"AuditKeyValues": audit_key_values},
        source_ip=user_ip if isinstance(user_ip, str) and is_ip_address(user_ip) else None,
        error_code=error_code,
        error_message=error_message,
        request_parameters=request_parameters,
    )


_USER_ACTIVITY_FIELDS = ("UserId", "UserIp", "OperationName", "ServiceName", "Success", "UTCTimestamp")

MAPPINGS: Mapping[str, EventMapping] = {
    "AuthActivityAuditEvent": EventMapping(map_user_activity, _USER_ACTIVITY_FIELDS),
    "UserActivityAuditEvent": EventMapping(map_user_activity, _USER_ACTIVITY_FIELDS),
}
"""Event type -> mapping. Adding an event type = a schema file in schemas/ plus an entry here."""
