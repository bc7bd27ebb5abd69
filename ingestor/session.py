"""One stream session: discover every feed, read each in its own thread, refresh on a timer.

Any failure of any feed (401, 404, stream end, read timeout, connection error, failed
refresh) tears the whole session down; the supervisor then re-authenticates,
re-discovers and reopens every feed at its last offset + 1. Falcon allows one connection
per appId, so feeds are always reconnected together.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from falcon_lake.backoff import Backoff
from ingestor.falcon_api import AppIdHeld, FalconApiError, FalconClient, FeedSession
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent, LineSplitter, Malformed, parse_final_remainder, parse_line
from ingestor.resume import ResumePoint
from ingestor.sink import KafkaEventSink

log = logging.getLogger(__name__)

REFRESH_AT = 0.9


def refresh_delays(feeds: list[FeedSession], now: float) -> tuple[float, float]:
    """Seconds until the first refresh of a session, and between later ones (`now`: epoch seconds).

    At 90 % of the shortest refreshActiveSessionInterval, whatever its value; the first one also at
    90 % of the time left before the earliest sessionToken.expiration, when that is sooner.
    """
    every = min(f.refresh_interval_s for f in feeds) * REFRESH_AT
    first = every
    for feed in feeds:
        if feed.expiration is not None:
            left = feed.expiration.timestamp() - now
            if left > 0:
                first = min(first, left * REFRESH_AT)
    return first, every


class _Abandoned(Exception):
    """The reader was closed while waiting for Kafka; it must not write anything more."""


class SessionEnded(Exception):
    def __init__(self, cause: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.cause, self.detail, self.retry_after = cause, detail, retry_after


def _cause_of(exc: BaseException) -> tuple[str, float | None]:
    if isinstance(exc, FalconApiError):
        return f"{exc.what}-{exc.status}", exc.retry_after
    if isinstance(exc, requests.exceptions.ReadTimeout | socket.timeout):
        return "read-timeout", None
    if isinstance(exc, requests.RequestException | OSError):
        return "connection-error", None
    return "error", None


def _abort(response: requests.Response) -> None:
    """Unblock a thread reading this response by shutting its socket down.

    http.client reads through a file object whose socket is already detached, so the
    shutdown goes through a duplicate of the file descriptor (shutdown acts on the socket).
    """
    with contextlib.suppress(Exception):
        fd = response.raw._fp.fp.fileno()  # type: ignore[union-attr]
        dup = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()
    with contextlib.suppress(Exception):
        response.close()


class FeedReader(threading.Thread):
    """Reads one feed from `start` until the stream ends or the session is torn down.

    `on_progress(feed, last_offset)` reports the last offset handed to Kafka, once per network
    chunk and once more before the thread ends; `on_end(feed, cause, detail, retry_after)` is
    called when the stream failed or ended by itself (not when `close()` ended it).
    """

    def __init__(
        self,
        client: FalconClient,
        feed: FeedSession,
        start: int | None,
        event_types: tuple[str, ...],
        sink: KafkaEventSink,
        metrics: IngestorMetrics,
        read_timeout_s: float,
        on_progress: Callable[[str, int], None],
        on_end: Callable[[str, str, str, float | None], None],
    ) -> None:
        super().__init__(name=f"feed-{feed.feed}", daemon=True)
        self.feed = feed
        self._client = client
        self._start = start
        self._event_types = event_types
        self._sink = sink
        self._metrics = metrics
        self._read_timeout_s = read_timeout_s
        self._on_progress = on_progress
        self._on_end = on_end
        self._response: requests.Response | None = None
        self._closing = threading.Event()
        self.last_offset: int | None = None if start is None else start - 1
        self.events = 0
        # Counted per event, published per chunk (see _publish_progress).
        self._unpublished = False
        self._read_by_type: dict[str, int] = {}
        self._read_bytes = 0
        self._last_created_ms: int | None = None
        self._read_counters: dict[str, Any] = {}

    def close(self) -> None:
        self._closing.set()
        if self._response is not None:
            _abort(self._response)

    def run(self) -> None:
        feed = self.feed.feed
        try:
            self._response = self._client.open_stream(self.feed, self._start, self._event_types, self._read_timeout_s)
            if self._closing.is_set():
                _abort(self._response)
                return
            log.info("feed %s: connected at offset %s", feed, "newest" if self._start is None else self._start)
            splitter = LineSplitter()
            for chunk in self._response.iter_content(chunk_size=None):
                for line in splitter.feed(chunk):
                    if isinstance(line, Malformed):
                        self._dead_letter(feed, line)
                        continue
                    for item in parse_line(line):
                        self._handle(feed, item)
                self._publish_progress()
                if self._closing.is_set():
                    return
            if self._closing.is_set():
                return  # the end was ours (teardown), not the server's
            rest = splitter.pending()
            if rest.strip():
                # A clean end may come right after a complete last event with no newline of its own.
                events, whole = parse_final_remainder(rest)
                for event in events:
                    self._handle(feed, event)
                if not whole:
                    log.info("feed %s: stream ended inside a line; it is read again on reconnect", feed)
            self._publish_progress()
            self._on_end(feed, "stream-end", "the server closed the stream", None)
        except _Abandoned:
            return
        except Exception as exc:  # every failure ends the session; the supervisor recovers
            if not self._closing.is_set():
                cause, retry_after = _cause_of(exc)
                self._publish_progress()
                self._on_end(feed, cause, str(exc)[:300], retry_after)
        finally:
            self._publish_progress()

    def _publish_progress(self) -> None:
        """Metrics and the feed's position, once per network chunk rather than once per event."""
        if not self._unpublished:
            return
        feed = self.feed.feed
        metrics = self._metrics
        for event_type, count in self._read_by_type.items():
            child = self._read_counters.get(event_type)
            if child is None:
                child = self._read_counters[event_type] = metrics.events_read.labels(feed, event_type)
            child.inc(count)
        self._read_by_type.clear()
        metrics.bytes_read.labels(feed).inc(self._read_bytes)
        self._read_bytes = 0
        self._unpublished = False
        assert self.last_offset is not None
        metrics.last_offset.labels(feed).set(self.last_offset)
        if self._last_created_ms is not None:
            metrics.event_age.labels(feed).set(max(0.0, time.time() - self._last_created_ms / 1000))
        self._on_progress(feed, self.last_offset)

    def _dead_letter(self, feed: str, bad: Malformed) -> None:
        if not self._sink.dead_letter(feed, bad, self.last_offset, abandon=self._closing):
            raise _Abandoned

    def _handle(self, feed: str, item: FalconEvent | Malformed) -> None:
        if isinstance(item, Malformed):
            self._dead_letter(feed, item)
            return
        if self.last_offset is not None and item.offset <= self.last_offset:
            # Already in the topic: a server re-send. Skipping keeps the topic free of duplicates.
            self._metrics.skipped_duplicates.labels(feed).inc()
            log.debug("feed %s: offset %d is not after %d, skipped", feed, item.offset, self.last_offset)
            return
        if not self._sink.send(feed, item, abandon=self._closing):
            raise _Abandoned  # torn down while Kafka was full: the next session reads this offset again
        self.last_offset = item.offset
        self.events += 1
        event_type = item.event_type or "unknown"
        self._read_by_type[event_type] = self._read_by_type.get(event_type, 0) + 1
        self._read_bytes += len(item.raw)
        if item.created_ms is not None:
            self._last_created_ms = item.created_ms
        self._unpublished = True


