"""The sender threads: each delivers one batch (or probe) and hands the result back through a
queue, which the consumer loop drains on its own thread. Nothing here touches the flow control."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from publisher.cloudtrail import Abandoned, CloudTrailSender, DeliveryResult
from publisher.flow import Send

log = logging.getLogger(__name__)


@dataclass
class Completion:
    send: Send
    result: DeliveryResult | None  # None: abandoned
    error: BaseException | None = None


class Deliveries:
    def __init__(self, sender: CloudTrailSender, workers: int) -> None:
        self._sender = sender
        self._done: queue.Queue[Completion] = queue.Queue()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver")

    def submit(self, send: Send, abandon: Callable[[], bool]) -> None:
        """Deliver on a sender thread; `abandon` is asked between attempts whether to give up."""
        self._executor.submit(self._deliver, send, abandon)

    def _deliver(self, send: Send, abandon: Callable[[], bool]) -> None:
        try:
            if send.batch is None:
                result: DeliveryResult | None = self._sender.probe()
            else:
                result = self._sender.deliver(send.batch, abandon)
            error: BaseException | None = None
        except Abandoned:
            result, error = None, None
        except BaseException as exc:
            log.exception("delivery of a batch of partition %d failed unexpectedly", send.partition)
            result, error = None, exc
        self._done.put(Completion(send, result, error))

    def completed(self, timeout: float) -> list[Completion]:
        """The deliveries finished since the last call, waiting up to `timeout` for the first."""
        try:
            first = self._done.get(timeout=timeout) if timeout > 0 else self._done.get_nowait()
        except queue.Empty:
            return []
        done = [first]
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return done

    def shutdown(self) -> None:
        """Wait for the sender threads (each gives up at its next `abandon` check)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
