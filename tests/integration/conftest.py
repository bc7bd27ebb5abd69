"""Fixtures the integration suites share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_ingest import IngestHarness, ingest_harness


@pytest.fixture
def harness(
    kafka_bootstrap: str, moto_endpoint: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[IngestHarness]:
    """An ingest test world: a Falcon emulator, unique topics, the ingestor run as a process."""
    with ingest_harness(kafka_bootstrap, moto_endpoint, unique_name("ingest"), tmp_path / "logs") as world:
        yield world
