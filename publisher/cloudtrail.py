"""Delivering one AuditEventBatch to CloudTrail Lake, with every failure handled as DESIGN.md says.

- per-event Throttling / InternalFailure, throttled or 5xx requests, timeouts: re-send the
  same ids with backoff and jitter, forever, never skipping;
- per-event data errors (InvalidData, FieldTooLong, ...): rejected, for the DLQ;
- channel-level errors (ChannelNotFound, InvalidChannelARN, ChannelInsufficientPermission,
  AccountNotSubscribed, access denied, any 4xx nobody listed): end the delivery at once with
  `channel_error` and the unfinished entries in `remaining`; the flow control
  (`publisher/flow.py`) holds them and probes the channel until it works again.

Throttling is recognised by its error code (`ThrottlingException` whatever the HTTP status,
400 as AWS answers or 429; a bare 429 too) and slows the rate limiter. The client makes exactly
one attempt per call (publisher/put_client.py), so every attempt passes the limiter.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from falcon_lake.backoff import backoff_delay
from falcon_lake.settings import PublisherSettings
from publisher.batch import AuditEventBatch, BatchEntry, retry_batch
from publisher.flow import Outcome
from publisher.rate_limit import AdaptiveRateLimiter

log = logging.getLogger(__name__)

RETRYABLE_EVENT_CODES = frozenset({"Throttling", "InternalFailure"})
CHANNEL_EVENT_CODES = frozenset({"AccountNotSubscribed"})
CHANNEL_ERRORS = frozenset(
    {
        "ChannelNotFound",
        "InvalidChannelARN",
        "ChannelInsufficientPermission",
        "ChannelUnsupportedSchema",
        "AccountNotSubscribed",
        "UnsupportedOperationException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        # Not the events' fault either: a request nothing could answer (wrong endpoint, signing).
        "IncompleteSignatureException",
        "UnknownOperationException",
    }
)
# Whole-request errors that may be caused by one event of the batch: sent one by one, then DLQ.
REQUEST_DATA_ERRORS = frozenset({"ValidationException", "SerializationException"})
THROTTLING_ERRORS = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)


# The probe request: an id no event has, data missing every required field, a checksum that
# cannot match. The service answers it with a per-event failure and stores nothing.
PROBE_ID = "falcon-lake-channel-probe"
PROBE_CHECKSUM = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


class Abandoned(Exception):
    """Delivery stopped on request (partition revoked, shutdown deadline); nothing more is known."""


@dataclass
class DeliveryResult(Outcome):
    partition: int = 0
    requests: int = 0
    retries: int = 0
    request_ids: list[str] = field(default_factory=list)


class ChannelHealth:
    """Shared by the sender threads and the consumer loop: is the channel usable right now?"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_reason: str | None = None

    def down(self, reason: str) -> None:
        with self._lock:
            if self.down_reason is None:
                log.error("CloudTrail channel unusable: %s; pausing consumption and retrying slowly", reason)
            self.down_reason = reason

    def up(self) -> None:
        with self._lock:
            if self.down_reason is not None:
                log.warning("CloudTrail channel works again; resuming")
            self.down_reason = None

    @property
    def is_up(self) -> bool:
        return self.down_reason is None


@dataclass
class SenderStats:
    requests: int = 0
    retries: int = 0


