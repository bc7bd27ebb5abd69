"""AuditEventBatch: the audit events of one partition that go in one PutAuditEvents request.

At most 100 events and 1 MB of request body (CloudTrail's limits, which botocore does not
check). Each entry remembers the Kafka record it came from so results find their way back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

MAX_EVENTS = 100
MAX_REQUEST_BYTES = 1_000_000
# The body is json.dumps' default form, as botocore writes it and publisher/put_client.py too:
# ASCII only (\uXXXX escapes) and ", " / ": " separators. The sizes below are of exactly that
# text: '{"auditEvents": [' + ']}'.
_ENVELOPE_BYTES = 19
# '{"id": ' + ', "eventData": ' + '}' + the ', ' before every entry but the first (counted for all).
_ENTRY_BYTES = 7 + 15 + 1 + 2
# ', "eventDataChecksum": ' + the quoted 44 characters of base64(SHA-256).
_CHECKSUM_BYTES = 23 + 46


@dataclass(frozen=True, slots=True)
class BatchEntry:
    id: str
    event_data: str
    partition: int
    offset: int
    created_ms: int | None
    size: int  # bytes this entry adds to the request body
    record: Any = None  # the Kafka message it came from: a rejected event goes to the DLQ as it was

    def as_request(self, checksum: bool) -> dict[str, str]:
        entry = {"id": self.id, "eventData": self.event_data}
        if checksum:
            entry["eventDataChecksum"] = event_data_checksum(self.event_data)
        return entry


def event_data_checksum(event_data: str) -> str:
    """base64(SHA-256(eventData)), as CloudTrail verifies it."""
    return base64.b64encode(hashlib.sha256(event_data.encode("utf-8")).digest()).decode()


def entry_size(audit_id: str, event_data: str, checksum: bool) -> int:
    """Bytes one entry adds to the request body as it is sent (eventData is a JSON
    string inside JSON, every non-ASCII character escaped as \\uXXXX), so a batch that fits
    here fits the 1 MB limit on the wire."""
    size = len(json.dumps(event_data)) + len(json.dumps(audit_id)) + _ENTRY_BYTES
    return size + (_CHECKSUM_BYTES if checksum else 0)


@dataclass
class AuditEventBatch:
    partition: int
    max_events: int = MAX_EVENTS
    max_bytes: int = MAX_REQUEST_BYTES
    entries: list[BatchEntry] = field(default_factory=list)
    size: int = _ENVELOPE_BYTES
    opened_at: float = field(default_factory=time.monotonic)

    def fits(self, entry: BatchEntry) -> bool:
        return len(self.entries) < self.max_events and self.size + entry.size <= self.max_bytes

    def add(self, entry: BatchEntry, now: float | None = None) -> None:
        if not self.entries:
            self.opened_at = time.monotonic() if now is None else now
        self.entries.append(entry)
        self.size += entry.size

    def full(self) -> bool:
        return len(self.entries) >= self.max_events

    def __len__(self) -> int:
        return len(self.entries)


def retry_batch(batch: AuditEventBatch, ids: set[str]) -> AuditEventBatch:
    """A batch of the entries whose ids failed retryably: same ids, same data, re-sent."""
    again = AuditEventBatch(batch.partition, batch.max_events, batch.max_bytes)
    for entry in batch.entries:
        if entry.id in ids:
            again.add(entry)
    return again
