"""Conversion off the consumer thread: Converter.convert over chunks of records, in a worker process.

Conversion costs about as much CPU as everything else the publisher does together; done in
the consumer thread it limited the drain rate, as that thread also feeds the senders and
shares the GIL with them. One worker process converts well beyond the 10,000 events/s
CloudTrail's quota allows. Results come back in the order the records were read.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor

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


# The converter of a conversion worker process, made once by its initializer (process-local).
_worker_converter: tuple[Converter, bool] | None = None


def _start_worker(channel_arn: str, filter_settings: FilterSettings, checksum: bool) -> None:
    global _worker_converter
    # The parent decides when the worker stops (pool shutdown); Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker_converter = (Converter(channel_arn, EventFilter.from_settings(filter_settings)), checksum)


def _convert_in_worker(items: list[tuple[bytes, str]]) -> list[Converted]:
    assert _worker_converter is not None, "conversion worker started without its initializer"
    converter, checksum = _worker_converter
    return convert_chunk(converter, checksum, items)


class Conversions:
    """Converter.convert over chunks of records, in a worker process or inline.

    Conversion costs about as much CPU as everything else the publisher does together; in
    the consumer thread it limited the drain rate, as the thread also feeds the senders and
    shares the GIL with them. One worker process converts well beyond the 10,000 events/s
    that CloudTrail's quota allows. `processes=0` converts inline (one CPU, unit tests).
    """

    def __init__(self, settings: PublisherSettings, converter: Converter, processes: int) -> None:
        self._converter = converter
        self._checksum = settings.checksum
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=processes,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a process with librdkafka threads
                initializer=_start_worker,
                initargs=(settings.channel_arn, settings.filter, settings.checksum),
            )
            self._pool.submit(_convert_in_worker, []).result(timeout=120)  # start it now; fail at start

    @staticmethod
    def default_processes() -> int:
        """One worker process where there is a second CPU, else inline."""
        return 1 if len(os.sched_getaffinity(0)) >= 2 else 0

    def submit(self, items: list[tuple[bytes, str]]) -> Future[list[Converted]]:
        if self._pool is None:
            done: Future[list[Converted]] = Future()
            done.set_result(convert_chunk(self._converter, self._checksum, items))
            return done
        return self._pool.submit(_convert_in_worker, items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
