"""Backlogs for the publish benchmarks, written to Kafka exactly as the ingestor writes them.

Both come from `emulators.falcon_events.EventGenerator` (seeded, so every run gets the same
bytes), three Falcon feeds, one per partition of a 3-partition topic:
- `login_backlog`: console logins only (AuthActivityAuditEvent of "CrowdStrike Authentication",
  operations LOGIN_OPERATIONS, sizes as the generator makes them), exactly FAILED_FRACTION of
  them failed (Success false), spread evenly through each feed. Offsets have the gaps a
  server-side-filtered stream has. The default `gateway` filter delivers every one.
- `realistic_mix`: every event the generator makes, contiguous offsets; the `gateway` preset
  delivers only the logins and other "CrowdStrike Authentication" events (about 45 %).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass

from confluent_kafka import Producer

from emulators.falcon_events import AUTH_SERVICE, EventGenerator
from falcon_lake.partitioner import partition_for

PARTITIONS = 3
FEEDS = ("0", "1", "4")  # murmur2 puts these on partitions 2, 0 and 1 of a 3-partition topic
LOGIN_OPERATIONS = ("userAuthenticate", "twoFactorAuthenticate", "saml2Assert")
FAILED_FRACTION = 0.10
SEED = 11


@dataclass(frozen=True)
class Record:
    """One Falcon event as the ingestor puts it in the topic."""

    feed: str
    offset: int
    event_type: str
    cid: str
    created_ms: int
    raw: bytes

    @property
    def uid(self) -> str:
        """The UID the publisher gives the audit event (DESIGN.md: `<cid>-<feed>-<offset>`)."""
        return f"{self.cid}-{self.feed}-{self.offset}"


def _generator(seed: int) -> EventGenerator:
    # Created an hour ago, 10 ms apart: recent enough for any max-age rule.
    return EventGenerator(seed, base_time_ms=int(time.time() * 1000) - 3_600_000, spacing_ms=10.0)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def login_backlog(
    count: int, feeds: tuple[str, ...] = FEEDS, seed: int = SEED, failed_fraction: float = FAILED_FRACTION
) -> list[Record]:
    """`count` console logins over `feeds`, exactly round(count * failed_fraction) of them failed.

    Each feed walks its offsets and keeps a login when its outcome keeps the feed's running
    share of failures at or under the target, so failures are spread through the backlog
    (the generator's own failure rate for logins, about 20 %, is higher, so both kinds are
    always available) and the result is the same for the same arguments.
    """
    generator = _generator(seed)
    service = AUTH_SERVICE.casefold()
    records: list[Record] = []
    for feed, wanted, wanted_failed in zip(
        feeds, _split(count, len(feeds)), _split(round(count * failed_fraction), len(feeds)), strict=True
    ):
        offset = taken = failed = 0
        while taken < wanted:
            offset += 1
            event_type, raw = generator.render(feed, offset)
            if event_type != "AuthActivityAuditEvent":
                continue
            event = json.loads(raw)["event"]
            if event["OperationName"] not in LOGIN_OPERATIONS or event["ServiceName"].casefold() != service:
                continue
            # Keep the running share of failures at or under wanted_failed / wanted, exactly at the end.
            if event["Success"] is False:
                if failed * wanted >= wanted_failed * (taken + 1):
                    continue
                failed += 1
            elif (taken - failed) * wanted >= (wanted - wanted_failed) * (taken + 1):
                continue
            records.append(Record(feed, offset, event_type, generator.cid, generator.created_ms(offset), raw))
            taken += 1
    return records


def realistic_mix(count: int, feeds: tuple[str, ...] = FEEDS, seed: int = SEED) -> list[Record]:
    """`count` events of every type the generator makes, offsets 1.. on each feed."""
    generator = _generator(seed)
    records: list[Record] = []
    for feed, wanted in zip(feeds, _split(count, len(feeds)), strict=True):
        for offset in range(1, wanted + 1):
            event_type, raw = generator.render(feed, offset)
            records.append(Record(feed, offset, event_type, generator.cid, generator.created_ms(offset), raw))
    return records


def delivered_by_gateway(record: Record) -> bool:
    """Whether the default `gateway` filter delivers this event (DESIGN.md: AuthActivityAuditEvent
    with ServiceName "CrowdStrike Authentication"), stated here independently of the product."""
    if record.event_type != "AuthActivityAuditEvent":
        return False
    service = json.loads(record.raw)["event"].get("ServiceName")
    return isinstance(service, str) and service.casefold() == AUTH_SERVICE.casefold()


def failed_logins(records: list[Record]) -> int:
    return sum(1 for record in records if json.loads(record.raw)["event"].get("Success") is False)


def interleaved(records: list[Record]) -> list[Record]:
    """The records with their feeds taken in turn, each feed in its own order: the ingestor
    reads every feed at once, so a backlog written while the publishers already read it
    reaches all partitions side by side, not one feed after the other."""
    by_feed: dict[str, list[Record]] = {}
    for record in records:
        by_feed.setdefault(record.feed, []).append(record)
    queues = list(by_feed.values())
    out: list[Record] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def produce_in_background_priority(bootstrap: str, topic: str, records: list[Record]) -> None:
    """`produce`, in a fresh process at the lowest CPU priority (nice 19): a backlog written while
    publishers already drain it must not take the CPU they measure with (on two cores the
    writer otherwise halves the first second's deliveries). It still writes far faster than a
    drain reads, so the publishers never wait for records."""
    context = multiprocessing.get_context("spawn")  # a fresh librdkafka, never a forked one
    process = context.Process(target=_produce_niced, args=(bootstrap, topic, records), name="bench-backlog")
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the backlog writer exited with {process.exitcode}")


def _produce_niced(bootstrap: str, topic: str, records: list[Record]) -> None:
    os.nice(19)
    produce(bootstrap, topic, records)


def produce(bootstrap: str, topic: str, records: list[Record], partitions: int = PARTITIONS) -> None:
    """Write records as the ingestor does: key = feed, exact bytes, falcon.* headers, murmur2
    partition, the feeds in turn (`interleaved`)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20, "compression.type": "zstd"}
    )
    for record in interleaved(records):
        headers: list[tuple[str, str | bytes | None]] = [
            ("falcon.feed", record.feed.encode()),
            ("falcon.offset", str(record.offset).encode()),
            ("falcon.event_type", record.event_type.encode()),
            ("falcon.cid", record.cid.encode()),
            ("falcon.created_ms", str(record.created_ms).encode()),
        ]
        while True:
            try:
                producer.produce(
                    topic,
                    key=record.feed.encode(),
                    value=record.raw,
                    headers=headers,
                    partition=partition_for(record.feed, partitions),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the backlog could not be written to Kafka")
