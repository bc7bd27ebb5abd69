"""The SSM parameter that records, per Falcon feed, the last offset delivered to CloudTrail Lake.

Format: a JSON object {"<feed id>": <offset>}. The old gateway wrote a Python dict repr
({'0': 48643}); reading accepts both so a migrating deployment resumes where it was.
Writes are coalesced (at most one per interval, plus on demand at revocation and shutdown)
and merged with the stored value so no feed's offset ever moves backwards.

Several publishers write the same parameter (each its own feeds) and SSM has no conditional
write: two read-merge-write cycles at the same moment lose one of them. So after writing, a
store reads the value back (and again at its next interval) and repairs any of its feeds
that another writer's older merge moved backwards.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from falcon_lake.backoff import backoff_delay

log = logging.getLogger(__name__)

RETRYABLE_SSM_ERRORS = frozenset({"ThrottlingException", "TooManyUpdates", "InternalServerError"})


class OffsetStoreError(RuntimeError):
    """The stored value cannot be read or written; str() says which parameter and why."""


def parse_offsets_value(text: str) -> dict[str, int]:
    """Parse a stored offsets value, JSON or the old gateway's Python-dict repr.

    Raises ValueError with a one-line message when it is neither.
    """
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"not JSON nor a Python dict: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected an object of feed id to offset, got {type(value).__name__}")
    offsets: dict[str, int] = {}
    for feed, offset in value.items():
        if isinstance(offset, bool) or not isinstance(offset, int | str):
            raise ValueError(f"offset of feed {feed!r} is not a number: {offset!r}")
        try:
            offsets[str(feed)] = int(offset)
        except ValueError:
            raise ValueError(f"offset of feed {feed!r} is not a number: {offset!r}") from None
    return offsets


def merge_offsets(*sources: Mapping[str, int]) -> dict[str, int]:
    """Per feed, the highest offset any source holds."""
    merged: dict[str, int] = {}
    for source in sources:
        for feed, offset in source.items():
            if offset > merged.get(feed, -1):
                merged[feed] = offset
    return merged


class SsmOffsetStore:
    """Reads and (coalesced, never backwards) writes the offsets parameter.

    Thread-safe: `advance` may be called from any thread, `flush` from one.
    """

    def __init__(
        self,
        ssm_client: Any,
        parameter: str,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self._ssm = ssm_client
        self.parameter = parameter
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._on_write = on_write
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._last_write = float("-inf")
        self._verify_at: float | None = None  # when to read back what was written
        self.writes = 0
        self.repairs = 0

    def read(self, attempts: int = 8) -> dict[str, int]:
        """The stored offsets; {} when the parameter does not exist yet.

        Throttling and unreachable endpoints are retried `attempts` times with backoff.
        """
        last = attempts - 1
        for attempt in range(attempts):
            try:
                response = self._ssm.get_parameter(Name=self.parameter)
                break
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "ParameterNotFound":
                    return {}
                if code in RETRYABLE_SSM_ERRORS and attempt < last:
                    time.sleep(backoff_delay(attempt, 0.2, 5.0))
                    continue
                raise OffsetStoreError(f"cannot read SSM parameter {self.parameter!r}: {code}") from None
            except BotoCoreError as exc:
                if attempt < last:
                    time.sleep(backoff_delay(attempt, 0.2, 5.0))
                    continue
                raise OffsetStoreError(f"cannot reach SSM for parameter {self.parameter!r}: {exc}") from None
        try:
            return parse_offsets_value(response["Parameter"]["Value"])
        except ValueError as exc:
            raise OffsetStoreError(f"SSM parameter {self.parameter!r} holds no offsets: {exc}") from None

    def advance(self, offsets: Mapping[str, int]) -> None:
        """Record delivered offsets; they are written by the next due `flush`."""
        with self._lock:
            self._pending = merge_offsets(self._pending, offsets)

    def due(self) -> bool:
        with self._lock:
            changed = any(self._written.get(f, -1) < o for f, o in self._pending.items())
        now = self._clock()
        if self._verify_at is not None and now >= self._verify_at:
            return True
        return changed and now - self._last_write >= self._min_interval_s

    def flush(self, force: bool = False) -> bool:
        """Write pending offsets if the interval has passed (or `force`) and anything moved.

        Returns True when a write happened. Transient SSM errors are logged and left for
        the next flush: offsets only ever move forward, so a late write loses nothing.
        """
        with self._write_lock:
            return self._flush(force)

    def settled(self) -> bool:
        """Every offset handed to `advance` is stored (as far as this writer knows)."""
        with self._lock:
            return all(self._written.get(f, -1) >= o for f, o in self._pending.items())

    def flush_before_exit(self, timeout_s: float) -> bool:
        """Write what is pending now, retrying transient SSM errors with backoff for up to
        `timeout_s` (a revocation or shutdown is the last chance this writer has). Returns
        whether everything is stored."""
        deadline = self._clock() + timeout_s
        attempt = 0
        while True:
            self.flush(force=True)
            if self.settled():
                return True
            delay = backoff_delay(attempt, 0.2, 2.0)
            if self._clock() + delay > deadline:
                log.warning("SSM %s: the last offsets could not be written; the next writer catches up", self.parameter)
                return False
            time.sleep(delay)
            attempt += 1

    def _flush(self, force: bool) -> bool:
        if not force and not self.due():
            return False
        with self._lock:
            pending = dict(self._pending)
        wrote = False
        try:
            for _attempt in range(5):
                # Merge with what is stored: other publishers own other feeds of the same parameter.
                stored = self.read(attempts=1)
                mine = merge_offsets(self._written, pending)
                if all(stored.get(f, -1) >= o for f, o in mine.items()):
                    self._written = mine
                    if not wrote:
                        self._verify_at = None  # read back at its time: nothing moved backwards
                    return wrote  # stored holds all of ours (perhaps after a repair)
                if any(stored.get(f, -1) < o for f, o in self._written.items()):
                    self.repairs += 1
                    log.warning("SSM %s: another writer moved offsets back; writing them again", self.parameter)
                value = merge_offsets(stored, mine)
                self._ssm.put_parameter(
                    Name=self.parameter,
                    Value=json.dumps(value, sort_keys=True, separators=(",", ":")),
                    Type="String",
                    Overwrite=True,
                )
                wrote = True
                self._written = mine
                self._last_write = self._clock()
                self.writes += 1
                if self._on_write is not None:
                    self._on_write()
                log.info("SSM %s = %s", self.parameter, json.dumps(pending, sort_keys=True))
                # Read back once more later, too: a writer that read before this write may
                # still overwrite it with its older merge.
                self._verify_at = self._clock() + self._min_interval_s
        except (ClientError, BotoCoreError, OffsetStoreError) as exc:
            code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else str(exc)
            log.warning("SSM write of %s deferred: %s", self.parameter, code)
            self._last_write = self._clock()
            self._verify_at = self._clock() + self._min_interval_s
        return wrote

    def run_in_background(self, stop: threading.Event, tick_s: float = 0.5) -> threading.Thread:
        """Flush whenever due on a thread of its own, so a slow SSM never stalls the caller."""

        def loop() -> None:
            while not stop.wait(tick_s):
                self.flush()

        thread = threading.Thread(target=loop, name="ssm-offsets", daemon=True)
        thread.start()
        return thread
