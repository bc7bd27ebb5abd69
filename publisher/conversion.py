"""Conversion off the consumer thread: Converter.convert over chunks of records, in a worker process.

Conversion costs about as much CPU as everything else the publisher does together; done in
the consumer thread it limited the drain rate, as that thread also feeds the senders and
shares the GIL with them. One worker process converts well beyond the 10,000 events/s
CloudTrail's quota allows. Results come back in the order the records were read.

The worker is fed through two pipes (chunks in, results out) with no thread on either side:
a ProcessPoolExecutor's feeder and manager threads cost the publisher more CPU per record
than the pickling itself. Neither side ever blocks on the other: the consumer thread sends
a chunk only while the chunks the worker has not answered fit in the request pipe, and it
reads every answer that is ready on each turn of its loop (`poll`).
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import pickle
import signal
import time
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from falcon_lake.settings import FilterSettings, PublisherSettings
from publisher.batch import entry_size
from publisher.convert import AuditEvent, Converter
from publisher.filter import EventFilter, Filtered

# What conversion hands back per record, small and cheap to pickle:
# (AUDIT_EVENT, id, event_data, request bytes) | (FILTERED, rule, detail, 0) | (REJECTED, code, message, 0)
AUDIT_EVENT, FILTERED, REJECTED = 0, 1, 2
Converted = tuple[int, str, str, int]


def convert_chunk(converter: Converter, checksum: bool, items: list[tuple[bytes, str]]) -> list[Converted]:
    """Convert (raw bytes, feed) pairs, in order; never raises (Converter.convert does not)."""
    results: list[Converted] = []
    for raw, feed in items:
        outcome = converter.convert(raw, feed)
        if isinstance(outcome, AuditEvent):
            size = entry_size(outcome.id, outcome.event_data, checksum)
            results.append((AUDIT_EVENT, outcome.id, outcome.event_data, size))
        elif isinstance(outcome, Filtered):
            results.append((FILTERED, outcome.rule, outcome.detail, 0))
        else:
            results.append((REJECTED, outcome.code, outcome.message, 0))
    return results


PIPE_BYTES = 1 << 20  # asked for; the kernel may grant less (fs.pipe-max-size)
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
LIVENESS_CHECK_S = 0.5


class ConversionWorkerDied(RuntimeError):
    """The worker process is gone; nothing converts any more."""


def _worker_main(
    requests: Connection, results: Connection, channel_arn: str, filter_settings: FilterSettings, checksum: bool
) -> None:
    # The parent decides when the worker stops (it closes the request pipe); Ctrl-C reaches the
    # whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    converter = Converter(channel_arn, EventFilter.from_settings(filter_settings))
    while True:
        try:
            items = pickle.loads(requests.recv_bytes())
        except EOFError:
            return
        results.send_bytes(pickle.dumps(convert_chunk(converter, checksum, items), pickle.HIGHEST_PROTOCOL))


def _pipe(context: Any) -> tuple[Connection, Connection, int]:
    """A one-way pipe (read end, write end) as large as the kernel grants, and its capacity."""
    reader, writer = context.Pipe(duplex=False)
    with contextlib.suppress(OSError):
        fcntl.fcntl(writer.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        capacity = fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ)
    except OSError:
        capacity = 64 * 1024
    return reader, writer, capacity


class Conversions:
    """Converter.convert over chunks of records, in a worker process or inline.

    `submit` returns a Future per chunk; in worker mode it completes during a later `poll`
    (the consumer loop calls it every turn), in consume order. `processes=0` converts inline
    (one CPU, unit tests). A worker that dies fails every outstanding and later Future with
    ConversionWorkerDied.
    """

    def __init__(self, settings: PublisherSettings, converter: Converter, processes: int) -> None:
        self._converter = converter
        self._checksum = settings.checksum
        self._process: Any = None
        self._waiting: deque[tuple[bytes, Future[list[Converted]]]] = deque()  # not sent yet
        self._answers: deque[tuple[int, Future[list[Converted]]]] = deque()  # sent: (bytes, future)
        self._unanswered_bytes = 0
        self._dead: str | None = None
        self._next_check = 0.0
        if processes > 0:
            context = multiprocessing.get_context("spawn")  # never fork a process with librdkafka threads
            request_reader, self._requests, self._capacity = _pipe(context)
            self._results, result_writer, _ = _pipe(context)
            self._process = context.Process(
                target=_worker_main,
                args=(request_reader, result_writer, settings.channel_arn, settings.filter, settings.checksum),
                name="falcon-lake-convert",
                daemon=True,
            )
            self._process.start()
            request_reader.close()
            result_writer.close()
            started = self.submit([])  # start it now; fail at start
            deadline = time.monotonic() + START_TIMEOUT_S
            while not started.done() and time.monotonic() < deadline:
                self.poll(timeout=0.1)
            started.result(timeout=0)

    @staticmethod
    def default_processes() -> int:
        """One worker process where there is a second CPU, else inline."""
        return 1 if len(os.sched_getaffinity(0)) >= 2 else 0

    def submit(self, items: list[tuple[bytes, str]]) -> Future[list[Converted]]:
        future: Future[list[Converted]] = Future()
        if self._process is None:
            future.set_result(convert_chunk(self._converter, self._checksum, items))
            return future
        if self._dead is not None:
            future.set_exception(ConversionWorkerDied(self._dead))
            return future
        self._waiting.append((pickle.dumps(items, pickle.HIGHEST_PROTOCOL), future))
        self._send()
        return future

    def poll(self, timeout: float = 0.0) -> None:
        """Complete the Futures whose results have arrived (waiting up to `timeout` for the first),
        and send what waits for room in the request pipe."""
        if self._process is None or self._dead is not None:
            return
        if not self._answers and time.monotonic() >= self._next_check:
            # Idle: nothing would reveal a dead worker until the next chunk, so look now and then.
            self._next_check = time.monotonic() + LIVENESS_CHECK_S
            if not self._process.is_alive():
                self._died(f"the conversion worker process ended (exit code {self._process.exitcode})")
                return
        try:
            while self._answers and self._results.poll(timeout):
                timeout = 0.0
                results = pickle.loads(self._results.recv_bytes())
                size, future = self._answers.popleft()
                self._unanswered_bytes -= size
                future.set_result(results)
        except (EOFError, OSError) as exc:
            self._died(
                f"the conversion worker process ended ({type(exc).__name__}; exit code {self._process.exitcode})"
            )
        self._send()

    def _send(self) -> None:
        """Send waiting chunks while the unanswered ones fit in the request pipe, so the write
        never blocks (a chunk larger than the pipe goes alone, when the worker has nothing)."""
        while self._waiting and self._dead is None:
            data, future = self._waiting[0]
            if self._answers and self._unanswered_bytes + len(data) > self._capacity:
                return
            try:
                self._requests.send_bytes(data)
            except OSError as exc:
                self._died(f"the conversion worker process ended ({type(exc).__name__})")
                return
            self._waiting.popleft()
            self._answers.append((len(data), future))
            self._unanswered_bytes += len(data)

    @property
    def dead(self) -> str | None:
        """Why the worker is gone, once it is; None while it works (or when converting inline)."""
        return self._dead

    def _died(self, reason: str) -> None:
        self._dead = reason
        for _size, future in self._answers:
            future.set_exception(ConversionWorkerDied(reason))
        for _data, future in self._waiting:
            future.set_exception(ConversionWorkerDied(reason))
        self._answers.clear()
        self._waiting.clear()

    def close(self) -> None:
        """Stop the worker (outstanding chunks are dropped: their records were not finished)."""
        if self._process is None:
            return
        self._requests.close()  # the worker reads EOF and returns
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(STOP_TIMEOUT_S)
        self._results.close()
        self._process = None