class StreamSupervisor(threading.Thread):
    """Keeps a session open for as long as the process runs, reconnecting after every failure."""

    def __init__(
        self,
        client: FalconClient,
        sink: KafkaEventSink,
        metrics: IngestorMetrics,
        event_types: tuple[str, ...],
        resume: Callable[[list[str]], dict[str, ResumePoint]],
        stop: threading.Event,
        read_timeout_s: float = 300.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name="stream-supervisor", daemon=True)
        self._client = client
        self._sink = sink
        self._metrics = metrics
        self._event_types = event_types
        self._resume = resume
        self._stopping = stop
        self._read_timeout_s = read_timeout_s
        self._backoff = backoff or Backoff()
        self._next: dict[str, int | None] = {}
        self._ended = threading.Event()
        self._end: SessionEnded | None = None
        self._readers: list[FeedReader] = []
        self.connected = False
        self.error: BaseException | None = None

    def wake(self) -> None:
        """Stop waiting at once (call after setting the stop event), instead of at the next tick."""
        self._ended.set()

    def positions(self) -> dict[str, int | None]:
        """Per feed, the offset the next connection starts at (None: newest)."""
        return dict(self._next)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                ended: SessionEnded | None = None
                try:
                    self._run_session()
                except SessionEnded as exc:
                    ended = exc
                finally:
                    self._teardown()
                progressed = any(r.events for r in self._readers)
                self._readers = []
                if ended is not None:
                    # Logged after the teardown, so the positions are those the next session uses.
                    self._metrics.reconnects.labels(ended.cause).inc()
                    where = ", ".join(f"feed {f} at {'newest' if o is None else o}" for f, o in self._next.items())
                    log.warning("stream %s: %s; reconnecting (%s)", ended.cause, ended.detail, where or "no feeds yet")
                    if ended.cause.endswith("-401"):
                        self._client.invalidate_token()
                if progressed or time.monotonic() - started > 60:
                    self._backoff.reset()
                if self._stopping.is_set():
                    break
                delay = self._backoff.next_delay(ended.retry_after if ended is not None else None)
                log.info("reconnecting in %.1fs", delay)
                self._stopping.wait(delay)
        except BaseException as exc:  # a bug, not a transient error: stop the process loudly
            log.exception("stream supervisor failed")
            self.error = exc
            self._stopping.set()

    def _reader_ended(self, feed: str, cause: str, detail: str, retry_after: float | None) -> None:
        if self._end is None:
            self._end = SessionEnded(cause, f"feed {feed}: {detail}", retry_after)
        self._ended.set()

    def _on_progress(self, feed: str, last_offset: int) -> None:
        self._next[feed] = last_offset + 1

    def _run_session(self) -> None:
        self._end = None
        self._ended.clear()
        try:
            feeds = self._client.discover(self._event_types)
        except AppIdHeld as exc:
            raise SessionEnded("appid-held", f"{exc}; waiting for it to be released") from None
        except Exception as exc:
            cause, retry_after = _cause_of(exc)
            raise SessionEnded(cause, str(exc)[:300], retry_after) from None
        unknown = [f.feed for f in feeds if f.feed not in self._next]
        if unknown:
            try:
                points = self._resume(unknown)
            except Exception as exc:
                raise SessionEnded("resume-failed", f"cannot find where feeds {unknown} resume: {exc}") from None
            for feed, point in points.items():
                self._next[feed] = point.offset
        log.info("discovered %d feed(s): %s", len(feeds), ", ".join(f.feed for f in feeds))
        self._readers = [
            FeedReader(
                self._client,
                feed,
                self._next[feed.feed],
                self._event_types,
                self._sink,
                self._metrics,
                self._read_timeout_s,
                self._on_progress,
                self._reader_ended,
            )
            for feed in feeds
        ]
        for reader in self._readers:
            reader.start()
        self.connected = True
        self._metrics.connected.set(len(self._readers))
        first, every = refresh_delays(feeds, time.time())
        next_refresh = time.monotonic() + first
        while not self._stopping.is_set():
            if self._ended.wait(timeout=max(0.0, min(1.0, next_refresh - time.monotonic()))):
                if self._end is None:
                    break  # woken by wake(): the process is stopping
                raise self._end
            if time.monotonic() >= next_refresh:
                for session in feeds:
                    try:
                        self._client.refresh(session)
                    except Exception as exc:
                        cause, retry_after = _cause_of(exc)
                        raise SessionEnded(cause, f"feed {session.feed}: {exc}", retry_after) from None
                log.info("refreshed %d stream session(s); next in %.0fs", len(feeds), every)
                next_refresh = time.monotonic() + every

    def _teardown(self) -> None:
        self.connected = False
        self._metrics.connected.set(0)
        for reader in self._readers:
            reader.close()
        for reader in self._readers:
            # Wait for the end: a new reader of the same feed must never run beside an old one.
            while reader.is_alive():
                reader.join(timeout=10)
                if reader.is_alive():
                    log.warning("feed %s: reader still stopping", reader.feed.feed)
