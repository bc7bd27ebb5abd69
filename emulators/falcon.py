"""Falcon Event Streams API emulator: a real HTTP server speaking the wire protocol of REFERENCE.md section 1.

Endpoints (same paths, methods, headers and JSON shapes as the real API):

- `POST /oauth2/token` (form `client_id`, `client_secret`, optional `member_cid`) -> 201 bearer token;
  `POST /oauth2/revoke` -> 200.
- `GET /sensors/entities/datafeed/v2?appId=APP` (Bearer) -> one resource per feed, or an empty list
  while a stream of that appId is open and for `hold_seconds` after it drops.
- `GET /sensors/entities/datafeed/v1/<feed>?appId=APP&offset=N|&whence=2[&eventType=A,B]`
  (`Authorization: Token <session token>`) -> chunked NDJSON, one event per line, held open while idle.
- `POST /sensors/entities/datafeed-actions/v1/<feed>?action_name=refresh_active_stream_session&appId=APP`
  (Bearer) -> 200 and the session lives `session_ttl` more seconds; 404 once it is gone.

Control endpoints for tests and the demo (no auth, never rate limited):
`GET /_emulator/stats`, `GET|POST /_emulator/faults` (JSON object of fault names, see `Faults`;
`"reset": true` clears all first), `POST /_emulator/events` (`{"count": N}` appends N events per feed).

Malformed lines (`malformed_every`): the event at every Nth offset of a feed is preceded by an
*extra* line, each time it is served; the event still follows intact on the same connection, so
no offset is ever lost, and a reader that reconnects meets the same malformed line again before
the same event (as it would meet a bad record stored in the stream). The malformed line is the
first half of the event's JSON (a truncated object, valid UTF-8, carrying no parseable offset)
and is recorded once per position with `"malformed": true` and the offset of the event it precedes.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import logging
import math
import re
import secrets
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from emulators.falcon_events import EventFileError, EventGenerator, FileEvent, load_event_file
from emulators.http_server import EmulatorHTTPServer

log = logging.getLogger("emulators.falcon")

APP_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,32}$")
REFRESH_ACTION = "refresh_active_stream_session"
RETRY_AFTER_S = 1  # a 429 names the epoch second this far after the current one
RATE_LIMIT = 6000  # X-Ratelimit-Limit: requests per minute, as the real API advertises a per-minute figure
BATCH_EVENTS = 512  # most events written in one chunk when the reader keeps up
IDLE_POLL_SECONDS = 0.05  # how quickly an idle stream notices new events, a dropped client or a stop
DEFAULT_EVENTS = 1000

# (offset, eventType, JSON bytes without newline)
Event = tuple[int, str, bytes]


@dataclass(frozen=True)
class Faults:
    """Injected faults; 0 turns one off. Names are those of `POST /_emulator/faults` and the CLI flags.

    - disconnect_every: close a feed stream abruptly (no terminating chunk) after N events on it.
    - feed_401_every: every Nth feed open answers 401.
    - refresh_404: every Nth refresh answers 404 without extending the session (1 = always).
    - rate_limit_every: every Nth API request answers 429 (`X-Ratelimit-Retryafter`: an epoch
      second at least 1 s away; `X-Ratelimit-Remaining: 0`), as Falcon does.
    - token_5xx_every / discovery_5xx_every: every Nth token / discovery request answers 503.
    - malformed_every: the event at every Nth offset of a feed is preceded by a malformed line (see module doc).
    - idle_gap_every + idle_gap_seconds: pause that long after every N events on a stream.
    - expire_sessions_after: a session dies this many seconds after discovery, refreshed or not.
    - end_without_newline_every: end a stream cleanly (terminating chunk) after N events on it, the
      last of them without its newline, as Falcon may.
    """

    disconnect_every: int = 0
    feed_401_every: int = 0
    refresh_404: int = 0
    rate_limit_every: int = 0
    token_5xx_every: int = 0
    discovery_5xx_every: int = 0
    malformed_every: int = 0
    idle_gap_every: int = 0
    idle_gap_seconds: float = 0.0
    expire_sessions_after: float = 0.0
    end_without_newline_every: int = 0

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with changes applied; ValueError naming the field for an unknown name or bad value."""
        clean: dict[str, Any] = {}
        kinds = {f.name: f.type for f in dataclasses.fields(self)}
        for raw_name, value in changes.items():
            name = raw_name.replace("-", "_")
            if name not in kinds:
                raise ValueError(f"unknown fault {raw_name!r}; known: {', '.join(kinds)}")
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault {name} needs a number >= 0, got {value!r}")
            if kinds[name] == "int":
                if int(value) != value:
                    raise ValueError(f"fault {name} needs a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            clean[name] = value
        return dataclasses.replace(self, **clean)

    def as_dict(self) -> dict[str, int | float]:
        """The faults as a JSON-ready object (the shape `/_emulator/faults` answers)."""
        return dataclasses.asdict(self)


FAULT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults))
# Counted in stats()["faults_injected"]; idle_gap_seconds is a parameter, not a fault of its own.
INJECTED_FAULT_NAMES: tuple[str, ...] = tuple(n for n in FAULT_NAMES if n != "idle_gap_seconds")


