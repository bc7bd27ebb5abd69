"""The Falcon Event Streams emulator over real sockets, driven with `requests` like the ingestor."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.falcon import FAULT_NAMES, FalconEmulator, FalconEmulatorConfig, Faults
from emulators.falcon_events import AUTH_OPERATIONS, write_event_file
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "testapp"
TIMEOUT = (3.0, 3.0)

MakeEmulator = Callable[..., FalconEmulator]


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Start emulators on free ports (appId hold time 0 unless given); all stopped after the test."""
    started: list[FalconEmulator] = []

    def make(**settings: Any) -> FalconEmulator:
        settings.setdefault("hold_seconds", 0.0)
        settings.setdefault("port", 0)
        emulator = FalconEmulator(FalconEmulatorConfig(**settings)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


class Client:
    """The calls an ingestor makes, one method each."""

    def __init__(self, url: str, app_id: str = APP) -> None:
        self.url = url
        self.app_id = app_id
        self.http = requests.Session()

    def token_response(self, client_id: str = "demo", client_secret: str = "demo") -> requests.Response:
        return self.http.post(
            f"{self.url}/oauth2/token",
            data={"client_id": client_id, "client_secret": client_secret},
            timeout=TIMEOUT,
        )

    def token(self) -> str:
        response = self.token_response()
        assert response.status_code == 201, response.text
        token: str = response.json()["access_token"]
        return token

    def discovery_response(self, token: str | None, app_id: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        params = {"appId": self.app_id if app_id is None else app_id, "format": "json"}
        return self.http.get(
            f"{self.url}/sensors/entities/datafeed/v2", params=params, headers=headers, timeout=TIMEOUT
        )

    def discover(self, token: str | None = None) -> list[dict[str, Any]]:
        response = self.discovery_response(token or self.token())
        assert response.status_code == 200, response.text
        resources: list[dict[str, Any]] = response.json()["resources"]
        return resources

    def open(self, resource: dict[str, Any], query: str = "&offset=1", token: str | None = None) -> requests.Response:
        session_token = token if token is not None else resource["sessionToken"]["token"]
        return requests.get(
            resource["dataFeedURL"] + query,
            headers={"Authorization": f"Token {session_token}"},
            stream=True,
            timeout=TIMEOUT,
        )

    def refresh(self, resource: dict[str, Any], token: str) -> requests.Response:
        return self.http.post(
            resource["refreshActiveSessionURL"], headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
        )


def read_lines(response: requests.Response, count: int, blank: bool = False) -> list[bytes]:
    """The next `count` lines of a feed (blank keep-alive lines skipped unless blank=True)."""
    lines: list[bytes] = []
    for line in response.iter_lines(chunk_size=1 << 16):
        if line or blank:
            lines.append(line)
        if len(lines) >= count:
            break
    return lines


def read_until_cut(response: requests.Response) -> list[bytes]:
    """Every event line of a stream the server cuts abruptly (the cut must happen)."""
    lines: list[bytes] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in response.iter_lines():
            if line:
                lines.append(line)
    response.close()
    return lines


def offsets(lines: list[bytes]) -> list[int]:
    return [json.loads(line)["metadata"]["offset"] for line in lines]


# -- token -------------------------------------------------------------------------------------


def test_token_with_good_credentials(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(client_id="cid1", client_secret="s3cret")
    response = Client(emulator.url).token_response("cid1", "s3cret")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["expires_in"] == 1799 and body["token_type"] == "bearer"
    assert "X-Cs-Region" not in response.headers  # by default: SDKs would follow it to a public cloud
    assert response.headers["X-Ratelimit-Limit"] and int(response.headers["X-Ratelimit-Remaining"]) > 0


def test_the_region_option_sends_x_cs_region(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(region="us-2")
    assert Client(emulator.url).token_response().headers["X-Cs-Region"] == "us-2"


def test_token_with_bad_or_missing_credentials_is_401(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()
    client = Client(emulator.url)
    bad = client.token_response("demo", "wrong")
    assert bad.status_code == 401
    assert bad.json()["errors"][0]["code"] == 401
    assert requests.post(f"{emulator.url}/oauth2/token", timeout=TIMEOUT).status_code == 401
    assert emulator.stats()["token_failures"] == 2 and emulator.stats()["tokens_issued"] == 0


def test_expired_bearer_token_is_rejected(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(token_ttl=1)
    client = Client(emulator.url)
    response = client.token_response()
    assert response.json()["expires_in"] == 1
    token = response.json()["access_token"]
    assert client.discovery_response(token).status_code == 200
    time.sleep(1.1)
    assert client.discovery_response(token).status_code == 401
    resource = client.discover()[0]  # a new token works again
    assert client.refresh(resource, token).status_code == 401


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_returns_one_resource_per_feed(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(feeds=3, refresh_interval=600)
    resources = Client(emulator.url).discover()
    assert len(resources) == 3
    for feed, resource in enumerate(resources):
        assert resource["dataFeedURL"] == f"{emulator.url}/sensors/entities/datafeed/v1/{feed}?appId={APP}"
        assert resource["refreshActiveSessionURL"] == (
            f"{emulator.url}/sensors/entities/datafeed-actions/v1/{feed}"
            f"?appId={APP}&action_name=refresh_active_stream_session"
        )
        assert resource["refreshActiveSessionInterval"] == 600
        text = resource["sessionToken"]["expiration"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", text), text  # nanoseconds, as Falcon
        expiration = datetime.strptime(text[:26], "%Y-%m-%dT%H:%M:%S.%f")
        remaining = expiration.replace(tzinfo=UTC).timestamp() - time.time()
        assert 590 < remaining <= 601
    assert len({r["sessionToken"]["token"] for r in resources}) == 3


def test_discovery_needs_a_valid_bearer_token(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()
    client = Client(emulator.url)
    assert client.discovery_response(None).status_code == 401
    assert client.discovery_response("not-a-token").status_code == 401
    token = client.token()
    as_token = requests.get(
        f"{emulator.url}/sensors/entities/datafeed/v2",
        params={"appId": APP},
        headers={"Authorization": f"Token {token}"},
        timeout=TIMEOUT,
    )
    assert as_token.status_code == 401


@pytest.mark.parametrize("app_id", ["", "a" * 33, "bad-app", "ünïcode"])
def test_discovery_rejects_a_bad_app_id(make_emulator: MakeEmulator, app_id: str) -> None:
    emulator = make_emulator()
    client = Client(emulator.url)
    assert client.discovery_response(client.token(), app_id=app_id).status_code == 400


def test_app_id_is_exclusive_while_streaming_and_for_the_hold_time(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(hold_seconds=0.6, events=5)
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    stream = client.open(resource)
    assert len(read_lines(stream, 5)) == 5
    held = client.discovery_response(token)
    assert held.status_code == 200 and held.json()["resources"] == []
    assert len(client.discover(token)) == 0
    assert Client(emulator.url, app_id="otherapp").discover(token)  # another appId is free
    stream.close()
    wait_for(lambda: emulator.stats()["streams_active"] == 0, timeout=3, what="stream to close")
    released = time.monotonic()
    assert client.discover(token) == []  # still held just after the drop
    resources = wait_for(lambda: client.discover(token), timeout=3, interval=0.05, what="appId release")
    assert time.monotonic() - released >= 0.4
    assert len(resources) == 1
    assert emulator.stats()["empty_discoveries"] >= 3


# -- feed --------------------------------------------------------------------------------------


def test_feed_needs_the_session_token_with_the_word_token(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(feeds=2)
    client = Client(emulator.url)
    token = client.token()
    first, second = client.discover(token)
    bearer = requests.get(
        first["dataFeedURL"] + "&offset=1",
        headers={"Authorization": f"Bearer {first['sessionToken']['token']}"},
        timeout=TIMEOUT,
    )
    assert bearer.status_code == 401
    assert client.open(first, token="wrong").status_code == 401
    assert client.open(second, token=first["sessionToken"]["token"]).status_code == 401
    unknown = dict(first, dataFeedURL=first["dataFeedURL"].replace("/v1/0?", "/v1/7?"))
    assert client.open(unknown).status_code == 404
    bad_offset = client.open(first, query="&offset=abc")
    assert bad_offset.status_code == 400


def test_offset_resume_serves_exactly_the_event_with_that_offset(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=100)
    client = Client(emulator.url)
    resource = client.discover()[0]
    stream = client.open(resource, "&offset=37")
    assert stream.status_code == 200
    assert stream.headers["Transfer-Encoding"] == "chunked"
    assert "X-Ratelimit-Remaining" in stream.headers
    lines = read_lines(stream, 10)
    stream.close()
    assert offsets(lines) == list(range(37, 47))
    assert lines == [emulator.event_line("0", o) for o in range(37, 47)]
    again = client.open(resource, "&offset=40")
    assert read_lines(again, 3) == lines[3:6]  # the same bytes every time
    again.close()
    start = client.open(resource, "")  # no offset: from the earliest event
    assert offsets(read_lines(start, 1)) == [1]
    start.close()


def test_whence_2_serves_only_events_that_arrive_later(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=10)
    client = Client(emulator.url)
    resource = client.discover()[0]
    stream = client.open(resource, "&whence=2")
    assert stream.status_code == 200
    added = requests.post(f"{emulator.url}/_emulator/events", json={"count": 3}, timeout=TIMEOUT)
    assert added.json() == {"next_offset": {"0": 14}}
    assert offsets(read_lines(stream, 3)) == [11, 12, 13]
    stream.close()


def test_event_type_filter_is_applied_by_the_server(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=300)
    client = Client(emulator.url)
    wanted = {"UserActivityAuditEvent", "DetectionSummaryEvent"}
    expected = [o for o in range(1, 301) if json.loads(emulator.event_line("0", o))["metadata"]["eventType"] in wanted]
    stream = client.open(client.discover()[0], "&offset=1&eventType=UserActivityAuditEvent,DetectionSummaryEvent")
    lines = read_lines(stream, len(expected))
    stream.close()
    assert offsets(lines) == expected
    assert {json.loads(line)["metadata"]["eventType"] for line in lines} == wanted


def test_idle_stream_stays_open_with_blank_keepalive_lines(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=3, keepalive_seconds=0.2)
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    lines = read_lines(stream, 5, blank=True)
    stream.close()
    assert offsets(lines[:3]) == [1, 2, 3]
    assert lines[3:] == [b"", b""]


def test_rate_mode_serves_events_as_they_are_created(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(rate=40.0)
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    lines = read_lines(stream, 12)
    received_ms = time.time() * 1000
    stream.close()
    assert offsets(lines) == list(range(1, 13))
    created = [json.loads(line)["metadata"]["eventCreationTime"] for line in lines]
    # Created one by one at 40/s (11 gaps of 25 ms), not all at once, and none before its time.
    assert created[-1] - created[0] >= 200
    assert created[-1] <= received_ms + 50
    assert abs(created[-1] / 1000 - time.time()) < 5  # realistic age: just now


def test_generated_events_have_unicode_ipv6_and_every_operation(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=1500)
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    lines = read_lines(stream, 1500)
    stream.close()
    assert any(not line.isascii() for line in lines)  # raw UTF-8 on the wire
    events = [json.loads(line)["event"] for line in lines]
    assert 6 in {ipaddress.ip_address(e["UserIp"]).version for e in events if "UserIp" in e}
    assert set(AUTH_OPERATIONS) <= {e.get("OperationName") for e in events}


# -- refresh and session expiry -----------------------------------------------------------------


def test_refresh_extends_the_session(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(session_ttl=1.0, events=5)
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    for _ in range(2):
        time.sleep(0.6)
        refreshed = client.refresh(resource, token)
        assert refreshed.status_code == 200, refreshed.text
    time.sleep(0.3)  # 1.5 s after discovery: alive only thanks to the refreshes
    stream = client.open(resource)
    assert stream.status_code == 200
    assert offsets(read_lines(stream, 1)) == [1]
    stream.close()
    assert emulator.stats()["refreshes"] == 2


def test_refresh_validates_its_request(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    assert client.refresh(resource, "nope").status_code == 401
    url = resource["refreshActiveSessionURL"].replace("refresh_active_stream_session", "other")
    wrong = requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert wrong.status_code == 400
    never = Client(emulator.url, app_id="neverdiscovered")
    assert (
        never.refresh(
            {
                "refreshActiveSessionURL": resource["refreshActiveSessionURL"].replace(
                    f"appId={APP}", "appId=neverdiscovered"
                )
            },
            token,
        ).status_code
        == 404
    )


def test_unrefreshed_session_expires_feed_401_refresh_404(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(session_ttl=0.5)
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    time.sleep(0.7)
    assert client.open(resource).status_code == 401
    assert client.refresh(resource, token).status_code == 404
    assert emulator.stats()["sessions_expired"] == 1


def test_open_stream_of_an_expired_session_is_closed(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(session_ttl=0.6, events=4)
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    started = time.monotonic()
    lines = [line for line in stream.iter_lines() if line]  # ends when the server closes the stream
    assert offsets(lines) == [1, 2, 3, 4]
    assert time.monotonic() - started < 2.5
    wait_for(lambda: emulator.stats()["streams_active"] == 0, timeout=2, what="stream closed")


# -- faults ------------------------------------------------------------------------------------


def test_disconnect_every_cuts_the_stream_and_resume_loses_nothing(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=12, faults=Faults(disconnect_every=5))
    client = Client(emulator.url)
    resource = client.discover()[0]
    received: list[int] = []
    for start in (1, 6):
        received += offsets(read_until_cut(client.open(resource, f"&offset={start}")))
        assert len(received) == start + 4  # exactly 5 events per connection
    last = client.open(resource, "&offset=11")
    received += offsets(read_lines(last, 2))
    last.close()
    assert received == list(range(1, 13))
    assert emulator.stats()["faults_injected"]["disconnect_every"] == 2


def test_feed_401_every(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(faults=Faults(feed_401_every=2))
    client = Client(emulator.url)
    resource = client.discover()[0]
    statuses = []
    for _ in range(4):
        response = client.open(resource)
        statuses.append(response.status_code)
        response.close()
    assert statuses == [200, 401, 200, 401]
    assert emulator.stats()["faults_injected"]["feed_401_every"] == 2


def test_refresh_404_always_or_every_nth(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(faults=Faults(refresh_404=1))
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    assert [client.refresh(resource, token).status_code for _ in range(2)] == [404, 404]
    emulator.set_faults(refresh_404=2)
    assert [client.refresh(resource, token).status_code for _ in range(2)] == [200, 404]
    assert emulator.stats()["faults_injected"]["refresh_404"] == 3


def test_rate_limit_every_answers_429_with_headers(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(faults=Faults(rate_limit_every=3))
    client = Client(emulator.url)
    responses = [client.token_response() for _ in range(6)]
    assert [r.status_code for r in responses] == [201, 201, 429, 201, 201, 429]
    limited = responses[2]
    # Falcon's form: the epoch second after which to retry, at least a second away; no Retry-After.
    assert 0 < int(limited.headers["X-Ratelimit-Retryafter"]) - time.time() <= 2.0
    assert "Retry-After" not in limited.headers
    assert limited.headers["X-Ratelimit-Remaining"] == "0"
    assert limited.headers["X-Ratelimit-Limit"] == responses[0].headers["X-Ratelimit-Limit"]
    assert int(responses[1].headers["X-Ratelimit-Remaining"]) < int(responses[0].headers["X-Ratelimit-Remaining"])
    assert emulator.stats()["faults_injected"]["rate_limit_every"] == 2


def test_token_and_discovery_5xx_every(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(faults=Faults(token_5xx_every=2, discovery_5xx_every=3))
    client = Client(emulator.url)
    assert [client.token_response().status_code for _ in range(4)] == [201, 503, 201, 503]
    token = client.token()
    assert [client.discovery_response(token).status_code for _ in range(3)] == [200, 200, 503]
    injected = emulator.stats()["faults_injected"]
    assert (injected["token_5xx_every"], injected["discovery_5xx_every"]) == (2, 1)


def test_malformed_every_inserts_a_bad_line_and_loses_no_event(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    record = tmp_path / "served.ndjson"
    emulator = make_emulator(events=10, faults=Faults(malformed_every=4), record=record)
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    lines = read_lines(stream, 12)
    stream.close()
    good, bad = [], []
    for index, line in enumerate(lines):
        try:
            good.append(json.loads(line)["metadata"]["offset"])
        except ValueError:
            bad.append(index)
    assert good == list(range(1, 11))
    assert bad == [3, 8]  # before the 4th and the 8th event
    assert lines[4] == emulator.event_line("0", 4) and lines[3] == lines[4][: len(lines[3])]
    stats = emulator.stats()
    assert stats["malformed_served"] == {"0": 2} and stats["events_served"] == {"0": 10}
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(e["offset"], e.get("malformed", False)) for e in entries if e.get("malformed")] == [(4, True), (8, True)]
    assert [e["offset"] for e in entries if not e.get("malformed")] == list(range(1, 11))

    # A reader that reconnects meets the same line before the same event; the record keeps one per place.
    again = client.open(client.discover()[0], query="&offset=2")
    relines = read_lines(again, 11)
    again.close()
    assert relines[2] == lines[3] and relines[7] == lines[8]
    assert emulator.stats()["malformed_served"] == {"0": 4}
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e["offset"] for e in entries if e.get("malformed")] == [4, 8]


def test_idle_gap_pauses_the_stream(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=6, faults=Faults(idle_gap_every=3, idle_gap_seconds=0.5))
    client = Client(emulator.url)
    stream = client.open(client.discover()[0])
    arrivals = []
    for line in stream.iter_lines():
        if line:
            arrivals.append(time.monotonic())
        if len(arrivals) == 6:
            break
    stream.close()
    assert arrivals[3] - arrivals[2] >= 0.4
    assert arrivals[2] - arrivals[0] < 0.3
    assert emulator.stats()["faults_injected"]["idle_gap_every"] >= 1


def test_expire_sessions_after_kills_refreshed_sessions(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(faults=Faults(expire_sessions_after=0.8))
    client = Client(emulator.url)
    token = client.token()
    resource = client.discover(token)[0]
    assert client.refresh(resource, token).status_code == 200
    time.sleep(1.0)
    assert client.refresh(resource, token).status_code == 404
    assert client.open(resource).status_code == 401
    assert emulator.stats()["faults_injected"]["expire_sessions_after"] == 1


def test_faults_switch_at_run_time_over_http(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=20)
    client = Client(emulator.url)
    control = f"{emulator.url}/_emulator/faults"
    assert requests.get(control, timeout=TIMEOUT).json() == Faults().as_dict()
    answer = requests.post(control, json={"disconnect_every": 3, "feed-401-every": 0}, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.json()["disconnect_every"] == 3
    resource = client.discover()[0]
    assert offsets(read_until_cut(client.open(resource))) == [1, 2, 3]
    assert requests.post(control, json={"reset": True}, timeout=TIMEOUT).json() == Faults().as_dict()
    stream = client.open(resource, "&offset=4")
    assert offsets(read_lines(stream, 17)) == list(range(4, 21))
    stream.close()
    unknown = requests.post(control, json={"explode": 1}, timeout=TIMEOUT)
    assert unknown.status_code == 400 and "unknown fault" in unknown.json()["errors"][0]["message"]
    assert requests.post(control, data=b"[1]", timeout=TIMEOUT).status_code == 400


def test_stats_count_what_happened(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(events=5, feeds=2)
    client = Client(emulator.url)
    token = client.token()
    resources = client.discover(token)
    stream = client.open(resources[1])
    read_lines(stream, 5)
    stream.close()
    client.refresh(resources[0], token)
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=TIMEOUT).json()
    assert stats["tokens_issued"] == 1 and stats["discoveries"] == 1 and stats["streams_opened"] == 1
    assert stats["events_served"] == {"0": 0, "1": 5} and stats["refreshes"] == 1
    assert stats["next_offset"] == {"0": 6, "1": 6}
    assert set(stats["faults"]) == set(FAULT_NAMES)
    assert "X-Ratelimit-Limit" in requests.get(f"{emulator.url}/nowhere", timeout=TIMEOUT).headers


# -- record, determinism, files -------------------------------------------------------------------


def test_record_file_holds_each_offset_once_across_reconnects(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    record = tmp_path / "record.ndjson"
    emulator = make_emulator(events=30, feeds=2, record=record, faults=Faults(disconnect_every=10))
    client = Client(emulator.url)
    resources = client.discover()
    served: dict[str, list[bytes]] = {"0": [], "1": []}
    for start in (1, 6, 11, 21, 16):  # overlapping re-reads after cuts
        served["0"] += read_until_cut(client.open(resources[0], f"&offset={start}"))
    served["1"] += read_until_cut(client.open(resources[1], "&offset=3"))
    wait_for(lambda: emulator.stats()["streams_active"] == 0, timeout=2, what="streams closed")
    entries = [json.loads(line) for line in record.read_bytes().splitlines()]
    feed0 = [e for e in entries if e["feed"] == "0"]
    assert [e["offset"] for e in feed0] == list(range(1, 31))
    assert all(e["event"] == json.loads(emulator.event_line(e["feed"], e["offset"])) for e in entries)
    assert [e["offset"] for e in entries if e["feed"] == "1"] == offsets(served["1"]) == list(range(3, 13))
    assert emulator.stats()["events_served"]["0"] == len(served["0"]) == 50


def test_same_seed_and_start_time_give_the_same_bytes(make_emulator: MakeEmulator) -> None:
    def raw_stream(emulator: FalconEmulator, events: int) -> bytes:
        client = Client(emulator.url)
        stream = client.open(client.discover()[0])
        data = b""
        for chunk in stream.iter_content(chunk_size=None):
            data += chunk
            if data.count(b"\n") >= events:
                break
        stream.close()
        return data

    one = make_emulator(seed=11, start_time=1_767_225_600, events=200, event_size=600)
    two = make_emulator(seed=11, start_time=1_767_225_600, events=200, event_size=600)
    other = make_emulator(seed=12, start_time=1_767_225_600, events=200, event_size=600)
    assert raw_stream(one, 200) == raw_stream(two, 200)
    assert raw_stream(one, 200) != raw_stream(other, 200)


def test_from_file_serves_its_events_with_their_offsets(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    source = make_emulator(events=50, feeds=2)
    path = tmp_path / "events.ndjson"
    chosen = [("0", 10), ("0", 20), ("0", 30), ("1", 7)]
    write_event_file(path, [(feed, source.event_line(feed, offset)) for feed, offset in chosen])
    emulator = make_emulator(from_file=path)
    client = Client(emulator.url)
    resources = client.discover()
    assert len(resources) == 2
    stream = client.open(resources[0], "&offset=15")
    lines = read_lines(stream, 2)
    stream.close()
    assert lines == [source.event_line("0", 20), source.event_line("0", 30)]
    stream = client.open(resources[1])
    assert [json.loads(line) for line in read_lines(stream, 1)] == [json.loads(source.event_line("1", 7))]
    stream.close()


# -- the command -----------------------------------------------------------------------------------


def _start_cli(*flags: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "falcon", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line


def test_cli_prints_its_url_serves_and_stops_on_sigterm() -> None:
    process, line = _start_cli("--port", "0", "--events", "3", "--client-id", "me", "--client-secret", "pw")
    try:
        assert line.startswith("falcon emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        client = Client(url)
        assert client.token_response("me", "pw").status_code == 201
        resource = client.discover(client.token_response("me", "pw").json()["access_token"])[0]
        stream = client.open(resource)
        assert offsets(read_lines(stream, 3)) == [1, 2, 3]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        stream.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_help_lists_every_flag() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "falcon", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for flag in [
        "--host",
        "--port",
        "--client-id",
        "--client-secret",
        "--token-ttl",
        "--feeds",
        "--refresh-interval",
        "--session-ttl",
        "--hold-seconds",
        "--seed",
        "--first-offset",
        "--events",
        "--rate",
        "--from-file",
        "--event-size",
        "--start-time",
        "--record",
        *("--" + name.replace("_", "-") for name in FAULT_NAMES),
    ]:
        assert flag in result.stdout, flag


def test_cli_failures_are_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "falcon", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"falcon emulator: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    missing = subprocess.run(
        [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "falcon", "--from-file", str(tmp_path / "none.ndjson")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "cannot read event file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = subprocess.run(
        [str(ROOT / ".venv/bin/falcon-lake"), "emulate", "falcon", "--port", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "--port" in bad.stderr


def test_a_given_port_is_honoured_and_stop_frees_it(make_emulator: MakeEmulator) -> None:
    port = free_port()
    emulator = make_emulator(port=port)
    assert emulator.url == f"http://127.0.0.1:{port}"
    assert Client(emulator.url).token()
    emulator.stop()
    emulator.stop()  # idempotent
    again = make_emulator(port=port)
    assert Client(again.url).token()


# -- CrowdStrike's own SDK ------------------------------------------------------------------------


def test_falconpy_event_streams_work_against_the_emulator_unmodified(make_emulator: MakeEmulator) -> None:
    """FalconPy with its defaults: token, discovery, a stream read over requests as its docs show, refresh."""
    from falconpy import EventStreams

    emulator = make_emulator(client_id="fpy-id", client_secret="fpy-secret", feeds=2, events=20)
    falcon = EventStreams(client_id="fpy-id", client_secret="fpy-secret", base_url=emulator.url)

    streams = falcon.list_available_streams(app_id=APP, format="json")
    assert streams["status_code"] == 200, streams
    assert falcon.base_url == emulator.url  # not switched to a public cloud after the login
    resources = streams["body"]["resources"]
    assert [r["dataFeedURL"].split("?")[0].rsplit("/", 1)[-1] for r in resources] == ["0", "1"]

    stream = resources[0]
    response = requests.get(
        stream["dataFeedURL"] + "&offset=5",
        headers={"Authorization": f"Token {stream['sessionToken']['token']}"},
        stream=True,
        timeout=TIMEOUT,
    )
    try:
        assert response.status_code == 200
        lines = response.iter_lines()
        offsets = [json.loads(next(lines))["metadata"]["offset"] for _ in range(3)]
    finally:
        response.close()
    assert offsets == [5, 6, 7]

    refreshed = falcon.refresh_active_stream(partition=0, app_id=APP)
    assert refreshed["status_code"] == 200, refreshed
    assert emulator.stats()["refreshes"] == 1
    assert falcon.refresh_active_stream(partition=9, app_id=APP)["status_code"] == 404  # no such feed
