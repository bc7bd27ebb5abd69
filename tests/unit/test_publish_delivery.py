"""The publisher's pure parts: offset tracking, batch sizing, the rate limiter, and how the sender
handles every kind of PutAuditEvents answer (with a scripted client, no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.serialize import create_serializer

from publisher.batch import MAX_REQUEST_BYTES, AuditEventBatch, BatchEntry, entry_size
from publisher.cloudtrail import Abandoned, CloudTrailSender
from publisher.offset_tracker import OffsetTracker
from publisher.rate_limit import AdaptiveRateLimiter

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


# ---- offset tracker ----------------------------------------------------------------------------------


def test_commit_point_moves_only_over_a_contiguous_prefix_of_finished_records() -> None:
    tracker = OffsetTracker()
    tracker.assign(0)
    for offset, falcon in ((10, 100), (11, 101), (12, 102)):
        tracker.add(0, offset, "feed", falcon)
    tracker.finish(0, 12)
    tracker.finish(0, 11)
    assert tracker.commit_offsets() == {} and tracker.feed_offsets() == {}
    tracker.finish(0, 10)
    assert tracker.commit_offsets() == {0: 13}
    assert tracker.feed_offsets() == {"feed": 102}
    assert tracker.unfinished() == 0


def test_a_revoked_partition_forgets_its_records_and_late_results_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.assign(1)
    tracker.add(1, 5, "f", 1)
    tracker.revoke(1)
    tracker.finish(1, 5)
    assert tracker.commit_offsets() == {} and tracker.unfinished() == 0


def test_feed_offsets_take_the_highest_falcon_offset_over_partitions() -> None:
    tracker = OffsetTracker()
    for partition, falcon in ((0, 7), (1, 9)):
        tracker.assign(partition)
        tracker.add(partition, 0, "shared", falcon)
        tracker.finish(partition, 0)
    assert tracker.feed_offsets() == {"shared": 9}


# ---- batches -----------------------------------------------------------------------------------------


def _serialised_size(entries: list[BatchEntry], checksum: bool) -> int:
    """The body botocore sends for these entries."""
    model = botocore.session.get_session().get_service_model("cloudtrail-data")
    request = create_serializer("rest-json").serialize_to_request(
        {"channelArn": CHANNEL, "auditEvents": [e.as_request(checksum) for e in entries]},
        model.operation_model("PutAuditEvents"),
    )
    return len(request["body"])


@pytest.mark.parametrize("checksum", [True, False])
def test_batch_size_is_what_botocore_sends_even_with_non_ascii_data(checksum: bool) -> None:
    texts = [json.dumps({"user": "田中太郎@example.jp", "n": i, "emoji": "😀" * i, "q": '"\\'}) for i in range(20)]
    batch = AuditEventBatch(0)
    entries = [
        BatchEntry(f"id-{i}", text, 0, i, None, entry_size(f"id-{i}", text, checksum)) for i, text in enumerate(texts)
    ]
    for entry in entries:
        batch.add(entry)
    on_the_wire = _serialised_size(entries, checksum)
    assert on_the_wire <= batch.size <= on_the_wire + 2  # never under: a batch that fits, fits on the wire


def test_a_batch_closes_at_100_events_or_1_mb() -> None:
    small = BatchEntry("a", "{}", 0, 0, None, 1000)
    batch = AuditEventBatch(0)
    for _ in range(100):
        assert batch.fits(small)
        batch.add(small)
    assert batch.full() and not batch.fits(small)
    big = BatchEntry("b", "{}", 0, 0, None, MAX_REQUEST_BYTES // 2)
    batch = AuditEventBatch(0)
    batch.add(big)
    assert not batch.fits(big)


# ---- rate limiter ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_limiter_keeps_the_rate_with_a_small_burst_and_backs_off_on_throttling_then_recovers_slowly() -> None:
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100.0, burst_s=0.05, recover_s=20.0, clock=clock, sleep=clock.sleep)
    for _ in range(101):
        limiter.acquire()
    assert clock.now == pytest.approx(1.0)  # 100 per second
    clock.now += 10.0  # idle: at most the burst (5 requests) is saved, not 10 s worth
    start = clock.now
    for _ in range(105):
        limiter.acquire()
    assert clock.now - start == pytest.approx(1.0, abs=0.01)
    limiter.throttled()
    assert limiter.rate == pytest.approx(70.0)
    clock.now += 2.0
    assert limiter.rate == pytest.approx(80.0)  # recovers by time, slowly (20 s from 0 to the ceiling)
    clock.now += 10.0
    assert limiter.rate == pytest.approx(100.0)


def test_limiter_reaches_its_rate_when_requests_come_unevenly() -> None:
    """Missed slots are not lost (up to the burst): requests in clumps still get ~the full rate."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(95.0, clock=clock, sleep=clock.sleep)
    sent = 0
    while clock.now < 10.0:
        for _ in range(4):  # four senders come back together, then a gap of a request's latency
            limiter.acquire()
            sent += 1
        clock.now += 0.04
    assert sent / clock.now >= 0.95 * 95.0