@dataclass(frozen=True)
class FalconEmulatorConfig:
    """Everything the emulator serves; the CLI flags map one to one (`--token-ttl` -> token_ttl).

    events: events per feed, then idle (None: 1000, or unbounded when `rate` is set).
    rate: events per second per feed, appearing over time (capped by `events` when both are set).
    session_ttl: seconds a session lives without refresh (None: refresh_interval).
    start_time: epoch seconds the generated creation times are based on (None: now).
    public_url: base URL written into discovery answers (None: from the request's Host header).
    region: the token answer's X-Cs-Region header (None: no header). Off by default: clients that follow
      it (FalconPy, the ingestor with FALCON_CLOUD_REGION=us-1) would leave the emulator for a public cloud.
    """

    host: str = "127.0.0.1"
    port: int = 8090
    client_id: str = "demo"
    client_secret: str = "demo"
    region: str | None = None
    token_ttl: int = 1799
    feeds: int = 1
    refresh_interval: int = 1800
    session_ttl: float | None = None
    hold_seconds: float = 5.0
    seed: int = 1
    first_offset: int = 1
    events: int | None = None
    rate: float | None = None
    from_file: Path | None = None
    event_size: int | None = None
    start_time: float | None = None
    keepalive_seconds: float = 10.0
    record: Path | None = None
    public_url: str | None = None
    faults: Faults = field(default_factory=Faults)


# -- event sources ---------------------------------------------------------------------------------


class EventSource(Protocol):
    """Where a feed's events come from; offsets below `head` are available now."""

    feeds: tuple[str, ...]

    def earliest(self, feed: str) -> int:
        """Offset of the feed's first event (where a stream without offset starts)."""
        ...

    def head(self, feed: str, now: float) -> int:
        """The next offset to appear: every offset below it is available at monotonic time now."""
        ...

    def read(
        self, feed: str, pos: int, limit: int, types: frozenset[str] | None, now: float
    ) -> tuple[list[Event], int]:
        """Up to limit available events from offset pos on, and the offset to read next."""
        ...

    def next_due(self, feed: str, pos: int) -> float | None:
        """Monotonic time offset pos becomes available, or None when nothing is scheduled."""
        ...

    def add(self, count: int) -> None:
        """Make count more events available per feed; ValueError when the source cannot grow."""
        ...

    def line(self, feed: str, offset: int) -> bytes | None:
        """The bytes served for (feed, offset), or None when there is no such event."""
        ...


class GeneratedSource:
    """Generated events: a backlog of `total` per feed, or `rate` per second from start (capped by total)."""

    def __init__(self, config: FalconEmulatorConfig, start_wall: float) -> None:
        self.feeds = tuple(str(i) for i in range(config.feeds))
        self.first = config.first_offset
        self.rate = config.rate
        self.total: int | None = config.events if (config.events is not None or config.rate) else DEFAULT_EVENTS
        start_ms = int(start_wall * 1000)
        if self.rate:
            spacing = 1000.0 / self.rate
            base = start_ms
        else:
            # The backlog was created over the hour (at most) before start, one event a second at most.
            count = max(self.total or 1, 1)
            spacing = min(1000.0, 3_600_000.0 / count)
            base = start_ms - int(count * spacing)
        self.generator = EventGenerator(
            config.seed,
            base_time_ms=base,
            spacing_ms=spacing,
            first_offset=config.first_offset,
            event_size=config.event_size,
        )
        self.start_mono = time.monotonic()

    def _count(self, now: float) -> int:
        if self.rate:
            produced = int((now - self.start_mono) * self.rate)
            return produced if self.total is None else min(produced, self.total)
        return self.total or 0

    def earliest(self, feed: str) -> int:
        return self.first

    def head(self, feed: str, now: float) -> int:
        return self.first + self._count(now)

    def read(
        self, feed: str, pos: int, limit: int, types: frozenset[str] | None, now: float
    ) -> tuple[list[Event], int]:
        pos = max(pos, self.first)
        head = self.head(feed, now)
        render = self.generator.render
        if types is None:
            end = min(head, pos + limit)
            return [(o, *render(feed, o)) for o in range(pos, end)], max(end, pos)
        end = min(head, pos + limit * 16)  # bound the scan so a rare type cannot stall the loop
        event_type = self.generator.event_type
        events = [(o, *render(feed, o)) for o in range(pos, end) if event_type(feed, o) in types]
        if len(events) > limit:
            events = events[:limit]
            return events, events[-1][0] + 1
        return events, max(end, pos)

    def next_due(self, feed: str, pos: int) -> float | None:
        if not self.rate or (self.total is not None and pos >= self.first + self.total):
            return None
        return self.start_mono + (max(pos, self.first) - self.first + 1) / self.rate

    def add(self, count: int) -> None:
        if self.total is None:
            raise ValueError("events are unbounded (--rate without --events): nothing to add")
        self.total += count

    def line(self, feed: str, offset: int) -> bytes | None:
        if feed not in self.feeds or offset < self.first:
            return None
        return self.generator.line(feed, offset)


