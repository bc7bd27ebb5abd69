"""The Falcon client's answers to refusals, and the ingestor's start-up wiring, without a broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from emulators.falcon import FalconEmulator, FalconEmulatorConfig, Faults
from falcon_lake.settings import Secret, load_ingestor
from ingestor import main as ingest_main
from ingestor.falcon_api import AppIdHeld, FalconApiError, FalconClient


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


def test_429_carries_retry_after(emulator: FalconEmulator) -> None:
    falcon = client(emulator)
    falcon.bearer()
    emulator.set_faults(rate_limit_every=1)
    with pytest.raises(FalconApiError) as limited:
        falcon.discover()
    assert (limited.value.what, limited.value.status, limited.value.retry_after) == ("discover", 429, 1.0)


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