def test_a_new_share_applies_at_once_unless_recovering_from_a_throttle() -> None:
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(95.0, clock=clock, sleep=clock.sleep)
    limiter.set_max_rate(30.0)
    assert limiter.rate == pytest.approx(30.0)
    limiter.set_max_rate(95.0)
    assert limiter.rate == pytest.approx(95.0)
    limiter.throttled()
    limiter.set_max_rate(50.0)
    assert limiter.rate == pytest.approx(50.0)


# ---- sender ------------------------------------------------------------------------------------------


def _error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code}!"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutAuditEvents",
    )


class ScriptedClient:
    """Answers PutAuditEvents from a script: each step is a callable of the request's ids."""

    def __init__(self, *steps: Callable[[list[str]], dict[str, Any]]) -> None:
        self.steps = list(steps)
        self.requests: list[list[str]] = []

    def put_audit_events(self, **kwargs: Any) -> dict[str, Any]:
        ids = [e["id"] for e in kwargs["auditEvents"]]
        self.requests.append(ids)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(ids)


def accept_all(ids: list[str]) -> dict[str, Any]:
    return {"successful": [{"id": i, "eventID": f"e-{i}"} for i in ids], "failed": []}


def fail(code: str, which: Callable[[str], bool]) -> Callable[[list[str]], dict[str, Any]]:
    def step(ids: list[str]) -> dict[str, Any]:
        return {
            "successful": [{"id": i, "eventID": "x"} for i in ids if not which(i)],
            "failed": [{"id": i, "errorCode": code, "errorMessage": f"{code} for {i}"} for i in ids if which(i)],
        }

    return step


def raise_(exc: Exception) -> Callable[[list[str]], dict[str, Any]]:
    def step(_ids: list[str]) -> dict[str, Any]:
        raise exc

    return step


def _batch(count: int = 5) -> AuditEventBatch:
    batch = AuditEventBatch(3)
    for i in range(count):
        batch.add(BatchEntry(f"id-{i}", "{}", 3, 100 + i, None, 50))
    return batch


def _sender(client: ScriptedClient) -> CloudTrailSender:
    return CloudTrailSender(client, CHANNEL, None, True, AdaptiveRateLimiter(1000.0), backoff_base_s=0.001)


def never() -> bool:
    return False


@pytest.mark.parametrize("code", ["Throttling", "InternalFailure"])
def test_retryable_per_event_failures_are_resent_with_the_same_ids_until_accepted(code: str) -> None:
    client = ScriptedClient(fail(code, lambda i: i in ("id-1", "id-3")), fail(code, lambda i: i == "id-3"), accept_all)
    result = _sender(client).deliver(_batch(), never)
    assert sorted(e.id for e in result.accepted) == [f"id-{i}" for i in range(5)]
    assert result.rejected == []
    assert client.requests[1:] == [["id-1", "id-3"], ["id-3"]]


def test_per_event_data_errors_are_rejected_for_the_dlq_and_the_rest_accepted() -> None:
    client = ScriptedClient(fail("InvalidData", lambda i: i == "id-2"))
    result = _sender(client).deliver(_batch(), never)
    assert [(e.id, code) for e, code, _ in result.rejected] == [("id-2", "InvalidData")]
    assert len(result.accepted) == 4 and len(client.requests) == 1