class FileSource:
    """Events of an NDJSON file, all available from the start, served with their own offsets."""

    def __init__(self, events: dict[str, list[FileEvent]], first_offset: int) -> None:
        self.events = events or {"0": []}
        self.offsets = {feed: [e.offset for e in evs] for feed, evs in self.events.items()}
        self.feeds = tuple(sorted(self.events, key=lambda f: (len(f), f)))
        self.first = first_offset

    def earliest(self, feed: str) -> int:
        offsets = self.offsets[feed]
        return offsets[0] if offsets else self.first

    def head(self, feed: str, now: float) -> int:
        offsets = self.offsets[feed]
        return offsets[-1] + 1 if offsets else self.first

    def read(
        self, feed: str, pos: int, limit: int, types: frozenset[str] | None, now: float
    ) -> tuple[list[Event], int]:
        offsets, events = self.offsets[feed], self.events[feed]
        start = bisect.bisect_left(offsets, pos)
        chosen: list[Event] = []
        index = start
        while index < len(events) and len(chosen) < limit and index - start < limit * 16:
            event = events[index]
            if types is None or event.event_type in types:
                chosen.append((event.offset, event.event_type, event.line))
            index += 1
        next_pos = offsets[index - 1] + 1 if index > start else max(pos, self.head(feed, now))
        return chosen, next_pos

    def next_due(self, feed: str, pos: int) -> float | None:
        return None

    def add(self, count: int) -> None:
        raise ValueError("events come from a file (--from-file): nothing to add")

    def line(self, feed: str, offset: int) -> bytes | None:
        offsets = self.offsets.get(feed)
        if not offsets:
            return None
        index = bisect.bisect_left(offsets, offset)
        if index < len(offsets) and offsets[index] == offset:
            return self.events[feed][index].line
        return None


# -- sessions, recording --------------------------------------------------------------------------


@dataclass
class _Session:
    token: str
    app_id: str
    feed: str
    created: float  # monotonic
    expires: float  # monotonic; moved by refresh
    dead: bool = False  # once dead, stays dead (counted once in sessions_expired)


