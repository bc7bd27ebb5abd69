"""Session-wide services for the test suite: a real Apache Kafka broker and a moto server.

Both come up once per session, on ports of their own so a developer's `make kafka-up`
broker is never touched, and are stopped when the session ends. Where
KAFKA_BOOTSTRAP_SERVERS (or MOTO_ENDPOINT) is set, the running service is used instead
and left alone. Under pytest-xdist (`-n N`) the controlling process starts them once, before
its workers, and hands them their addresses through those two variables, so every worker
shares one broker and one moto server; per-test topic, group and parameter names keep the
workers apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
_SHARED_SERVICES = pytest.StashKey[list[Callable[[], None]]]()

# boto3 must never reach real AWS from a test: dummy keys, a fixed region.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)


def _is_xdist_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to xdist workers (not in a worker, not without -n)."""
    numprocesses = getattr(config.option, "numprocesses", None)
    return bool(numprocesses) and not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"


def pytest_configure(config: pytest.Config) -> None:
    if not _is_xdist_controller(config):
        return
    started: list[Callable[[], None]] = []
    config.stash[_SHARED_SERVICES] = started
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        data_dir = Path(tempfile.mkdtemp(prefix="falcon-lake-kafka-"))
        broker = LocalKafka(data_dir)
        broker.start()
        started.append(broker.stop)
        started.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap  # the workers inherit it
    if not os.environ.get("MOTO_ENDPOINT"):
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        started.append(server.stop)
        os.environ["MOTO_ENDPOINT"] = f"http://127.0.0.1:{port}"


def pytest_unconfigure(config: pytest.Config) -> None:
    for stop in config.stash.get(_SHARED_SERVICES, []):
        stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "faults" in parts:
            item.add_marker(pytest.mark.integration)


class LocalKafka:
    """A broker started by scripts/kafka.sh for this session, in a throwaway data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_DATA_DIR": str(data_dir),
        }
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], env=self.env, check=True)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "stop"], env=self.env, check=False)


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The broker this session started, or None when KAFKA_BOOTSTRAP_SERVERS names a running one."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of the test's own, which it may stop and restart (never the session's)."""
    broker = LocalKafka(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> str:
    if local_kafka is None:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return local_kafka.bootstrap


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server (SSM, Secrets Manager) reached over real HTTP."""
    if os.environ.get("MOTO_ENDPOINT"):
        yield os.environ["MOTO_ENDPOINT"]
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names (topics, groups, parameters) no other test uses: '<prefix>-<test>-<random>'."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make
