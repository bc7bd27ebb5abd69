"""Deterministic Falcon Event Streams events: the same (settings, feed, offset) always gives the same bytes.

An event is a pure function of the generator's settings (seed, base time, spacing, first
offset, event size) and of (feed, offset), so any offset can be served again at any time
without storing what was served. To be fast, a pool of body templates is built lazily from
the seed; an offset picks a template by a hash of (feed, offset) and only the offset and
times are formatted in. The mix follows REFERENCE.md section 1: authentication audit events
with every documented operation name, user activity audit events, streaming API noise and a
share of non-audit types (detections, incidents, firewall matches, remote response sessions).

Events from an NDJSON file (`load_event_file`) are served as they are, keeping their offsets.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUTH_SERVICE = "CrowdStrike Authentication"
STREAMING_SERVICE = "Crowdstrike Streaming API"
AUTH_OPERATIONS: tuple[str, ...] = (
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
)
STREAMING_OPERATIONS: tuple[str, ...] = ("streamStarted", "streamStopped")
USER_ACTIVITY_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("detection_update", "detections"),
    ("incident_update", "incidents"),
    ("update_policy", "prevention_policies"),
    ("create_host_group", "host_groups"),
    ("device_action_contain", "devices"),
    ("device_action_lift_containment", "devices"),
    ("create_ioc", "iocs"),
    ("update_sensor_update_policy", "sensor_update_policies"),
)
NON_AUDIT_TYPES: tuple[str, ...] = (
    "DetectionSummaryEvent",
    "IncidentSummaryEvent",
    "FirewallMatchEvent",
    "RemoteResponseSessionStartEvent",
    "RemoteResponseSessionEndEvent",
)
# (kind, weight) of the template pool; kinds map to builders below.
_MIX: tuple[tuple[str, int], ...] = (
    ("auth", 45),
    ("user_activity", 20),
    ("streaming", 10),
    ("DetectionSummaryEvent", 9),
    ("IncidentSummaryEvent", 5),
    ("FirewallMatchEvent", 7),
    ("RemoteResponseSessionStartEvent", 2),
    ("RemoteResponseSessionEndEvent", 2),
)
_POOL_BITS = 12  # 4096 templates
_POOL_MASK = (1 << _POOL_BITS) - 1
_M64 = (1 << 64) - 1
# Sentinel numbers rendered into a template's JSON, then turned into %-format fields.
_SENTINEL_OFFSET = -7_111_111_117
_SENTINEL_CREATED_MS = -7_222_222_227
_SENTINEL_SECONDS = -7_333_333_337

_USERS = (
    "analyst@example.com",
    "soc.lead@example.com",
    "j.doe@example.com",
    "josé.garcía@example.es",
    "zoë.müller@example.de",
    "søren.ærø@example.dk",
    "田中太郎@example.jp",
    "иван.петров@example.ru",
    "łukasz.żółć@example.pl",
    "admin@corp.example.net",
    "françois.dupré@example.fr",
    "ömer.çelik@example.com.tr",
)
_ROLES = (
    "falconhost_admin",
    "falconhost_analyst",
    "falconhost_read_only",
    "remote_responder_one",
    "falconhost_investigator",
    "custom_ioc_manager",
)
_FAILURE_REASONS = (
    "invalid code",
    "invalid credentials",
    "account locked",
    "password expired",
    "SAML assertion expired",
    "user not found",
)
_HOSTS = ("WS-0042", "WS-1187", "LAPTOP-7Q2K", "SRV-DB01", "SRV-WEB03", "mac-ana", "build-runner-12")
_DOMAINS = ("CORP", "EXAMPLE", "LAB")
_PROCESSES = (
    ("powershell.exe", r"\Device\HarddiskVolume3\Windows\System32\WindowsPowerShell\v1.0"),
    ("cmd.exe", r"\Device\HarddiskVolume3\Windows\System32"),
    ("rundll32.exe", r"\Device\HarddiskVolume3\Windows\System32"),
    ("mshta.exe", r"\Device\HarddiskVolume3\Windows\SysWOW64"),
    ("python3", "/usr/bin"),
    ("curl", "/usr/bin"),
)
_TACTICS = (
    ("Execution", "PowerShell", "Follow Through"),
    ("Credential Access", "OS Credential Dumping", "Gain Access"),
    ("Defense Evasion", "Masquerading", "Keep Access"),
    ("Persistence", "Scheduled Task/Job", "Keep Access"),
    ("Command and Control", "Ingress Tool Transfer", "Contact Controlled Systems"),
)
_SEVERITIES = ((1, "Informational"), (2, "Low"), (3, "Medium"), (4, "High"), (5, "Critical"))
_WORDS = (
    "process",
    "credential",
    "suspicious",
    "behaviour",
    "launched",
    "encoded",
    "command",
    "policy",
    "sensor",
    "network",
    "connection",
    "blocked",
    "analyst",
    "reviewed",
    "escalated",
    "host",
    "memory",
    "registry",
    "persistence",
    "adversary",
)


def _mix64(value: int) -> int:
    """SplitMix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    value &= _M64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _M64
    return value ^ (value >> 31)


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from text, stable across processes (unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class _Template:
    event_type: str
    fmt: bytes  # %-format with bytes keys o (offset), c (created ms), s (seconds)


class EventGenerator:
    """Realistic Falcon events as a pure function of (settings, feed, offset).

    `line(feed, offset)` returns the event's JSON as UTF-8 bytes (no newline); calling it
    again, in this process or another with the same settings, returns the same bytes.
    `metadata.eventCreationTime` is `base_time_ms + (offset - first_offset) * spacing_ms`
    (epoch milliseconds) and the body's times (`UTCTimestamp`, ...) are that in seconds.
    With `event_size`, each event is padded in a realistic text field to about that many bytes.
    """

    def __init__(
        self,
        seed: int = 1,
        *,
        base_time_ms: int = 1_732_608_000_000,
        spacing_ms: float = 1000.0,
        first_offset: int = 1,
        event_size: int | None = None,
    ) -> None:
        self.seed = seed
        self.base_time_ms = base_time_ms
        self.spacing_ms = spacing_ms
        self.first_offset = first_offset
        self.event_size = event_size
        self.cid = random.Random(_stable_int("cid", seed)).getrandbits(128).to_bytes(16, "big").hex()
        self._api_client = random.Random(_stable_int("api", seed)).getrandbits(128).to_bytes(16, "big").hex()
        self._pool: list[_Template | None] = [None] * (1 << _POOL_BITS)
        self._feed_keys: dict[str, int] = {}
        self._kinds = [kind for kind, weight in _MIX for _ in range(weight)]

    # -- public API ------------------------------------------------------------------------

    def created_ms(self, offset: int) -> int:
        """metadata.eventCreationTime of the event at offset (epoch milliseconds)."""
        return self.base_time_ms + int((offset - self.first_offset) * self.spacing_ms)

    def render(self, feed: str, offset: int) -> tuple[str, bytes]:
        """(metadata.eventType, JSON bytes without newline) of the event at (feed, offset)."""
        template = self._template(feed, offset)
        created = self.base_time_ms + int((offset - self.first_offset) * self.spacing_ms)
        line = template.fmt % {b"o": offset, b"c": created, b"s": created // 1000}
        return template.event_type, line

    def line(self, feed: str, offset: int) -> bytes:
        """The event at (feed, offset) as JSON bytes (UTF-8, compact, no newline)."""
        return self.render(feed, offset)[1]

    def event_type(self, feed: str, offset: int) -> str:
        """metadata.eventType of the event at (feed, offset), without rendering it."""
        return self._template(feed, offset).event_type

    def event(self, feed: str, offset: int) -> dict[str, Any]:
        """The event at (feed, offset) as a parsed JSON object."""
        parsed: dict[str, Any] = json.loads(self.line(feed, offset))
        return parsed

    def events(self, feed: str, start: int, count: int) -> Iterator[dict[str, Any]]:
        """Parsed events of offsets start .. start+count-1 of feed."""
        for offset in range(start, start + count):
            yield self.event(feed, offset)

    # -- templates -------------------------------------------------------------------------

    def _template(self, feed: str, offset: int) -> _Template:
        key = self._feed_keys.get(feed)
        if key is None:
            key = self._feed_keys[feed] = _stable_int("feed", self.seed, feed)
        index = _mix64(key + offset * 0x9E3779B97F4A7C15) & _POOL_MASK
        template = self._pool[index]
        if template is None:
            # Racing threads build identical templates: the result depends on the index only.
            template = self._pool[index] = self._build(index)
        return template

    def _build(self, index: int) -> _Template:
        rng = random.Random(_stable_int("template", self.seed, index))
        kind = self._kinds[rng.randrange(len(self._kinds))]
        if kind == "auth":
            # Round-robin over the pool so every operation name is well represented.
            event_type, body = "AuthActivityAuditEvent", self._auth_body(rng, AUTH_OPERATIONS[index % 11])
        elif kind == "user_activity":
            event_type, body = "UserActivityAuditEvent", self._user_activity_body(rng)
        elif kind == "streaming":
            event_type, body = "AuthActivityAuditEvent", self._streaming_body(rng)
        else:
            event_type, body = kind, _NON_AUDIT_BUILDERS[kind](self, rng)
        envelope = {
            "metadata": {
                "customerIDString": self.cid,
                "offset": _SENTINEL_OFFSET,
                "eventType": event_type,
                "eventCreationTime": _SENTINEL_CREATED_MS,
                "version": "1.0",
            },
            "event": body,
        }
        if self.event_size:
            sample = len(_dumps(envelope).encode()) + 2  # sentinels are about as wide as real values
            missing = self.event_size - sample - 40
            if missing > 0:
                _pad(event_type, body, _filler(rng, missing))
        text = _dumps(envelope).replace("%", "%%")
        text = (
            text.replace(str(_SENTINEL_OFFSET), "%(o)d")
            .replace(str(_SENTINEL_CREATED_MS), "%(c)d")
            .replace(str(_SENTINEL_SECONDS), "%(s)d")
        )
        return _Template(event_type, text.encode())

    # -- bodies ----------------------------------------------------------------------------

    def _auth_body(self, rng: random.Random, operation: str) -> dict[str, Any]:
        user = rng.choice(_USERS)
        risky = operation in {
            "userAuthenticate",
            "twoFactorAuthenticate",
            "saml2Assert",
            "changePassword",
            "resetPassword",
        }
        success = rng.random() >= (0.2 if risky else 0.05)
        pairs: list[tuple[str, str]] = []
        if operation in {"createUser", "deleteUser", "updateUser", "activateUser", "resetPassword"}:
            target = rng.choice(_USERS)
            pairs += [("target_name", target), ("target_uuid", _uuid(rng))]
            if operation == "updateUser":
                pairs.append(("first_name", target.split("@")[0].split(".")[0].title()))
        elif operation in {"grantUserRoles", "revokeUserRoles"}:
            pairs += [
                ("target_name", rng.choice(_USERS)),
                ("target_uuid", _uuid(rng)),
                ("roles", ",".join(sorted(rng.sample(_ROLES, rng.randint(1, 3))))),
            ]
        elif operation == "saml2Assert":
            pairs.append(("idp", rng.choice(("okta", "azure-ad", "onelogin", "ping"))))
        elif operation == "twoFactorAuthenticate":
            pairs.append(("method", rng.choice(("totp", "duo", "webauthn"))))
        if not success:
            pairs.append(("reason", rng.choice(_FAILURE_REASONS)))
        return self._audit_body(rng, user, operation, AUTH_SERVICE, success, pairs)

    def _user_activity_body(self, rng: random.Random) -> dict[str, Any]:
        operation, service = rng.choice(USER_ACTIVITY_OPERATIONS)
        pairs = [("id", _hex(rng, 32)), ("status", rng.choice(("new", "in_progress", "closed")))]
        if service == "detections":
            pairs = [
                ("detection_id", f"ldt:{_hex(rng, 32)}:{rng.randint(10**9, 10**11)}"),
                ("new_state", rng.choice(("in_progress", "true_positive", "false_positive", "closed"))),
                ("assigned_to", rng.choice(_USERS)),
            ]
        return self._audit_body(rng, rng.choice(_USERS), operation, service, rng.random() >= 0.03, pairs)

    def _streaming_body(self, rng: random.Random) -> dict[str, Any]:
        operation = rng.choice(STREAMING_OPERATIONS)
        pairs = [
            ("APIClientID", self._api_client),
            ("partition", str(rng.randint(0, 3))),
            ("offset", str(rng.randint(1, 10**6))),
            ("appId", rng.choice(("falconlake", "siemconnector", "fig01"))),
            ("eventType", "[All event type(s)]"),
        ]
        user = f"api-client-id:{self._api_client}"
        return self._audit_body(rng, user, operation, STREAMING_SERVICE, True, pairs)

    def _audit_body(
        self,
        rng: random.Random,
        user: str,
        operation: str,
        service: str,
        success: bool,
        pairs: list[tuple[str, str]],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "UserId": user,
            "UserIp": _ip(rng),
            "OperationName": operation,
            "ServiceName": service,
            "Success": success,
            "UTCTimestamp": _SENTINEL_SECONDS,
            "AuditKeyValues": [{"Key": k, "ValueString": v} for k, v in pairs],
        }
        shape = rng.random()
        if shape < 0.8:
            body["Attributes"] = dict(pairs)
        elif shape < 0.95:
            body["Attributes"] = [{"Key": k, "Value": v} for k, v in pairs]
        return body

    def _detection_body(self, rng: random.Random) -> dict[str, Any]:
        sensor = _hex(rng, 32)
        process, path = rng.choice(_PROCESSES)
        parent, _ = rng.choice(_PROCESSES)
        tactic, technique, objective = rng.choice(_TACTICS)
        severity, severity_name = rng.choice(_SEVERITIES)
        sha256 = _hex(rng, 64)
        process_id = rng.randint(10**10, 10**12)
        return {
            "ProcessStartTime": _SENTINEL_SECONDS,
            "ProcessEndTime": _SENTINEL_SECONDS,
            "ProcessId": process_id,
            "ParentProcessId": rng.randint(10**10, 10**12),
            "ComputerName": rng.choice(_HOSTS),
            "UserName": rng.choice(_USERS).split("@")[0],
            "DetectId": f"ldt:{sensor}:{process_id}",
            "DetectName": f"{technique} via {process}",
            "DetectDescription": f"A process associated with {tactic.lower()} ran {process}.",
            "Severity": severity,
            "SeverityName": severity_name,
            "FileName": process,
            "FilePath": path,
            "CommandLine": f"{process} -nop -w hidden -enc {_hex(rng, 24)}",
            "SHA256String": sha256,
            "MD5String": _hex(rng, 32),
            "SHA1String": "0" * 40,
            "MachineDomain": rng.choice(_DOMAINS),
            "ParentImageFileName": parent,
            "ParentCommandLine": f"{parent} /c start",
            "SensorId": sensor,
            "IOCType": "hash_sha256",
            "IOCValue": sha256,
            "LocalIP": _ip(rng),
            "MACAddress": "-".join(_hex(rng, 2) for _ in range(6)),
            "Tactic": tactic,
            "Technique": technique,
            "Objective": objective,
            "PatternDispositionDescription": "Detection, standard detection.",
            "PatternDispositionValue": 0,
            "PatternDispositionFlags": {"Indicator": False, "Detect": True, "KillProcess": False},
            "FalconHostLink": f"https://falcon.crowdstrike.com/activity/detections/detail/{sensor}/{process_id}",
        }

    def _incident_body(self, rng: random.Random) -> dict[str, Any]:
        host = _hex(rng, 32)
        incident = f"inc:{host}:{_hex(rng, 32)}"
        return {
            "IncidentStartTime": _SENTINEL_SECONDS,
            "IncidentEndTime": _SENTINEL_SECONDS,
            "IncidentID": incident,
            "FalconHostLink": f"https://falcon.crowdstrike.com/crowdscore/incidents/details/{incident}",
            "State": rng.choice(("open", "closed")),
            "FineScore": rng.randint(10, 100),
            "LateralMovement": rng.randint(0, 1),
            "IncidentType": 1,
            "HostID": host,
            "LMHostIDs": [_hex(rng, 32) for _ in range(rng.randint(0, 2))],
            "UserId": rng.choice(_USERS),
        }

    def _firewall_body(self, rng: random.Random) -> dict[str, Any]:
        process, path = rng.choice(_PROCESSES)
        ipv6 = rng.random() < 0.2
        return {
            "DeviceId": _hex(rng, 32),
            "Ipv": "ipv6" if ipv6 else "ipv4",
            "CommandLine": f"{path}\\{process}",
            "ConnectionDirection": rng.choice(("1", "2")),
            "EventType": "FirewallRuleApplied",
            "Flags": {"Audit": False, "Log": True, "Monitor": rng.random() < 0.3},
            "HostName": rng.choice(_HOSTS),
            "ICMPCode": "",
            "ICMPType": "",
            "ImageFileName": f"{path}\\{process}",
            "LocalAddress": _ipv6(rng) if ipv6 else _ipv4(rng),
            "LocalPort": str(rng.randint(1024, 65535)),
            "MatchCount": rng.randint(1, 20),
            "MatchCountSinceLastReport": rng.randint(1, 5),
            "NetworkProfile": rng.choice(("0", "1", "2")),
            "PID": str(rng.randint(100, 65000)),
            "PolicyName": rng.choice(("Workstations", "Servers", "Default Firewall Policy")),
            "PolicyID": _hex(rng, 32),
            "Protocol": rng.choice(("6", "17")),
            "RemoteAddress": _ipv6(rng) if ipv6 else _ipv4(rng),
            "RemotePort": str(rng.choice((22, 53, 443, 445, 3389, 8080))),
            "RuleAction": rng.choice(("1", "2")),
            "RuleDescription": "Block outbound SMB to the internet",
            "RuleFamilyID": _hex(rng, 32),
            "RuleGroupName": rng.choice(("Baseline", "Lateral movement", "Egress")),
            "RuleName": rng.choice(("Block SMB out", "Allow DNS", "Block RDP in")),
            "RuleId": str(rng.randint(10**17, 10**18)),
            "Status": "",
            "Timestamp": _SENTINEL_SECONDS,
            "TreeID": "",
        }

    def _rr_body(self, rng: random.Random, end: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "SessionId": _uuid(rng),
            "HostnameField": rng.choice(_HOSTS),
            "UserName": rng.choice(_USERS),
            "AgentIdString": _hex(rng, 32),
        }
        body["EndTimestamp" if end else "StartTimestamp"] = _SENTINEL_SECONDS
        if end:
            body["Commands"] = rng.sample(["ls", "ps", "netstat", "get", "reg query", "memdump"], 3)
        return body


_NON_AUDIT_BUILDERS = {
    "DetectionSummaryEvent": EventGenerator._detection_body,
    "IncidentSummaryEvent": EventGenerator._incident_body,
    "FirewallMatchEvent": EventGenerator._firewall_body,
    "RemoteResponseSessionStartEvent": lambda gen, rng: gen._rr_body(rng, end=False),
    "RemoteResponseSessionEndEvent": lambda gen, rng: gen._rr_body(rng, end=True),
}


def _pad(event_type: str, body: dict[str, Any], text: str) -> None:
    """Grow the event in the field where long text is natural for its type."""
    if "AuditKeyValues" in body:
        body["AuditKeyValues"].append({"Key": "description", "ValueString": text})
    elif event_type == "DetectionSummaryEvent":
        body["DetectDescription"] = f"{body['DetectDescription']} {text}"
    elif event_type == "FirewallMatchEvent":
        body["RuleDescription"] = f"{body['RuleDescription']} {text}"
    else:
        body["Description"] = text


def _filler(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _uuid(rng: random.Random) -> str:
    h = _hex(rng, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ipv4(rng: random.Random) -> str:
    net = rng.choice(("192.0.2", "198.51.100", "203.0.113", "10.20.30"))
    return f"{net}.{rng.randint(1, 254)}"


def _ipv6(rng: random.Random) -> str:
    return f"2001:db8:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"


def _ip(rng: random.Random) -> str:
    return _ipv6(rng) if rng.random() < 0.2 else _ipv4(rng)


# -- events from a file ------------------------------------------------------------------------


class EventFileError(ValueError):
    """An NDJSON event file could not be used; the message names the file and line."""


@dataclass(frozen=True)
class FileEvent:
    """One event read from a file: its offset, type and the bytes to serve (no newline)."""

    offset: int
    event_type: str
    line: bytes


def load_event_file(path: Path) -> dict[str, list[FileEvent]]:
    """Events of an NDJSON file, per feed id, sorted by metadata.offset.

    Each line is either a Falcon event (`{"metadata": ..., "event": ...}`, with an optional
    top-level `"feed"` naming its feed, default "0") or a record line written by
    `--record` (`{"feed", "offset", "event"}`; lines marked `"malformed": true` are skipped).
    An event line without a "feed" field is served byte for byte as it is in the file.
    Raises EventFileError naming the line when a line is not such an object or an offset
    repeats within a feed.
    """
    feeds: dict[str, dict[int, FileEvent]] = {}
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise EventFileError(f"{path}: cannot read event file: {exc.strerror}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text:
                continue
            feed, event_type, offset, line = _parse_file_line(path, number, text)
            if event_type is None:
                continue
            events = feeds.setdefault(feed, {})
            if offset in events:
                raise EventFileError(f"{path}:{number}: offset {offset} of feed {feed} appears twice")
            events[offset] = FileEvent(offset, event_type, line)
    return {feed: [events[o] for o in sorted(events)] for feed, events in feeds.items()}


def _parse_file_line(path: Path, number: int, text: bytes) -> tuple[str, str | None, int, bytes]:
    where = f"{path}:{number}"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise EventFileError(f"{where}: not a JSON object ({exc})") from exc
    if not isinstance(obj, dict):
        raise EventFileError(f"{where}: not a JSON object")
    if obj.get("malformed"):
        return "", None, 0, b""
    feed = str(obj.get("feed", "0"))
    if "metadata" in obj:
        event = obj
        if "feed" in obj:
            event = {k: v for k, v in obj.items() if k != "feed"}
            text = _dumps(event).encode()
    elif isinstance(obj.get("event"), dict):
        event = obj["event"]
        text = _dumps(event).encode()
    else:
        raise EventFileError(f"{where}: neither a Falcon event nor a record line (no 'metadata')")
    metadata = event.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("offset"), int):
        raise EventFileError(f"{where}: the event has no integer metadata.offset")
    return feed, str(metadata.get("eventType", "")), metadata["offset"], text


def write_event_file(path: Path, lines: Iterable[tuple[str, bytes]]) -> None:
    """Write (feed, event bytes) pairs as an NDJSON file `load_event_file` reads back."""
    with path.open("wb") as handle:
        for feed, line in lines:
            if feed == "0":
                handle.write(line + b"\n")
            else:
                handle.write(b'{"feed":' + json.dumps(feed).encode() + b"," + line.lstrip()[1:] + b"\n")
