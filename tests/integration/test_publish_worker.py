"""The publisher's conversion worker process dying mid-drain: the publisher stops at once with
one clear line and exit code 1 (nothing converts any more), commits only what was finished,
and a restart delivers everything."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_publish import (  # noqa: F401 - make_pipeline is a fixture
    Pipeline,
    expected_ids,
    falcon_records,
    last_offsets,
    make_pipeline,
)
from tests.processes import wait_exit
from tests.support import wait_for


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def conversion_worker(pid: int) -> int:
    for child in children(pid):
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise AssertionError(f"no conversion worker among the children of {pid}")


@pytest.mark.slow
def test_a_killed_conversion_worker_stops_the_publisher_with_exit_1_and_a_restart_delivers_everything(
    make_pipeline: Callable[..., Pipeline],  # noqa: F811
) -> None:
    pipeline = make_pipeline()
    records = falcon_records(per_feed=600, seed=61)
    expected = expected_ids(records, "all-user-activity")
    pipeline.produce(records)
    settings = {"FILTER_PRESET": "all-user-activity", "PUT_RATE_LIMIT": "10"}
    first = pipeline.start_publisher(**settings)
    wait_for(lambda: len(pipeline.emulator.events()) >= 300, timeout=60, what="deliveries under way")
    worker = wait_for(lambda: conversion_worker(first.pid), timeout=10, what="the conversion worker")
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    assert wait_exit(first, timeout=60) == 1
    assert time.monotonic() - started < 30, "stopped promptly, not at some later deadline"
    output = first.output()
    assert "conversion failed" in output and "conversion worker process ended" in output, output[-2000:]
    assert len(pipeline.emulator.events()) < len(expected)

    second = pipeline.start_publisher(**{**settings, "PUT_RATE_LIMIT": "95"})
    rows = pipeline.wait_rows(expected, timeout=120)
    pipeline.wait_committed_to_end()
    assert set(rows) == expected, "every event delivered"
    assert second.terminate() == 0
    assert pipeline.ssm_offsets() == last_offsets(records)
