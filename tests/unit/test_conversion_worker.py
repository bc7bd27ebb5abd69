"""The conversion worker process: results in order whatever the pipe holds, and a clear failure
when the worker dies (a real spawned process, real pipes)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from emulators.falcon_events import EventGenerator
from falcon_lake.settings import load_publisher
from publisher.conversion import AUDIT_EVENT, Conversions, ConversionWorkerDied, Converted
from publisher.convert import Converter
from publisher.filter import EventFilter

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


def chunks(count: int, size: int, seed: int = 5) -> list[list[tuple[bytes, str]]]:
    generator = EventGenerator(seed, base_time_ms=int(time.time() * 1000) - 3_600_000, spacing_ms=10.0)
    events = [json.dumps(generator.event("0", offset)).encode() for offset in range(1, count * size + 1)]
    events[7] = b"{not json"  # one for the DLQ, in the middle of a chunk
    return [[(raw, "0") for raw in events[i : i + size]] for i in range(0, len(events), size)]


@pytest.fixture
def worker() -> Iterator[tuple[Conversions, Converter]]:
    settings = load_publisher({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "SSM_REGION": ""})
    converter = Converter(CHANNEL, EventFilter.from_settings(settings.filter))
    conversions = Conversions(settings, converter, processes=1)
    yield conversions, converter
    conversions.close()


def wait(conversions: Conversions, futures: list[Future[list[Converted]]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        conversions.poll(timeout=0.05)


def test_results_come_back_in_order_and_equal_inline_conversion_even_past_the_pipe_capacity(
    worker: tuple[Conversions, Converter],
) -> None:
    conversions, converter = worker
    work = chunks(count=40, size=250)  # ~40 chunks of ~250 KB: far more than any pipe holds
    futures = [conversions.submit(chunk) for chunk in work]  # never blocks: the rest waits its turn
    wait(conversions, futures)
    inline = Conversions(load_publisher({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "SSM_REGION": ""}), converter, 0)
    for chunk, future in zip(work, futures, strict=True):
        assert future.result(timeout=0) == inline.submit(chunk).result()
    kinds = [kind for future in futures for kind, *_ in future.result()]
    assert kinds.count(AUDIT_EVENT) > 0 and len(kinds) == 40 * 250


def test_a_worker_that_dies_fails_every_outstanding_and_later_chunk_with_a_clear_error(
    worker: tuple[Conversions, Converter],
) -> None:
    conversions, _ = worker
    pid = conversions._process.pid
    os.kill(pid, signal.SIGKILL)
    futures = [conversions.submit(chunk) for chunk in chunks(count=5, size=250)]
    wait(conversions, futures, timeout=30)
    for future in futures:
        with pytest.raises(ConversionWorkerDied, match="conversion worker process ended"):
            future.result(timeout=0)
    later = conversions.submit([(b"{}", "0")])
    conversions.poll()
    with pytest.raises(ConversionWorkerDied):
        later.result(timeout=0)


def test_close_stops_the_worker_process(worker: tuple[Conversions, Converter]) -> None:
    conversions, _ = worker
    process = conversions._process
    conversions.close()
    assert not process.is_alive() and process.exitcode == 0
