"""FeedReader and StreamSupervisor with a scripted Falcon client and a recording sink (no sockets)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from falcon_lake.backoff import Backoff
from falcon_lake.settings import Secret
from ingestor.falcon_api import AppIdHeld, FalconApiError, FeedSession
from ingestor.metrics import IngestorMetrics
from ingestor.ndjson import FalconEvent, Malformed
from ingestor.resume import ResumePoint
from ingestor.session import FeedReader, StreamSupervisor


def line(offset: int, event_type: str = "AuthActivityAuditEvent") -> bytes:
    metadata = {"customerIDString": "c1d", "offset": offset, "eventType": event_type, "eventCreationTime": 1_000}
    return json.dumps({"metadata": metadata, "event": {"UserId": "zoë"}}, ensure_ascii=False).encode()


class FakeResponse:
    """A feed body: the chunks, then a clean end, an exception, or (hold=True) nothing until closed."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None, hold: bool = False) -> None:
        self.chunks, self.error, self.hold = chunks, error, hold
        self.closed = threading.Event()

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        for chunk in self.chunks:
            if self.closed.is_set():
                return
            yield chunk
        if self.error is not None:
            raise self.error
        if self.hold:
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


def feed_session(feed: str) -> FeedSession:
    return FeedSession(
        feed, f"http://falcon.invalid/sensors/entities/datafeed/v1/{feed}", Secret("t"), None, "", 1800.0
    )


class FakeClient:
    """Serves scripted responses per feed, in order; discovery can fail first with scripted errors."""

    def __init__(self, streams: dict[str, list[FakeResponse | Exception]], discover_errors: int = 0) -> None:
        self.streams = streams
        self.discover_errors = discover_errors
        self.opens: list[tuple[str, int | None]] = []
        self.invalidated = 0

    def discover(self, event_types: tuple[str, ...] = ()) -> list[FeedSession]:
        if self.discover_errors:
            self.discover_errors -= 1
            raise AppIdHeld("discovery listed no feeds for appId 'x': another consumer holds it")
        return [feed_session(feed) for feed in self.streams]

    def open_stream(self, feed: FeedSession, offset: int | None, types: tuple[str, ...], timeout: float) -> Any:
        self.opens.append((feed.feed, offset))
        script = self.streams[feed.feed]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer.chunks, answer.error, answer.hold)  # each open is a new connection

    def refresh(self, feed: FeedSession) -> None:
        pass

    def invalidate_token(self) -> None:
        self.invalidated += 1


class RecordingSink:
    def __init__(self, accept: int | None = None) -> None:
        self.sent: list[tuple[str, int, bytes]] = []
        self.dead: list[tuple[str, bytes, int | None]] = []
        self.accept = accept  # after this many events, behave as if abandoned while Kafka is full

    def send(self, feed: str, event: FalconEvent, abandon: threading.Event | None = None) -> bool:
        if self.accept is not None and len(self.sent) >= self.accept:
            return False
        self.sent.append((feed, event.offset, event.raw))
        return True

    def dead_letter(
        self, feed: str, bad: Malformed, last_good_offset: int | None, abandon: threading.Event | None = None
    ) -> bool:
        self.dead.append((feed, bad.raw, last_good_offset))
        return True


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[str, int]] = []
        self.ends: list[tuple[str, str, str, float | None]] = []

    def on_progress(self, feed: str, offset: int) -> None:
        self.progress.append((feed, offset))

    def on_end(self, feed: str, cause: str, detail: str, retry_after: float | None) -> None:
        self.ends.append((feed, cause, detail, retry_after))


def read(client: FakeClient, sink: RecordingSink, start: int | None = 5) -> tuple[Recorder, IngestorMetrics]:
    metrics, recorder = IngestorMetrics(), Recorder()
    reader = FeedReader(
        client,  # type: ignore[arg-type]
        feed_session("0"),
        start,
        (),
        sink,  # type: ignore[arg-type]
        metrics,
        30.0,
        recorder.on_progress,
        recorder.on_end,
    )
    reader.run()
    return recorder, metrics


