"""Our HTTP servers (both emulators, each process's ops endpoint) take a client that drops its
connection mid-request as routine: no traceback on stderr, and the next client is served."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client import CollectorRegistry

from emulators.cloudtrail import CloudTrailEmulator, CloudTrailEmulatorConfig
from emulators.falcon import FalconEmulator, FalconEmulatorConfig
from falcon_lake.ops_server import OpsServer

Start = Callable[[], AbstractContextManager[CloudTrailEmulator] | AbstractContextManager[FalconEmulator]]
EMULATORS: dict[str, Start] = {
    "falcon": lambda: FalconEmulator(FalconEmulatorConfig(port=0, hold_seconds=0.0)),
    "cloudtrail": lambda: CloudTrailEmulator(CloudTrailEmulatorConfig(port=0)),
}


@pytest.fixture(params=sorted(EMULATORS))
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    with EMULATORS[request.param]() as emulator:
        yield emulator.url


def _reset_mid_request(url: str) -> None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        # Linger 0: close() sends a reset instead of a FIN, as a killed client's kernel does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_client_reset_mid_request_prints_no_traceback(url: str, capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(5):
        _reset_mid_request(url)
    assert requests.get(f"{url}/_emulator/stats", timeout=5).status_code == 200  # still serving
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request" not in err and "Traceback" not in err, err


def test_the_ops_endpoint_takes_a_probe_reset_mid_request_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    server = OpsServer(CollectorRegistry(), lambda: (True, ""), host="127.0.0.1", port=0).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        for _ in range(5):
            _reset_mid_request(url)
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request" not in err and "Traceback" not in err, err
