"""The HTTP server both emulators run on."""

from __future__ import annotations

import logging
import sys
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for which a client going away mid-request is routine.

    Clients close connections in the middle of an answer all the time here (an ingestor that
    reconnects, a publisher killed by a test, a stream the client stops reading): the socketserver
    default prints a traceback for each, which reads like a failure in test and demo output.
    """

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, error)
            return
        super().handle_error(request, client_address)
