"""The Falcon client's answers to refusals, and the ingestor's start-up wiring, without a broker."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import pytest
import responses as responses_lib
from requests.structures import CaseInsensitiveDict

from emulators.falcon import FalconEmulator, FalconEmulatorConfig, Faults
from falcon_lake.settings import Secret, load_ingestor
from ingestor import falcon_api
from ingestor import main as ingest_main
from ingestor.falcon_api import AppIdHeld, FalconApiError, FalconClient, FeedSession, parse_expiration, retry_after_s
from ingestor.session import refresh_delays


@pytest.fixture
def emulator() -> Iterator[FalconEmulator]:
    emulator = FalconEmulator(FalconEmulatorConfig(port=0, hold_seconds=0.0, events=5)).start()
    yield emulator
    emulator.stop()


def client(emulator: FalconEmulator, requests_seen: list[tuple[str, int]] | None = None) -> FalconClient:
    seen = requests_seen if requests_seen is not None else []
    return FalconClient(
        emulator.url,
        None,
        "demo",
        Secret("demo"),
        "unittest",
        on_request=lambda kind, status: seen.append((kind, status)),
    )


def test_a_refused_feed_open_says_why_and_is_counted(emulator: FalconEmulator) -> None:
    seen: list[tuple[str, int]] = []
    falcon = client(emulator, seen)
    [feed] = falcon.discover()
    emulator.set_faults(feed_401_every=1)
    with pytest.raises(FalconApiError) as refused:
        falcon.open_stream(feed, 1, (), 5.0)
    assert refused.value.status == 401 and refused.value.what == "stream"
    assert str(refused.value) == "stream: HTTP 401 access denied, authorization failed"
    assert ("stream", 401) in seen
    emulator.set_faults(reset=True)
    stream = falcon.open_stream(feed, 1, (), 5.0)
    assert ("stream", 200) in seen
    stream.close()


def test_429_carries_the_wait_falcon_names_in_x_ratelimit_retryafter(emulator: FalconEmulator) -> None:
    falcon = client(emulator)
    falcon.bearer()
    emulator.set_faults(rate_limit_every=1)
    with pytest.raises(FalconApiError) as limited:
        falcon.discover()
    assert (limited.value.what, limited.value.status) == ("discover", 429)
    assert limited.value.retry_after is not None and 0.5 < limited.value.retry_after <= 2.0


def test_retry_after_reads_falcons_epoch_header_and_a_proxys_retry_after_whatever_their_case() -> None:
    now = 1_796_000_000.0
    assert retry_after_s(CaseInsensitiveDict({"x-ratelimit-retryafter": "1796000003"}), now) == 3.0
    assert retry_after_s(CaseInsensitiveDict({"X-RateLimit-RetryAfter": "1795999990"}), now) == 0.0  # past
    assert retry_after_s(CaseInsensitiveDict({"Retry-After": "7"}), now) == 7.0
    both = CaseInsensitiveDict({"X-Ratelimit-Retryafter": "1796000002", "retry-after": "5"})
    assert retry_after_s(both, now) == 5.0  # the later of the two
    http_date = CaseInsensitiveDict({"Retry-After": formatdate(now + 4, usegmt=True)})
    assert retry_after_s(http_date, now) == 4.0
    assert retry_after_s(CaseInsensitiveDict({"Retry-After": "soon"}), now) is None
    assert retry_after_s(CaseInsensitiveDict({"X-Ratelimit-Retryafter": "1796000000000"}), now) == 600.0  # capped
    assert retry_after_s(CaseInsensitiveDict({}), now) is None


def test_session_expiration_with_nanoseconds_is_parsed() -> None:
    parsed = parse_expiration("2026-12-04T14:25:05.826373335Z")
    assert parsed == datetime(2026, 12, 4, 14, 25, 5, 826373, tzinfo=UTC)
    assert parse_expiration("2026-12-04T14:25:05Z") == datetime(2026, 12, 4, 14, 25, 5, tzinfo=UTC)
    assert parse_expiration("2026-12-04T14:25:05.5+01:00") == datetime(2026, 12, 4, 13, 25, 5, 500000, tzinfo=UTC)
    assert parse_expiration("tomorrow") is None and parse_expiration(None) is None


def test_discovery_gives_the_expiration_and_the_refresh_url_falcon_names(emulator: FalconEmulator) -> None:
    [feed] = client(emulator).discover()
    assert feed.expiration is not None and feed.expiration > datetime.now(UTC)
    assert feed.refresh_url == (
        f"{emulator.url}/sensors/entities/datafeed-actions/v1/0?appId=unittest&action_name=refresh_active_stream_session"
    )


def test_refresh_posts_the_url_discovery_returned_and_builds_one_only_when_missing() -> None:
    posted: list[str] = []

    def handler(request: Any) -> tuple[int, dict[str, str], str]:
        posted.append(request.url)
        return 200, {}, "{}"

    other_host = "https://firehose.example/sensors/entities/datafeed-actions/v1/0?appId=app&action_name=x"
    answer = {
        "resources": [
            {
                "dataFeedURL": "https://firehose.example/sensors/entities/datafeed/v1/0?appId=app",
                "sessionToken": {"token": "t0", "expiration": "2026-12-04T14:25:05.826373335Z"},
                "refreshActiveSessionURL": other_host,
                "refreshActiveSessionInterval": 600,
            },
            {
                "dataFeedURL": "https://firehose.example/sensors/entities/datafeed/v1/1?appId=app",
                "sessionToken": {"token": "t1"},
            },
        ]
    }
    falcon = FalconClient("https://api.example", None, "id", Secret("s"), "app")
    with responses_lib.RequestsMock() as mock:
        mock.add(responses_lib.POST, "https://api.example/oauth2/token", json={"access_token": "a", "expires_in": 1799})
        mock.add(responses_lib.GET, "https://api.example/sensors/entities/datafeed/v2", json=answer)
        mock.add_callback(responses_lib.POST, re.compile(r".*/datafeed-actions/v1/.*"), callback=handler)
        first, second = falcon.discover()
        falcon.refresh(first)
        falcon.refresh(second)
    assert (first.refresh_interval_s, second.refresh_interval_s) == (600.0, 1800.0)
    assert second.expiration is None
    assert posted == [
        other_host,
        "https://api.example/sensors/entities/datafeed-actions/v1/1?action_name=refresh_active_stream_session&appId=app",
    ]


def test_refresh_comes_at_90_percent_of_the_interval_and_first_before_the_token_expires() -> None:
    now = 1_796_000_000.0
    url = "https://f.example/sensors/entities/datafeed/v1/0"
    expires = datetime.fromtimestamp(now + 100, tz=UTC)
    assert refresh_delays([FeedSession("0", url, Secret("t"), None, url, 1800.0)], now) == (1620.0, 1620.0)
    assert refresh_delays([FeedSession("0", url, Secret("t"), None, url, 10.0)], now) == (9.0, 9.0)
    first, every = refresh_delays([FeedSession("0", url, Secret("t"), expires, url, 1800.0)], now)
    assert (round(first), every) == (90, 1620.0)


def test_x_cs_region_moves_a_discoverable_cloud_to_the_customers_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    us1 = FalconEmulator(FalconEmulatorConfig(port=0, region="us-2", events=5)).start()
    us2 = FalconEmulator(FalconEmulatorConfig(port=0, events=5)).start()
    try:
        monkeypatch.setattr(falcon_api, "FALCON_CLOUDS", {"us-1": us1.url, "us-2": us2.url})
        falcon = FalconClient(us1.url, "us-1", "demo", Secret("demo"), "unittest")
        [feed] = falcon.discover()
        assert (falcon.cloud, falcon.base_url) == ("us-2", us2.url)
        assert feed.data_feed_url.startswith(us2.url)
        assert us2.stats()["discoveries"] == 1 and us1.stats()["discoveries"] == 0
        # A URL (no named cloud) is never redirected.
        pinned = FalconClient(us1.url, None, "demo", Secret("demo"), "unittest")
        pinned.discover()
        assert pinned.base_url == us1.url and us1.stats()["discoveries"] == 1
    finally:
        us1.stop()
        us2.stop()


def test_an_empty_discovery_means_the_app_id_is_held(emulator: FalconEmulator) -> None:
    falcon = client(emulator)
    [feed] = falcon.discover()
    stream = falcon.open_stream(feed, None, (), 5.0)  # this connection holds the appId
    try:
        with pytest.raises(AppIdHeld, match="another consumer holds it"):
            client(emulator).discover()
    finally:
        stream.close()


def test_token_5xx_is_an_api_error_of_the_token_endpoint() -> None:
    emulator = FalconEmulator(FalconEmulatorConfig(port=0, faults=Faults(token_5xx_every=1))).start()
    try:
        with pytest.raises(FalconApiError) as failed:
            client(emulator).discover()
        assert (failed.value.what, failed.value.status) == ("token", 503)
    finally:
        emulator.stop()


class FakeAdmin:
    """Metadata that lists no partitions for a freshly created topic at first."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers

    def list_topics(self, topic: str, timeout: float = 0) -> Any:
        count = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        described = SimpleNamespace(error=None, partitions=dict.fromkeys(range(count)))
        return SimpleNamespace(topics={topic: described})

    def describe_configs(self, resources: list[Any]) -> dict[Any, Any]:
        return {}  # no max.message.bytes known: the producer's default limit


def test_the_partition_count_is_only_taken_once_the_metadata_lists_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_ingestor(
        {
            "FALCON_CLIENT_ID": "demo",
            "FALCON_CLIENT_SECRET": "demo-secret",
            "FALCON_CLOUD_REGION": "http://127.0.0.1:9",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        }
    )
    monkeypatch.setattr(ingest_main, "admin_client", lambda kafka: FakeAdmin([0, 0, 3]))
    monkeypatch.setattr(ingest_main, "ensure_topic", lambda admin, name, partitions: None)
    ingestor = ingest_main.Ingestor(settings, "demo", Secret("demo-secret"))
    monkeypatch.setattr(ingestor.stop, "wait", lambda timeout=None: False)  # no real pauses between tries
    ingestor._prepare_topics()
    assert ingestor.partitions == 3
    stopped = ingest_main.Ingestor(settings, "demo", Secret("demo-secret"))
    monkeypatch.setattr(ingest_main, "admin_client", lambda kafka: FakeAdmin([0]))
    threading.Timer(0.2, stopped.stop.set).start()
    stopped._prepare_topics()  # gives up when told to stop, never routes with 0 partitions
    assert stopped.partitions == 0 and stopped.stop.is_set()