def test_reader_sends_each_offset_once_in_order_and_dead_letters_what_it_cannot_parse() -> None:
    first = line(5) + b"\n\r\n" + line(6)[:20]  # a line split across chunks, a blank CRLF line
    second = line(6)[20:] + b"\n" + line(5) + b"\n" + b'{"metadata": {"off\n' + line(7, "DetectionSummaryEvent") + b"\n"
    client = FakeClient({"0": [FakeResponse([first, second])]})
    sink = RecordingSink()
    recorder, metrics = read(client, sink)

    assert [(f, o) for f, o, _ in sink.sent] == [("0", 5), ("0", 6), ("0", 7)]  # the re-sent 5 is skipped
    assert [raw for _, _, raw in sink.sent] == [line(5), line(6), line(7, "DetectionSummaryEvent")]
    assert sink.dead == [("0", b'{"metadata": {"off', 6)]
    assert recorder.progress[-1] == ("0", 7)
    assert recorder.ends == [("0", "stream-end", "the server closed the stream", None)]
    value = metrics.registry.get_sample_value
    assert value("falcon_lake_ingest_events_read_total", {"feed": "0", "type": "AuthActivityAuditEvent"}) == 2
    assert value("falcon_lake_ingest_events_read_total", {"feed": "0", "type": "DetectionSummaryEvent"}) == 1
    assert value("falcon_lake_ingest_skipped_duplicates_total", {"feed": "0"}) == 1
    assert value("falcon_lake_ingest_last_offset", {"feed": "0"}) == 7
    assert value("falcon_lake_ingest_bytes_read_total", {"feed": "0"}) == len(line(5) + line(6)) + len(sink.sent[2][2])


def test_a_cut_stream_reports_its_cause_after_publishing_how_far_it_got() -> None:
    cut = requests.exceptions.ChunkedEncodingError("Response ended prematurely")
    client = FakeClient({"0": [FakeResponse([line(5) + b"\n" + line(6) + b"\n" + line(7)[:10]], error=cut)]})
    sink = RecordingSink()
    recorder, _ = read(client, sink)
    assert [o for _, o, _ in sink.sent] == [5, 6]
    assert recorder.progress[-1] == ("0", 6)
    assert [(f, cause, detail) for f, cause, detail, _ in recorder.ends] == [
        ("0", "connection-error", "Response ended prematurely")
    ]


def test_a_clean_end_after_a_complete_last_event_without_newline_hands_that_event_on() -> None:
    client = FakeClient({"0": [FakeResponse([line(5) + b"\n" + line(6)[:30], line(6)[30:]])]})
    sink = RecordingSink()
    recorder, _ = read(client, sink)
    assert [o for _, o, _ in sink.sent] == [5, 6] and sink.sent[1][2] == line(6)
    assert sink.dead == []
    assert recorder.progress[-1] == ("0", 6)  # the next connection starts at 7
    assert [cause for _, cause, _, _ in recorder.ends] == ["stream-end"]


def test_a_clean_end_inside_a_truncated_last_event_leaves_it_to_be_read_again() -> None:
    client = FakeClient({"0": [FakeResponse([line(5) + b"\n" + line(6) + line(7)[:-3]])]})
    sink = RecordingSink()
    recorder, _ = read(client, sink)
    assert [o for _, o, _ in sink.sent] == [5, 6]  # 6 was complete (run together with 7); 7 was cut short
    assert sink.dead == []  # not dead-lettered: the reconnect at 7 reads it whole
    assert recorder.progress[-1] == ("0", 6)


def test_a_refused_open_reports_the_http_cause_and_retry_after() -> None:
    refused = FalconApiError("stream", 429, "API rate limit exceeded.", retry_after=1.0)
    recorder, _ = read(FakeClient({"0": [refused]}), RecordingSink())
    assert recorder.ends == [("0", "stream-429", "stream: HTTP 429 API rate limit exceeded.", 1.0)]