def test_an_id_the_answer_does_not_mention_is_sent_again() -> None:
    client = ScriptedClient(lambda ids: {"successful": [{"id": ids[0], "eventID": "x"}], "failed": []}, accept_all)
    result = _sender(client).deliver(_batch(3), never)
    assert len(result.accepted) == 3 and client.requests[1] == ["id-1", "id-2"]


@pytest.mark.parametrize("status", [400, 429])  # AWS answers ThrottlingException with 400; older emulators 429
def test_throttled_requests_and_lost_connections_are_retried_and_slow_the_rate(status: int) -> None:
    client = ScriptedClient(
        raise_(_error("ThrottlingException", status)),
        raise_(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
        raise_(_error("InternalFailure", 500)),
        accept_all,
    )
    sender = _sender(client)
    result = sender.deliver(_batch(), never)
    assert len(result.accepted) == 5 and result.retries == 3 and result.channel_error is None
    assert sender._limiter.rate < 1000.0


def test_an_answer_throttling_every_event_slows_the_rate_a_few_do_not() -> None:
    some = _sender(ScriptedClient(fail("Throttling", lambda i: i == "id-1"), accept_all))
    some.deliver(_batch(), never)
    assert some._limiter.rate == pytest.approx(1000.0)
    every = _sender(ScriptedClient(fail("Throttling", lambda i: True), accept_all))
    every.deliver(_batch(), never)
    assert every._limiter.rate < 1000.0


def test_a_missing_channel_ends_the_delivery_with_the_unfinished_entries_held() -> None:
    client = ScriptedClient(fail("Throttling", lambda i: i in ("id-3", "id-4")), raise_(_error("ChannelNotFound", 400)))
    result = _sender(client).deliver(_batch(), never)
    assert result.channel_error is not None and result.channel_error.startswith("ChannelNotFound")
    assert [e.id for e in result.accepted] == ["id-0", "id-1", "id-2"]
    assert result.remaining is not None and [e.id for e in result.remaining.entries] == ["id-3", "id-4"]
    assert len(client.requests) == 2, "no retry loop in the sender: the flow control probes"


def test_every_event_account_not_subscribed_is_a_channel_problem_not_a_dlq_matter() -> None:
    client = ScriptedClient(fail("AccountNotSubscribed", lambda i: True), accept_all)
    result = _sender(client).deliver(_batch(), never)
    assert result.rejected == [] and result.accepted == []
    assert result.channel_error is not None and result.remaining is not None and len(result.remaining) == 5


@pytest.mark.parametrize("code", ["IncompleteSignatureException", "UnknownOperationException", "SomethingNew"])
def test_an_unknown_or_auth_request_error_stops_rather_than_dead_lettering(code: str) -> None:
    client = ScriptedClient(raise_(_error(code, 403 if code != "SomethingNew" else 400)))
    result = _sender(client).deliver(_batch(), never)
    assert result.rejected == [] and result.channel_error is not None and code in result.channel_error


@pytest.mark.parametrize(
    ("answer", "usable"),
    [
        (fail("InvalidChecksum", lambda i: True), True),
        (raise_(_error("ChannelNotFound", 400)), False),
        (fail("AccountNotSubscribed", lambda i: True), False),
        (raise_(_error("ThrottlingException", 400)), False),
    ],
)
def test_the_probe_is_one_request_that_stores_nothing(
    answer: Callable[[list[str]], dict[str, Any]], usable: bool
) -> None:
    client = ScriptedClient(answer)
    result = _sender(client).probe()
    assert (result.channel_error is None) == usable
    assert client.requests == [["falcon-lake-channel-probe"]] and result.accepted == []


def test_a_validation_error_on_a_batch_finds_the_bad_event_one_by_one() -> None:
    def step(ids: list[str]) -> dict[str, Any]:
        if "id-4" in ids:
            raise _error("ValidationException", 400)
        return accept_all(ids)

    client = ScriptedClient(step)
    result = _sender(client).deliver(_batch(), never)
    assert [e.id for e, _, _ in result.rejected] == ["id-4"]
    assert len(result.accepted) == 4


def test_delivery_stops_when_abandoned() -> None:
    client = ScriptedClient(fail("Throttling", lambda i: True))
    with pytest.raises(Abandoned):
        _sender(client).deliver(_batch(), lambda: len(client.requests) >= 2)
