"""How fast `publisher.convert.Converter` turns Falcon events into CloudTrail audit events.

Builds its own realistic mix (no emulator needed): mostly logins and second factors, some
failures, user activity of several services, stream noise, other event types and the odd
oversized or broken event. Prints events/s per case on one core (CPU time of this process, best
of a few rounds).

    .venv/bin/python -m bench.convert [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable

from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter

CHANNEL_ARN = "arn:aws:cloudtrail:us-east-1:123456789012:channel/bench"
NOW = 1_732_608_000.0
CID = "0123456789abcdef0123456789abcdef"

_AUTH_OPERATIONS = ["userAuthenticate", "twoFactorAuthenticate", "saml2Assert", "changePassword", "updateUser"]
_USER_OPERATIONS = [
    ("detection_update", "detections"),
    ("update_policy", "prevention_policies"),
    ("host_hidden", "hosts"),
    ("create_rule", "custom_ioa"),
]


def _event(rng: random.Random, offset: int) -> dict[str, object]:
    roll = rng.random()
    created = int(NOW * 1000) - rng.randrange(86_400_000)
    user = f"user{rng.randrange(500)}@example.com"
    ip = f"198.51.100.{rng.randrange(256)}" if rng.random() < 0.8 else f"2001:db8::{rng.randrange(65536):x}"
    if roll < 0.55:  # logins and other authentication activity
        success = rng.random() > 0.15
        event: dict[str, object] = {
            "UserId": user,
            "UserIp": ip,
            "OperationName": rng.choice(_AUTH_OPERATIONS),
            "ServiceName": "CrowdStrike Authentication",
            "Success": success,
            "UTCTimestamp": created // 1000,
            "AuditKeyValues": [] if success else [{"Key": "reason", "ValueString": "invalid credentials"}],
            "Attributes": {} if success else {"reason": "invalid credentials"},
        }
        event_type = "AuthActivityAuditEvent"
    elif roll < 0.85:  # user activity in the console and the API
        operation, service = rng.choice(_USER_OPERATIONS)
        event = {
            "UserId": user,
            "UserIp": ip,
            "OperationName": operation,
            "ServiceName": service,
            "UTCTimestamp": created // 1000,
            "AuditKeyValues": [
                {"Key": "detection_id", "ValueString": f"ldt:{rng.getrandbits(128):032x}:{rng.getrandbits(40)}"},
                {"Key": "new_state", "ValueString": rng.choice(["in_progress", "closed", "false_positive"])},
                {"Key": "assigned_to", "ValueString": user},
            ],
            "Attributes": {"status": "updated", "comment": "triaged by the morning shift"},
        }
        event_type = "UserActivityAuditEvent"
    elif roll < 0.92:  # the streaming API's own noise
        event = {
            "UserId": "api-client-falconlake",
            "UserIp": ip,
            "OperationName": rng.choice(["streamStarted", "streamStopped"]),
            "ServiceName": "Crowdstrike Streaming API",
            "UTCTimestamp": created // 1000,
            "AuditKeyValues": [
                {"Key": "APIClientID", "ValueString": "a1b2c3"},
                {"Key": "partition", "ValueString": "0"},
            ],
        }
        event_type = "AuthActivityAuditEvent"
    elif roll < 0.995:  # other types in the same stream
        event = {
            "ComputerName": f"host-{rng.randrange(1000)}",
            "DetectName": "Malicious Activity",
            "Severity": rng.randrange(1, 5),
            "CommandLine": "powershell.exe -enc " + "A" * rng.randrange(100, 600),
        }
        event_type = "DetectionSummaryEvent"
    else:  # the odd oversized login
        event = {
            "UserId": user,
            "UserIp": ip,
            "OperationName": "userAuthenticate",
            "ServiceName": "CrowdStrike Authentication",
            "Success": True,
            "UTCTimestamp": created // 1000,
            "Attributes": {"claims": "x" * 40_000},
        }
        event_type = "AuthActivityAuditEvent"
    metadata = {
        "customerIDString": CID,
        "offset": offset,
        "eventType": event_type,
        "eventCreationTime": created,
        "version": "1.0",
    }
    return {"metadata": metadata, "event": event}


def realistic_mix(count: int, seed: int = 7) -> list[bytes]:
    """`count` Falcon events as the stream would carry them (JSON bytes), reproducible by seed."""
    rng = random.Random(seed)
    return [json.dumps(_event(rng, offset)).encode() for offset in range(count)]


def _rate(convert: Callable[[bytes, str], object], events: list[bytes], rounds: int) -> tuple[float, int]:
    best = 0.0
    delivered = 0
    for _ in range(rounds):
        # CPU time of this process: events/s on one core, even when other work shares the machine
        start = time.process_time()
        delivered = sum(1 for raw in events if isinstance(convert(raw, "0"), AuditEvent))
        best = max(best, len(events) / max(time.process_time() - start, 1e-9))
    return best, delivered


def run(quick: bool = False) -> dict[str, float]:
    """events/s for each case (best of a few rounds), plus how many of the mix each preset delivers."""
    count = 4_000 if quick else 20_000
    rounds = 2 if quick else 3
    events = realistic_mix(count)
    auth_only = [raw for raw in events if b'"CrowdStrike Authentication"' in raw and b'"x' not in raw]
    results: dict[str, float] = {}
    for preset in ("all-user-activity", "gateway"):
        converter = Converter(CHANNEL_ARN, EventFilter.from_preset(preset), now=lambda: NOW)
        rate, delivered = _rate(converter.convert, events, rounds)
        results[f"convert_mix_{preset}_events_per_s"] = rate
        results[f"convert_mix_{preset}_delivered_share"] = delivered / len(events)
    converter = Converter(CHANNEL_ARN, EventFilter.from_preset("gateway"), now=lambda: NOW)
    results["convert_logins_only_events_per_s"], _ = _rate(converter.convert, auth_only, rounds)
    return results


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    results = run(quick=quick)
    width = max(len(name) for name in results)
    print(f"{'case':<{width}}  value")
    for name, value in results.items():
        shown = f"{value:.2f}" if name.endswith("_share") else f"{value:,.0f}"
        print(f"{name:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