class _Recorder:
    """Appends served events to --record, each (feed, offset) at most once (the highest per feed is kept)."""

    def __init__(self, path: Path) -> None:
        self._highest: dict[str, int] = {}
        self._malformed: set[tuple[str, int]] = set()  # (feed, offset of the event it precedes)
        if path.exists():
            # Continue an earlier run's file without recording its offsets again.
            with path.open("rb") as handle:
                for raw in handle:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(entry, dict) or not isinstance(entry.get("offset"), int):
                        continue
                    feed = str(entry.get("feed"))
                    if entry.get("malformed"):
                        self._malformed.add((feed, entry["offset"]))
                    else:
                        self._highest[feed] = max(self._highest.get(feed, entry["offset"]), entry["offset"])
        self._file = path.open("ab")
        self._lock = threading.Lock()

    def record(self, feed: str, served: list[tuple[int, bytes, bool]]) -> None:
        feed_json = json.dumps(feed).encode()
        parts: list[bytes] = []
        with self._lock:
            if self._file.closed:
                return
            highest = self._highest.get(feed)
            for offset, line, malformed in served:
                if malformed:
                    if (feed, offset) in self._malformed:
                        continue
                    self._malformed.add((feed, offset))
                    entry = {"feed": feed, "offset": offset, "malformed": True, "line": line.decode()}
                    parts.append(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
                elif highest is None or offset > highest:
                    parts.append(b'{"feed":%s,"offset":%d,"event":%s}\n' % (feed_json, offset, line))
                    highest = offset
            if highest is not None:
                self._highest[feed] = highest
            if parts:
                self._file.write(b"".join(parts))
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


# -- the emulator ---------------------------------------------------------------------------------


class _Server(EmulatorHTTPServer):
    emulator: FalconEmulator


class FalconEmulator:
    """The Falcon Event Streams emulator: `start()` serves in a background thread, `stop()` ends it.

    After `start()`, `url` is the base URL (`http://127.0.0.1:<port>`, the real port when
    config.port is 0). Event bytes are a pure function of the config (seed, start_time,
    first_offset, event_size, events/rate) and (feed, offset): `event_line(feed, offset)` is
    exactly what a stream serves for that offset, without the newline.
    """

    def __init__(self, config: FalconEmulatorConfig | None = None) -> None:
        self.config = config = config or FalconEmulatorConfig()
        if config.from_file is not None:
            self.source: EventSource = FileSource(load_event_file(config.from_file), config.first_offset)
        else:
            start = config.start_time if config.start_time is not None else time.time()
            self.source = GeneratedSource(config, start)
        self.feeds = self.source.feeds
        self._faults = config.faults
        self._session_ttl = config.session_ttl if config.session_ttl is not None else float(config.refresh_interval)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tokens: dict[str, float] = {}  # bearer token -> monotonic expiry
        self._sessions: dict[str, _Session] = {}  # session token -> session
        self._latest: dict[tuple[str, str], _Session] = {}  # (appId, feed) -> newest session
        self._app_streams: dict[str, int] = {}
        self._app_released: dict[str, float] = {}
        self._stream_sockets: set[socket.socket] = set()
        self._counters = {
            "api_requests": 0,
            "token_requests": 0,
            "discovery_requests": 0,
            "feed_opens": 0,
            "refresh_requests": 0,
            "lines_served": 0,
        }
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "tokens_issued",
                "token_failures",
                "discoveries",
                "empty_discoveries",
                "streams_opened",
                "streams_closed",
                "refreshes",
                "refresh_failures",
                "sessions_expired",
            ),
            0,
        )
        self._served: dict[str, int] = dict.fromkeys(self.feeds, 0)
        self._malformed: dict[str, int] = dict.fromkeys(self.feeds, 0)
        self._injected: dict[str, int] = dict.fromkeys(INJECTED_FAULT_NAMES, 0)
        self._minute = (0, 0)  # (minute number, API requests in it) for X-Ratelimit-Remaining
        self._recorder = _Recorder(config.record) if config.record else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.cid = self.source.generator.cid if isinstance(self.source, GeneratedSource) else ""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FalconEmulator:
        """Bind and serve in a daemon thread; returns self. Raises OSError when the port is taken."""
        server_class: type[_Server] = _Server
        if ":" in self.config.host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._server = server_class((self.config.host, self.config.port), _FalconHandler)
        self._server.emulator = self
        if isinstance(self.source, GeneratedSource):
            self.source.start_mono = time.monotonic()  # rate mode: events appear from now on
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="falcon-emulator", daemon=True
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound port (after start())."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """Base URL of the running emulator, e.g. http://127.0.0.1:8090."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving: open streams are closed, the record file is flushed and closed. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                sockets = list(self._stream_sockets)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._stream_sockets:
                        break
                time.sleep(0.01)
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._recorder is not None:
            self._recorder.close()

    def __enter__(self) -> FalconEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The faults in force now."""
        return self._faults

    def set_faults(self, changes: Mapping[str, Any] | None = None, /, **more: Any) -> Faults:
        """Change some faults at run time (others keep their value); returns the faults now in force.

        Accepts `Faults` field names (dashes allowed), e.g. `set_faults(disconnect_every=10)`;
        `reset=True` sets every fault to 0 before applying the rest. ValueError on a bad name or value.
        """
        wanted = {**(changes or {}), **more}
        base = Faults() if wanted.pop("reset", False) else self._faults
        with self._lock:
            self._faults = base.updated(wanted)
            return self._faults

    def add_events(self, count: int) -> dict[str, int]:
        """Append count more generated events to every feed; returns each feed's next offset.

        ValueError when events come from a file or are unbounded (--rate without --events).
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self.source.add(count)
        now = time.monotonic()
        return {feed: self.source.head(feed, now) for feed in self.feeds}

    def event_line(self, feed: str, offset: int) -> bytes:
        """The exact bytes (no newline) a stream serves for (feed, offset); KeyError if there is no such event."""
        line = self.source.line(feed, offset)
        if line is None:
            raise KeyError(f"no event at feed {feed} offset {offset}")
        return line

    def stats(self) -> dict[str, Any]:
        """Counters since start, the JSON of `GET /_emulator/stats`.

        Keys: tokens_issued, token_failures (bad credentials), discoveries (200 answers),
        empty_discoveries (appId held), streams_opened, streams_closed, streams_active,
        refreshes (successful), refresh_failures (404s), sessions_expired, api_requests,
        events_served {feed: event lines written, re-serves included}, malformed_served {feed: malformed
        lines written, re-serves included},
        faults_injected {fault name: times it hit}, faults (in force now), next_offset {feed: head}.
        """
        now = time.monotonic()
        with self._lock:
            result: dict[str, Any] = dict(self._stats)
            result["api_requests"] = self._counters["api_requests"]
            result["streams_active"] = sum(self._app_streams.values())
            result["events_served"] = dict(self._served)
            result["malformed_served"] = dict(self._malformed)
            result["faults_injected"] = dict(self._injected)
            result["faults"] = self._faults.as_dict()
        result["next_offset"] = {feed: self.source.head(feed, now) for feed in self.feeds}
        return result

    # -- request-level logic (called by the handler) ---------------------------------------------

    def _count_request(self, counter: str, every: int) -> bool:
        """Count one request of a kind; True when it is the Nth (a fault should hit it)."""
        with self._lock:
            self._counters[counter] += 1
            return bool(every) and self._counters[counter] % every == 0

    def _api_request(self) -> tuple[bool, int]:
        """Count an API request: (rate limited?, X-Ratelimit-Remaining)."""
        every = self._faults.rate_limit_every
        minute = int(time.time() // 60)
        with self._lock:
            self._counters["api_requests"] += 1
            used = self._minute[1] + 1 if self._minute[0] == minute else 1
            self._minute = (minute, used)
            limited = bool(every) and self._counters["api_requests"] % every == 0
            if limited:
                self._injected["rate_limit_every"] += 1
        return limited, 0 if limited else max(1, RATE_LIMIT - used)

    def _bump(self, name: str, fault: str | None = None) -> None:
        with self._lock:
            if name:
                self._stats[name] += 1
            if fault:
                self._injected[fault] += 1

    def _issue_token(self) -> str:
        token = secrets.token_hex(24)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.config.token_ttl
            self._stats["tokens_issued"] += 1
        return token

    def _bearer_valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def _discover(self, app_id: str) -> list[_Session] | None:
        """New sessions for every feed, or None while the appId is held by a stream or its hold time."""
        now = time.monotonic()
        with self._lock:
            self._stats["discoveries"] += 1
            held = self._app_streams.get(app_id, 0) > 0
            released = self._app_released.get(app_id)
            if held or (released is not None and now < released + self.config.hold_seconds):
                self._stats["empty_discoveries"] += 1
                return None
            # Forget sessions long past expiry so a long demo does not grow without bound.
            self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now - 600}
            sessions = []
            for feed in self.feeds:
                session = _Session(secrets.token_hex(32), app_id, feed, now, now + self._session_ttl)
                self._sessions[session.token] = session
                self._latest[(app_id, feed)] = session
                sessions.append(session)
            return sessions

    def _session_alive(self, session: _Session, now: float) -> bool:
        if session.dead:
            return False
        hard_limit = self._faults.expire_sessions_after
        forced = bool(hard_limit) and now >= session.created + hard_limit
        if now < session.expires and not forced:
            return True
        with self._lock:
            if not session.dead:
                session.dead = True
                self._stats["sessions_expired"] += 1
                if forced and now < session.expires:
                    self._injected["expire_sessions_after"] += 1
        return False

    def _session_expiry_wall(self, session: _Session) -> datetime:
        remaining = session.expires - time.monotonic()
        if self._faults.expire_sessions_after:
            remaining = min(remaining, session.created + self._faults.expire_sessions_after - time.monotonic())
        return datetime.fromtimestamp(time.time() + remaining, tz=UTC)

    def _refresh(self, app_id: str, feed: str) -> bool:
        """Extend the newest session of (appId, feed); False when it is gone (or the 404 fault hits)."""
        if self._count_request("refresh_requests", self._faults.refresh_404):
            self._bump("refresh_failures", "refresh_404")
            return False
        now = time.monotonic()
        session = self._latest.get((app_id, feed))
        if session is None or not self._session_alive(session, now):
            self._bump("refresh_failures")
            return False
        with self._lock:
            session.expires = now + self._session_ttl
            self._stats["refreshes"] += 1
        return True

    def _stream_opened(self, app_id: str, sock: socket.socket) -> None:
        with self._lock:
            self._app_streams[app_id] = self._app_streams.get(app_id, 0) + 1
            self._stats["streams_opened"] += 1
            self._stream_sockets.add(sock)

    def _stream_closed(self, app_id: str, sock: socket.socket) -> None:
        with self._lock:
            self._app_streams[app_id] -= 1
            self._app_released[app_id] = time.monotonic()
            self._stats["streams_closed"] += 1
            self._stream_sockets.discard(sock)

    def _compose(self, feed: str, batch: list[Event], faults: Faults) -> bytes:
        """The wire bytes for a batch of events, with malformed lines inserted; counts and records them."""
        every = faults.malformed_every
        with self._lock:
            self._counters["lines_served"] += len(batch)
            self._served[feed] += len(batch)
        if not every and self._recorder is None:
            return b"\n".join([e[2] for e in batch]) + b"\n"
        served: list[tuple[int, bytes, bool]] = []
        bad = 0
        for offset, _, line in batch:
            if every and offset % every == 0:
                # Cut at a character boundary: the line stays valid UTF-8 but is not a JSON object.
                truncated = line[: len(line) // 2].decode("utf-8", "ignore").encode()
                served.append((offset, truncated, True))
                bad += 1
            served.append((offset, line, False))
        if bad:
            with self._lock:
                self._malformed[feed] += bad
                self._injected["malformed_every"] += bad
        if self._recorder is not None:
            self._recorder.record(feed, served)
        return b"".join([s[1] + b"\n" for s in served])


# -- HTTP ----------------------------------------------------------------------------------------


class _FalconHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "falcon-lake-emulator"
    server: _Server

    # Requests are not logged one by one: tests and benchmarks make thousands.
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def emulator(self) -> FalconEmulator:
        return self.server.emulator

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing ------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._read_body()
        if path.startswith("/_emulator/"):
            self._control(method, path, body)
            return
        limited, remaining = self.emulator._api_request()
        self._remaining = remaining
        if limited:
            # Falcon names the epoch second after which to retry (no Retry-After): at least a second away.
            retry_at = math.ceil(time.time()) + RETRY_AFTER_S
            self._json(429, _errors(429, "API rate limit exceeded."), {"X-Ratelimit-Retryafter": str(retry_at)})
            return
        feed_match = re.fullmatch(r"/sensors/entities/datafeed/v1/([^/]+)", path)
        refresh_match = re.fullmatch(r"/sensors/entities/datafeed-actions/v1/([^/]+)", path)
        if path == "/oauth2/token" and method == "POST":
            self._token(body, query)
        elif path == "/oauth2/revoke" and method == "POST":
            self._json(200, {"meta": _meta(), "resources": [], "errors": []})
        elif path == "/sensors/entities/datafeed/v2" and method == "GET":
            self._discovery(query)
        elif feed_match and method == "GET":
            self._feed(feed_match.group(1), query)
        elif refresh_match and method == "POST":
            self._refresh(refresh_match.group(1), query)
        else:
            self._json(404, _errors(404, f"no route for {method} {path}"))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _common_headers(self) -> None:
        self.send_header("X-Ratelimit-Limit", str(RATE_LIMIT))
        self.send_header("X-Ratelimit-Remaining", str(getattr(self, "_remaining", RATE_LIMIT)))
        self.send_header("X-Cs-Traceid", str(uuid.uuid4()))

    def _credential(self, scheme: str) -> str | None:
        words = self.headers.get("Authorization", "").split(None, 1)
        if len(words) == 2 and words[0].lower() == scheme.lower():
            return words[1].strip()
        return None

    def _base_url(self) -> str:
        if self.emulator.config.public_url:
            return self.emulator.config.public_url.rstrip("/")
        host = self.headers.get("Host") or f"{self.emulator.config.host}:{self.emulator.port}"
        return f"http://{host}"

    # -- endpoints -----------------------------------------------------------------------------

    def _token(self, body: bytes, query: dict[str, str]) -> None:
        emulator = self.emulator
        if emulator._count_request("token_requests", emulator.faults.token_5xx_every):
            emulator._bump("", "token_5xx_every")
            self._json(503, _errors(503, "Service Unavailable"))
            return
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        client_id = form.get("client_id", query.get("client_id"))
        client_secret = form.get("client_secret", query.get("client_secret"))
        config = emulator.config
        if not secrets.compare_digest(str(client_id), config.client_id) or not secrets.compare_digest(
            str(client_secret), config.client_secret
        ):
            emulator._bump("token_failures")
            self._json(401, _errors(401, "access denied, invalid client_id or client_secret"))
            return
        token = emulator._issue_token()
        payload = {"access_token": token, "expires_in": config.token_ttl, "token_type": "bearer"}
        self._json(201, payload, {"X-Cs-Region": config.region} if config.region else None)

    def _discovery(self, query: dict[str, str]) -> None:
        emulator = self.emulator
        if emulator._count_request("discovery_requests", emulator.faults.discovery_5xx_every):
            emulator._bump("", "discovery_5xx_every")
            self._json(503, _errors(503, "Service Unavailable"))
            return
        if not emulator._bearer_valid(self._credential("Bearer")):
            self._json(401, _errors(401, "access denied, authorization failed"))
            return
        app_id = query.get("appId", "")
        if not APP_ID_PATTERN.match(app_id):
            self._json(400, _errors(400, "appId must be 1 to 32 alphanumeric characters"))
            return
        sessions = emulator._discover(app_id) or []
        base = self._base_url()
        resources = [
            {
                "dataFeedURL": f"{base}/sensors/entities/datafeed/v1/{s.feed}?appId={app_id}",
                "sessionToken": {
                    "token": s.token,
                    "expiration": _rfc3339_nanoseconds(emulator._session_expiry_wall(s)),
                },
                "refreshActiveSessionURL": (
                    f"{base}/sensors/entities/datafeed-actions/v1/{s.feed}?appId={app_id}&action_name={REFRESH_ACTION}"
                ),
                "refreshActiveSessionInterval": emulator.config.refresh_interval,
            }
            for s in sessions
        ]
        meta = {**_meta(), "pagination": {"offset": 0, "limit": len(resources), "total": len(resources)}}
        self._json(200, {"meta": meta, "resources": resources, "errors": []})

    def _refresh(self, feed: str, query: dict[str, str]) -> None:
        emulator = self.emulator
        if not emulator._bearer_valid(self._credential("Bearer")):
            self._json(401, _errors(401, "access denied, authorization failed"))
            return
        app_id = query.get("appId", "")
        if not APP_ID_PATTERN.match(app_id):
            self._json(400, _errors(400, "appId must be 1 to 32 alphanumeric characters"))
            return
        if query.get("action_name") != REFRESH_ACTION:
            self._json(400, _errors(400, f"action_name must be {REFRESH_ACTION}"))
            return
        if feed not in emulator.feeds or not emulator._refresh(app_id, feed):
            self._json(404, _errors(404, "session not found"))
            return
        self._json(200, {"meta": _meta(), "resources": [], "errors": []})

    def _feed(self, feed: str, query: dict[str, str]) -> None:
        emulator = self.emulator
        if emulator._count_request("feed_opens", emulator.faults.feed_401_every):
            emulator._bump("", "feed_401_every")
            self._json(401, _errors(401, "access denied, authorization failed"))
            return
        if feed not in emulator.feeds:
            self._json(404, _errors(404, f"no feed {feed}"))
            return
        app_id = query.get("appId", "")
        if not APP_ID_PATTERN.match(app_id):
            self._json(400, _errors(400, "appId must be 1 to 32 alphanumeric characters"))
            return
        token = self._credential("Token")
        with emulator._lock:
            session = emulator._sessions.get(token or "")
        now = time.monotonic()
        if (
            session is None
            or session.feed != feed
            or session.app_id != app_id
            or not emulator._session_alive(session, now)
        ):
            self._json(401, _errors(401, "access denied, invalid or expired session token"))
            return
        try:
            if query.get("whence") == "2":
                pos = emulator.source.head(feed, now)
            elif query.get("offset", "") != "":
                pos = int(query["offset"])
            else:
                pos = emulator.source.earliest(feed)
        except ValueError:
            self._json(400, _errors(400, "offset must be an integer"))
            return
        types = frozenset(t.strip() for t in query.get("eventType", "").split(",") if t.strip()) or None
        self._stream(session, pos, types)

    # -- the stream ----------------------------------------------------------------------------

    def _stream(self, session: _Session, pos: int, types: frozenset[str] | None) -> None:
        emulator, feed, sock = self.emulator, session.feed, self.connection
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self._common_headers()
        self.end_headers()
        emulator._stream_opened(session.app_id, sock)
        log.info("feed %s stream opened for appId %s at offset %d", feed, session.app_id, pos)
        served_here = since_gap = 0
        last_write = time.monotonic()
        keepalive = emulator.config.keepalive_seconds
        reason = "client closed"
        try:
            while not emulator._stopping.is_set():
                now = time.monotonic()
                faults = emulator.faults
                if not emulator._session_alive(session, now):
                    sock.sendall(b"0\r\n\r\n")
                    reason = "session expired"
                    return
                limit = BATCH_EVENTS
                if faults.disconnect_every:
                    left = faults.disconnect_every - served_here
                    if left <= 0:
                        emulator._bump("", "disconnect_every")
                        sock.shutdown(socket.SHUT_RDWR)  # no terminating chunk: the client sees a cut
                        reason = "disconnect fault"
                        return
                    limit = min(limit, left)
                if faults.end_without_newline_every:
                    limit = min(limit, max(1, faults.end_without_newline_every - served_here))
                if faults.idle_gap_every:
                    left = faults.idle_gap_every - since_gap
                    if left <= 0:
                        emulator._bump("", "idle_gap_every")
                        since_gap = 0
                        if self._idle(now + faults.idle_gap_seconds):
                            return
                        continue
                    limit = min(limit, left)
                batch, pos = emulator.source.read(feed, pos, limit, types, now)
                if batch:
                    data = emulator._compose(feed, batch, faults)
                    ending = bool(faults.end_without_newline_every) and (
                        served_here + len(batch) >= faults.end_without_newline_every
                    )
                    if ending:
                        data = data[:-1]  # the last event's newline
                    sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
                    served_here += len(batch)
                    if ending:
                        emulator._bump("", "end_without_newline_every")
                        sock.sendall(b"0\r\n\r\n")
                        reason = "clean end without a final newline"
                        return
                    since_gap += len(batch)
                    last_write = now
                    continue
                if pos < emulator.source.head(feed, now):
                    continue  # the type filter skipped a stretch; keep scanning
                wake = now + IDLE_POLL_SECONDS
                due = emulator.source.next_due(feed, pos)
                if due is not None:
                    wake = min(wake, due)
                if keepalive:
                    wake = min(wake, last_write + keepalive)
                if self._idle(wake):
                    return
                if keepalive and time.monotonic() - last_write >= keepalive:
                    sock.sendall(b"1\r\n\n\r\n")
                    last_write = time.monotonic()
            reason = "emulator stopping"
        except OSError:
            reason = "connection lost"
        finally:
            emulator._stream_closed(session.app_id, sock)
            log.info("feed %s stream closed (%s) at offset %d", feed, reason, pos)

    def _idle(self, until: float) -> bool:
        """Wait until the monotonic time `until`; True when the client went away or the emulator stops."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not self.emulator._stopping.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            wait = min(remaining, IDLE_POLL_SECONDS)
            if poller.poll(wait * 1000):
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    peeked = b"?"
                except OSError:
                    return True
                if not peeked:
                    return True
                time.sleep(wait)  # the client sent bytes we ignore: do not spin on them
        return True

    # -- control endpoints ---------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        emulator = self.emulator
        try:
            if path == "/_emulator/stats" and method == "GET":
                self._json(200, emulator.stats())
            elif path == "/_emulator/faults" and method == "GET":
                self._json(200, emulator.faults.as_dict())
            elif path == "/_emulator/faults" and method == "POST":
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object of fault names")
                self._json(200, emulator.set_faults(changes).as_dict())
            elif path == "/_emulator/events" and method == "POST":
                request = json.loads(body or b"{}")
                count = request.get("count") if isinstance(request, dict) else None
                if not isinstance(count, int) or isinstance(count, bool):
                    raise ValueError('the body must be {"count": N}')
                self._json(200, {"next_offset": emulator.add_events(count)})
            else:
                self._json(404, _errors(404, f"no route for {method} {path}"))
        except ValueError as exc:
            self._json(400, _errors(400, str(exc)))


def _rfc3339_nanoseconds(moment: datetime) -> str:
    """`2026-12-04T14:25:05.826373335Z`: the form of Falcon's sessionToken.expiration (nanoseconds)."""
    nanos = moment.microsecond * 1000 + time.time_ns() % 1000
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{nanos:09d}Z"


def _meta() -> dict[str, Any]:
    return {"query_time": 0.001, "powered_by": "falcon-lake-emulator", "trace_id": str(uuid.uuid4())}


def _errors(code: int, message: str) -> dict[str, Any]:
    return {"meta": _meta(), "resources": [], "errors": [{"code": code, "message": message}]}


# -- CLI -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `falcon-lake emulate falcon` argument parser (every flag documented in --help)."""
    parser = argparse.ArgumentParser(
        prog="falcon-lake emulate falcon",
        description=(
            "Serve the CrowdStrike Falcon Event Streams API locally (token, discovery, chunked NDJSON "
            "feeds, session refresh, appId exclusivity) with deterministic events and injectable faults. "
            "Prints one line 'falcon emulator listening on URL' when ready; stops on SIGTERM/SIGINT. "
            "Run-time control: GET /_emulator/stats, GET|POST /_emulator/faults, POST /_emulator/events."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on")
    net.add_argument("--port", type=_non_negative_int, default=8090, help="port to listen on (0 picks a free one)")
    net.add_argument(
        "--public-url",
        default=None,
        help="base URL written into discovery answers (default: from the request's Host header)",
    )
    net.add_argument("--verbose", action="store_true", help="log every request to stderr")
    api = parser.add_argument_group("API")
    api.add_argument("--client-id", default="demo", help="accepted OAuth2 client_id")
    api.add_argument("--client-secret", default="demo", help="accepted OAuth2 client_secret")
    api.add_argument(
        "--region",
        default=None,
        help="send this X-Cs-Region header with tokens (e.g. us-2): SDKs that follow it leave the emulator "
        "for that public cloud; none by default",
    )
    api.add_argument("--token-ttl", type=_positive_int, default=1799, help="bearer token lifetime (expires_in), s")
    api.add_argument("--feeds", type=_positive_int, default=1, help="feeds (partitions) per appId, ids 0..K-1")
    api.add_argument(
        "--refresh-interval", type=_positive_int, default=1800, help="refreshActiveSessionInterval announced, s"
    )
    api.add_argument(
        "--session-ttl",
        type=_positive_float,
        default=None,
        help="session lifetime without refresh, s (default: the refresh interval)",
    )
    api.add_argument(
        "--hold-seconds",
        type=_non_negative_float,
        default=5.0,
        help="after a stream drops, discovery for its appId stays empty this long",
    )
    api.add_argument(
        "--keepalive-seconds",
        type=_non_negative_float,
        default=10.0,
        help="write a blank line on an idle stream this often (0: never)",
    )
    ev = parser.add_argument_group("events")
    ev.add_argument("--seed", type=int, default=1, help="seed of the deterministic event generator")
    ev.add_argument("--first-offset", type=_non_negative_int, default=1, help="offset of each feed's first event")
    ev.add_argument(
        "--events",
        type=_non_negative_int,
        default=None,
        help="events per feed, then idle (default 1000; with --rate: unbounded unless given)",
    )
    ev.add_argument("--rate", type=_positive_float, default=None, help="events per second per feed, continuous")
    ev.add_argument(
        "--from-file",
        type=Path,
        default=None,
        help="serve events from an NDJSON file, keeping metadata.offset; top-level 'feed' field picks the feed",
    )
    ev.add_argument("--event-size", type=_positive_int, default=None, help="pad events to about this many bytes")
    ev.add_argument(
        "--start-time",
        type=_start_time,
        default=None,
        help="creation times are based on this (epoch seconds or ISO 8601; default: now)",
    )
    ev.add_argument(
        "--record",
        type=Path,
        default=None,
        help='append each served event once as {"feed","offset","event"} to this NDJSON file',
    )
    faults = parser.add_argument_group("faults (also switchable at run time: POST /_emulator/faults)")
    faults.add_argument(
        "--disconnect-every", type=_non_negative_int, default=0, help="cut a stream abruptly after N events on it"
    )
    faults.add_argument("--feed-401-every", type=_non_negative_int, default=0, help="every Nth feed open answers 401")
    faults.add_argument(
        "--refresh-404",
        type=_non_negative_int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="refresh answers 404 (alone: always; with N: every Nth refresh)",
    )
    faults.add_argument(
        "--rate-limit-every",
        type=_non_negative_int,
        default=0,
        help="every Nth API request answers 429 with X-Ratelimit-Retryafter (epoch seconds, 1 s on)",
    )
    faults.add_argument(
        "--token-5xx-every", type=_non_negative_int, default=0, help="every Nth token request answers 503"
    )
    faults.add_argument(
        "--discovery-5xx-every", type=_non_negative_int, default=0, help="every Nth discovery answers 503"
    )
    faults.add_argument(
        "--malformed-every",
        type=_non_negative_int,
        default=0,
        help="insert a truncated JSON line before every Nth event line (the event itself still follows)",
    )
    faults.add_argument(
        "--idle-gap-every", type=_non_negative_int, default=0, help="pause a stream after every N events on it"
    )
    faults.add_argument("--idle-gap-seconds", type=_non_negative_float, default=0.0, help="length of that pause, s")
    faults.add_argument(
        "--expire-sessions-after",
        type=_non_negative_float,
        default=0.0,
        help="a session dies this many seconds after discovery, refreshed or not",
    )
    faults.add_argument(
        "--end-without-newline-every",
        type=_non_negative_int,
        default=0,
        help="end a stream cleanly after N events on it, the last one without its newline",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> FalconEmulatorConfig:
    """The config the parsed flags describe."""
    faults = Faults(**{name: getattr(args, name) for name in FAULT_NAMES})
    return FalconEmulatorConfig(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        region=args.region,
        token_ttl=args.token_ttl,
        feeds=args.feeds,
        refresh_interval=args.refresh_interval,
        session_ttl=args.session_ttl,
        hold_seconds=args.hold_seconds,
        seed=args.seed,
        first_offset=args.first_offset,
        events=args.events,
        rate=args.rate,
        from_file=args.from_file,
        event_size=args.event_size,
        start_time=args.start_time,
        keepalive_seconds=args.keepalive_seconds,
        record=args.record,
        public_url=args.public_url,
        faults=faults,
    )


def main(argv: Sequence[str]) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        emulator = FalconEmulator(config_from_args(args))
    except EventFileError as exc:
        print(f"falcon emulator: {exc}", file=sys.stderr)
        return 2
    try:
        emulator.start()
    except OSError as exc:
        print(f"falcon emulator: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"falcon emulator listening on {emulator.url}", flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    emulator.stop()
    log.info("falcon emulator stopped")
    return 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _start_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not epoch seconds or ISO 8601: {text}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
