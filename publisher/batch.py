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

MAX_EVENTS = 100
MAX_REQUEST_BYTES = 1_000_000
# {"auditEvents":[ ... ]} plus the commas between entries.
_ENVELOPE_BYTES = 20


@dataclass(frozen=True, slots=True)
class BatchEntry:
    id: str
    event_data: str
    partition: int
    offset: int
    created_ms: int | None
    size: int  # bytes this entry adds to the request body

    def as_request(self, checksum: bool) -> dict[str, str]:
        entry = {"id": self.id, "eventData": self.event_data}
        if checksum:
            entry["eventDataChecksum"] = event_data_checksum(self.event_data)
        return entry


def event_data_checksum(event_data: str) -> str:
    """base64(SHA-256(eventData)), as CloudTrail verifies it."""
    return base64.b64encode(hashlib.sha256(event_data.encode("utf-8")).digest()).decode()


def entry_size(audit_id: str, event_data: str, checksum: bool) -> int:
    """Bytes one entry adds to the JSON request body (eventData is a JSON string inside JSON)."""
    size = len(json.dumps(event_data, ensure_ascii=False).encode("utf-8")) + len(audit_id) + 24
    return size + (60 if checksum else 0) + 1


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

    def add(self, entry: BatchEntry) -> None:
        if not self.entries:
            self.opened_at = time.monotonic()
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