class CloudTrailSender:
    """Sends batches; thread-safe (so is the client), one instance per process.

    `client` has boto3's `put_audit_events(channelArn=, auditEvents=, externalId=)`, its answer
    and its exceptions: a PutAuditEventsClient in the publisher (a boto3 client would retry
    inside the call, past the rate limiter)."""

    def __init__(
        self,
        client: Any,
        channel_arn: str,
        external_id: str | None,
        checksum: bool,
        limiter: AdaptiveRateLimiter,
        on_request: Callable[[str, float], None] | None = None,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 20.0,
    ) -> None:
        self._client = client
        self._channel_arn = channel_arn
        self._external_id = external_id
        self._checksum = checksum
        self._limiter = limiter
        self._on_request = on_request
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._rng = random.Random()

    def _pause(self, attempt: int, base: float, cap: float, abandon: Callable[[], bool]) -> None:
        delay = backoff_delay(attempt, base, cap, self._rng)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if abandon():
                raise Abandoned
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _put(self, batch: AuditEventBatch, checksum: str | None = None) -> dict[str, Any]:
        events = [entry.as_request(self._checksum) for entry in batch.entries]
        if checksum is not None:
            for event in events:
                event["eventDataChecksum"] = checksum
        kwargs: dict[str, Any] = {"channelArn": self._channel_arn, "auditEvents": events}
        if self._external_id:
            kwargs["externalId"] = self._external_id
        self._limiter.acquire()
        started = time.monotonic()
        outcome = "ok"
        try:
            response: dict[str, Any] = self._client.put_audit_events(**kwargs)
            return response
        except ClientError as exc:
            outcome = exc.response.get("Error", {}).get("Code", "ClientError")
            raise
        except BotoCoreError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self._on_request is not None:
                self._on_request(outcome, time.monotonic() - started)

    def probe(self) -> DeliveryResult:
        """One request that cannot store anything (an event without the required fields and a
        wrong checksum): `channel_error` says whether the channel is usable; a transient failure
        counts as not known to be usable."""
        probe = AuditEventBatch(-1, 1)
        probe.add(BatchEntry(PROBE_ID, "{}", -1, -1, None, 0), 0.0)
        result = DeliveryResult(partition=-1, requests=1)
        try:
            response = self._put(probe, checksum=PROBE_CHECKSUM)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in THROTTLING_ERRORS or _status(exc) == 429:
                self._limiter.throttled()
            result.channel_error = f"{code or f'HTTP {_status(exc)}'}: {str(error.get('Message', ''))[:300]}"
            return result
        except BotoCoreError as exc:
            result.channel_error = f"{type(exc).__name__}: {exc}"
            return result
        for failed in response.get("failed", []):
            if str(failed.get("errorCode", "")) in CHANNEL_EVENT_CODES:
                result.channel_error = f"{failed.get('errorCode')}: {failed.get('errorMessage', '')}"
        return result

    def deliver(self, batch: AuditEventBatch, abandon: Callable[[], bool]) -> DeliveryResult:
        """Deliver every entry: it ends accepted or rejected (for the DLQ), or, on a channel
        error, in `remaining`; or Abandoned is raised."""
        result = DeliveryResult(partition=batch.partition)
        pending = batch
        transient_attempt = 0
        while len(pending):
            if abandon():
                raise Abandoned
            result.requests += 1
            try:
                response = self._put(pending)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                message = str(error.get("Message", ""))[:300]
                status = _status(exc)
                throttled = code in THROTTLING_ERRORS or (status == 429 and not code)
                if code in CHANNEL_ERRORS:
                    return self._held(result, pending, f"{code}: {message}")
                if code == "DuplicatedAuditEventId" or (code in REQUEST_DATA_ERRORS and len(pending) > 1):
                    # Something in the batch is wrong as a whole: send the entries one by one to find it.
                    log.warning("%s on a batch of %d; re-sending entries one by one", code, len(pending))
                    for index, entry in enumerate(pending.entries):
                        single = AuditEventBatch(pending.partition, 1, pending.max_bytes)
                        single.add(entry)
                        part = self.deliver(single, abandon)
                        result.accepted += part.accepted
                        result.rejected += part.rejected
                        result.requests += part.requests
                        result.retries += part.retries
                        if part.channel_error is not None:
                            rest = retry_batch(pending, {e.id for e in pending.entries[index:]})
                            return self._held(result, rest, part.channel_error)
                    return result
                if code in REQUEST_DATA_ERRORS:
                    for entry in pending.entries:
                        result.rejected.append((entry, code, message))
                    return result
                if 400 <= status < 500 and not throttled and status != 429:
                    # An error nobody listed: not known to be the events' fault, so they are not
                    # dead-lettered; like a channel error, stop and let the probe retry slowly, loudly.
                    return self._held(result, pending, f"{code or f'HTTP {status}'}: {message}")
                if throttled or status == 429:
                    self._limiter.throttled()
                result.retries += 1
                log.warning("PutAuditEvents failed (%s %s); retrying %d events", code, status, len(pending))
                self._pause(transient_attempt, self._backoff_base_s, self._backoff_cap_s, abandon)
                transient_attempt += 1
                continue
            except BotoCoreError as exc:
                result.retries += 1
                log.warning("PutAuditEvents did not complete (%s); retrying %d events", exc, len(pending))
                self._pause(transient_attempt, self._backoff_base_s, self._backoff_cap_s, abandon)
                transient_attempt += 1
                continue

            self._limiter.succeeded()
            sent = len(pending)
            request_id = response.get("ResponseMetadata", {}).get("RequestId", "")
            result.request_ids.append(request_id)
            by_id = {entry.id: entry for entry in pending.entries}
            for ok in response.get("successful", []):
                accepted_entry = by_id.pop(str(ok.get("id")), None)
                if accepted_entry is not None:
                    result.accepted.append(accepted_entry)
            retry_ids: set[str] = set()
            channel_problem: str | None = None
            throttled_events = 0
            for failed in response.get("failed", []):
                code = str(failed.get("errorCode", ""))
                failed_entry = by_id.pop(str(failed.get("id")), None)
                if failed_entry is None:
                    continue
                if code in RETRYABLE_EVENT_CODES:
                    retry_ids.add(failed_entry.id)
                    throttled_events += code == "Throttling"
                elif code in CHANNEL_EVENT_CODES:
                    retry_ids.add(failed_entry.id)
                    channel_problem = f"{code}: {failed.get('errorMessage', '')}"
                else:
                    result.rejected.append((failed_entry, code, str(failed.get("errorMessage", ""))[:500]))
            # An id the answer does not mention is not known to be stored: send it again.
            retry_ids.update(by_id)
            pending = retry_batch(pending, retry_ids)
            if channel_problem is not None and len(pending):
                # An answer failing events AccountNotSubscribed is no sign the channel works.
                return self._held(result, pending, channel_problem)
            # Per-event Throttling on a few events (a busy partition of the service) is re-sent
            # after a pause; the rate is cut only when every event of the answer was throttled.
            if throttled_events and throttled_events == sent:
                self._limiter.throttled()
            if len(pending) < sent:
                transient_attempt = 0  # the answer accepted something: keep the pause short
            if len(pending):
                result.retries += 1
                self._pause(transient_attempt, self._backoff_base_s, self._backoff_cap_s, abandon)
                transient_attempt += 1
        return result

    @staticmethod
    def _held(result: DeliveryResult, pending: AuditEventBatch, reason: str) -> DeliveryResult:
        result.channel_error = reason
        result.remaining = pending
        return result


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def delivery_workers(settings: PublisherSettings) -> int:
    """Sender threads: enough for every request that may be in flight, within reason."""
    return min(64, max(4, settings.max_in_flight_per_partition * settings.kafka.topic_partitions))