def test_a_reader_abandoned_while_kafka_is_full_stops_without_claiming_the_unsent_event() -> None:
    client = FakeClient({"0": [FakeResponse([b"".join(line(o) + b"\n" for o in range(5, 10))])]})
    sink = RecordingSink(accept=2)
    recorder, _ = read(client, sink)
    assert [o for _, o, _ in sink.sent] == [5, 6]
    assert recorder.progress == [("0", 6)]  # the next session starts at 7
    assert recorder.ends == []


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def supervise() -> Iterator[Any]:
    running: list[tuple[StreamSupervisor, threading.Event]] = []

    def start(client: FakeClient, sink: RecordingSink, resume: dict[str, int]) -> tuple[StreamSupervisor, Any]:
        metrics, stop = IngestorMetrics(), threading.Event()
        calls: list[list[str]] = []

        def resume_points(feeds: list[str]) -> dict[str, ResumePoint]:
            calls.append(feeds)
            return {f: ResumePoint(f, resume[f], "kafka") for f in feeds}

        supervisor = StreamSupervisor(
            client,  # type: ignore[arg-type]
            sink,  # type: ignore[arg-type]
            metrics,
            (),
            resume_points,
            stop,
            backoff=Backoff(base_s=0.01, cap_s=0.02),
        )
        supervisor.start()
        running.append((supervisor, stop))
        return supervisor, (metrics, calls)

    yield start
    for supervisor, stop in running:
        stop.set()
        supervisor.wake()
        supervisor.join(10)
        assert not supervisor.is_alive()


def test_supervisor_reconnects_every_feed_at_its_next_offset_after_a_cut(supervise: Any) -> None:
    cut = requests.exceptions.ChunkedEncodingError("Response ended prematurely")
    client = FakeClient(
        {
            "0": [
                FakeResponse([b"".join(line(o) + b"\n" for o in (10, 11, 12))], error=cut),
                FakeResponse([line(13) + b"\n"], hold=True),
            ],
            "1": [FakeResponse([line(3) + b"\n"], hold=True)],
        }
    )
    sink = RecordingSink()
    supervisor, (metrics, resume_calls) = supervise(client, sink, {"0": 10, "1": 3})
    wait_until(lambda: ("0", 13) in [(f, o) for f, o, _ in sink.sent] and supervisor.connected)
    assert ("0", 10) in client.opens and ("0", 13) in client.opens  # resumed right after 12
    assert client.opens.count(("1", 3)) == 1 and ("1", 4) in client.opens  # the healthy feed moved on too
    assert resume_calls == [["0", "1"]]  # Kafka is asked once; afterwards the supervisor knows
    assert sorted((f, o) for f, o, _ in sink.sent) == [("0", 10), ("0", 11), ("0", 12), ("0", 13), ("1", 3)]
    assert metrics.registry.get_sample_value("falcon_lake_ingest_reconnects_total", {"cause": "connection-error"}) == 1
    assert supervisor.positions() == {"0": 14, "1": 4}


def test_supervisor_waits_while_the_app_id_is_held_then_connects(supervise: Any) -> None:
    client = FakeClient({"0": [FakeResponse([line(1) + b"\n"], hold=True)]}, discover_errors=3)
    sink = RecordingSink()
    supervisor, (metrics, _) = supervise(client, sink, {"0": 1})
    wait_until(lambda: sink.sent and supervisor.connected)
    assert metrics.registry.get_sample_value("falcon_lake_ingest_reconnects_total", {"cause": "appid-held"}) == 3


def test_supervisor_renews_the_token_after_a_401(supervise: Any) -> None:
    refused = FalconApiError("stream", 401, "access denied")
    client = FakeClient({"0": [refused, FakeResponse([line(1) + b"\n"], hold=True)]})
    sink = RecordingSink()
    _, (metrics, _) = supervise(client, sink, {"0": 1})
    wait_until(lambda: sink.sent)
    assert client.invalidated == 1
    assert metrics.registry.get_sample_value("falcon_lake_ingest_reconnects_total", {"cause": "stream-401"}) == 1


def test_backoff_grows_without_progress_is_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=1, cap_s=8)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1 and all(4 <= d <= 8 for d in delays[4:])
    assert backoff.next_delay(retry_after=30) == 30
    backoff.reset()
    assert backoff.next_delay() <= 1
