"""The dead-letter record format shared by the ingestor, the publisher and the DLQ tools.

Value: the original bytes, unchanged, so a redrive is a plain re-produce. Headers: the
original `falcon.*` headers plus the `dlq.*` ones below.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STAGE = "dlq.stage"  # "ingest", "convert" or "deliver"
ERROR_CODE = "dlq.error_code"
ERROR_MESSAGE = "dlq.error_message"
SOURCE_TOPIC = "dlq.source_topic"
SOURCE_PARTITION = "dlq.source_partition"
SOURCE_OFFSET = "dlq.source_offset"
LAST_GOOD_OFFSET = "dlq.last_good_offset"  # ingest stage: the feed's last good Falcon offset before it
TIME = "dlq.time"

MAX_MESSAGE_CHARS = 1000

Headers = list[tuple[str, str | bytes | None]]


def dlq_headers(
    stage: str,
    code: str,
    message: str,
    original: Iterable[tuple[str, bytes | None]] = (),
    source_topic: str | None = None,
    source_partition: int | None = None,
    source_offset: int | None = None,
    last_good_offset: int | None = None,
    now: float | None = None,
) -> Headers:
    """Headers of a dead-letter record: the original falcon.* ones, then why and where from."""
    headers: Headers = [(k, v) for k, v in original if k.startswith("falcon.") and v is not None]
    headers += [
        (STAGE, stage.encode()),
        (ERROR_CODE, code.encode()),
        (ERROR_MESSAGE, message[:MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        (TIME, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now)).encode()),
    ]
    if source_topic is not None:
        headers.append((SOURCE_TOPIC, source_topic.encode()))
    if source_partition is not None:
        headers.append((SOURCE_PARTITION, str(source_partition).encode()))
    if source_offset is not None:
        headers.append((SOURCE_OFFSET, str(source_offset).encode()))
    if last_good_offset is not None:
        headers.append((LAST_GOOD_OFFSET, str(last_good_offset).encode()))
    return headers


@dataclass(frozen=True)
class DeadLetter:
    """What a DLQ record says about itself."""

    stage: str
    code: str
    message: str
    time: str
    feed: str | None
    falcon_offset: int | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    last_good_offset: int | None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def read_dead_letter(headers: Sequence[tuple[str, bytes | None]] | None) -> DeadLetter:
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}
    return DeadLetter(
        stage=h.get(STAGE, ""),
        code=h.get(ERROR_CODE, ""),
        message=h.get(ERROR_MESSAGE, ""),
        time=h.get(TIME, ""),
        feed=h.get("falcon.feed"),
        falcon_offset=_int(h.get("falcon.offset")),
        source_topic=h.get(SOURCE_TOPIC),
        source_partition=_int(h.get(SOURCE_PARTITION)),
        source_offset=_int(h.get(SOURCE_OFFSET)),
        last_good_offset=_int(h.get(LAST_GOOD_OFFSET)),
    )
