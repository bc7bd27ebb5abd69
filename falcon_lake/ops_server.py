"""The operations endpoint of each process: /metrics (Prometheus), /healthz and /readyz."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadyCheck = Callable[[], tuple[bool, str]]
log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A probe that hangs up mid-answer is routine, not a traceback in the process log.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("ops client %s went away: %s", client_address, error)
            return
        super().handle_error(request, client_address)


class OpsServer:
    """Serves metrics and health on 0.0.0.0:port (or the given host) in a daemon thread.

    /healthz answers 200 while the process loop is alive; /readyz answers 200 only when
    `ready()` says the process is doing its job (503 with the reason otherwise).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        alive: Callable[[], bool] = lambda: True,
        host: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        registry_ = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stopped\n")
                elif path == "/readyz":
                    ok, reason = ready()
                    self._send(200 if ok else 503, (reason or ("ready" if ok else "not ready")).encode() + b"\n")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the process log

        self._server = _Server((host, port), Handler)
        self.port: int = self._server.server_address[1]
        # serve_forever checks for shutdown every poll interval: the default 0.5 s would spend a tenth of
        # a short SIGTERM budget waiting for the ops thread.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ops-server", daemon=True
        )

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
