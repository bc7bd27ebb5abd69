"""The consumer loop's shell around the flow control, with fake Kafka clients (no services)."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from falcon_lake.settings import load_publisher
from publisher.cloudtrail import ChannelHealth, CloudTrailSender
from publisher.convert import Converter
from publisher.filter import EventFilter
from publisher.group_lag import LagReading
from publisher.loop import PublisherLoop
from publisher.membership import MembershipWatch
from publisher.metrics import PublisherMetrics
from publisher.rate_limit import AdaptiveRateLimiter

CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"0"

    def topic(self) -> str:
        return "falcon.events"

    def headers(self) -> list[tuple[str, bytes]]:
        return [("falcon.feed", b"0"), ("falcon.offset", str(self._offset).encode())]


class FakeConsumer:
    def __init__(self) -> None:
        self.paused: set[int] = set()
        self.commits: list[list[TopicPartition]] = []
        self.member: str | None = None

    def memberid(self) -> str | None:
        return self.member

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.commits.append(offsets)
        return offsets

    stored: dict[int, TopicPartition] = {}

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [self.stored.get(tp.partition, TopicPartition(tp.topic, tp.partition)) for tp in partitions]


class BrokenDlq:
    """A DLQ producer whose produce() fails the way librdkafka does for a record it cannot take."""

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def make_loop(consumer: FakeConsumer, dlq: Any) -> PublisherLoop:
    settings = load_publisher({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "SSM_REGION": ""})
    event_filter = EventFilter.from_preset("gateway")
    converter = Converter(CHANNEL, event_filter)
    sender = CloudTrailSender(object(), CHANNEL, None, True, AdaptiveRateLimiter(10.0))
    return PublisherLoop(
        settings,
        consumer,  # type: ignore[arg-type]
        dlq,
        converter,
        event_filter,
        sender,
        ChannelHealth(),
        None,
        PublisherMetrics(),
        threading.Event(),
    )


def test_a_dlq_produce_error_is_fatal_and_commits_nothing_past_the_record() -> None:
    consumer = FakeConsumer()
    loop = make_loop(consumer, BrokenDlq())
    loop.on_assign(consumer, [TopicPartition("falcon.events", 0)])  # type: ignore[arg-type]
    loop._accept([FakeMessage(0, 0, b"not json at all")])  # type: ignore[list-item]
    loop._collect()
    assert loop.fatal is not None and "DLQ write" in loop.fatal and "too large" in loop.fatal.lower()
    assert loop.stop.is_set()
    assert loop.flow.commits(0.0) == {}, "the record is not finished: nothing is committed past it"


def test_assignment_resumes_what_it_assigns_and_the_channel_state_pauses_it_again() -> None:
    consumer = FakeConsumer()
    consumer.paused = {0, 1}  # librdkafka kept an old pause across unassign/assign
    loop = make_loop(consumer, BrokenDlq())
    loop.on_assign(consumer, [TopicPartition("falcon.events", 0), TopicPartition("falcon.events", 1)])  # type: ignore[arg-type]
    assert consumer.paused == set()
    loop.flow.down_reason = "ChannelNotFound"
    loop._apply_pauses()
    assert consumer.paused == {0, 1}
    loop.on_revoke(consumer, [TopicPartition("falcon.events", 1)])  # type: ignore[arg-type]
    loop.on_assign(consumer, [TopicPartition("falcon.events", 1)])  # type: ignore[arg-type]
    assert consumer.paused == {0, 1}, "still down: paused again at once"
    loop.flow.down_reason = None
    loop._apply_pauses()
    assert consumer.paused == set(), "channel back: every owned partition resumes"


def test_commit_callbacks_move_the_window_and_failures_do_not() -> None:
    consumer = FakeConsumer()
    loop = make_loop(consumer, BrokenDlq())
    loop.on_assign(consumer, [TopicPartition("falcon.events", 0)])  # type: ignore[arg-type]
    loop.flow.consumed(0, 0, "0", 1)
    loop.flow.finished(0, loop.flow.generation(0) or 0, 0)
    loop.commits.commit_async()
    assert [(tp.partition, tp.offset) for tp in consumer.commits[-1]] == [(0, 1)]
    failed = TopicPartition("falcon.events", 0, 1)
    loop.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [failed])
    assert loop.flow.commits(1e9) == {0: 1}, "not acknowledged: asked for again"
    loop.on_commit(None, [TopicPartition("falcon.events", 0, 1)])
    assert loop.flow.commits(1e9) == {}, "acknowledged: nothing left to commit"


class RecordingStore:
    """Stands in for the SSM store: what the loop hands it to write."""

    def __init__(self) -> None:
        self.advanced: list[dict[str, int]] = []

    def advance(self, feeds: dict[str, int]) -> None:
        self.advanced.append(dict(feeds))

    def flush_before_exit(self, _timeout: float) -> bool:
        return True


def test_commits_carry_their_feed_offsets_and_a_new_owner_writes_ssm_from_them() -> None:
    from falcon_lake.settings import load_filter
    from publisher.commits import commit_metadata, feeds_of

    consumer = FakeConsumer()
    loop = make_loop(consumer, BrokenDlq())
    loop.filter = EventFilter.from_settings(load_filter({"FILTER_PRESET": "all-user-activity"}))
    loop.on_assign(consumer, [TopicPartition("falcon.events", 0)])  # type: ignore[arg-type]
    # A record the event-type header filters out finishes at once; its commit names its feed.
    message = FakeMessage(0, 41, b"{}")
    message.headers = lambda: [("falcon.feed", b"7"), ("falcon.offset", b"1234"), ("falcon.event_type", b"Other")]  # type: ignore[method-assign]
    loop._accept([message])  # type: ignore[list-item]
    loop.commits.commit_async()
    (committed,) = consumer.commits[-1]
    assert committed.offset == 42 and feeds_of(committed.metadata) == {"7": 1234}

    # Another member is assigned the partition later: it reads the commit, writes SSM from it
    # and carries the feed on in its own commits.
    newcomer_consumer = FakeConsumer()
    newcomer_consumer.stored = {0: TopicPartition("falcon.events", 0, 42, metadata=commit_metadata({"7": 1234}))}
    newcomer = make_loop(newcomer_consumer, BrokenDlq())
    store = RecordingStore()
    newcomer.commits.store = store  # type: ignore[assignment]
    newcomer.on_assign(newcomer_consumer, [TopicPartition("falcon.events", 0)])  # type: ignore[arg-type]
    newcomer.commits.catch_up(0.0)
    assert store.advanced == [{"7": 1234}]
    assert newcomer.flow.tracker.partition_feeds(0) == {"7": 1234}


def test_commit_metadata_ignores_what_other_tools_wrote_and_never_exceeds_the_broker_limit() -> None:
    from publisher.commits import commit_metadata, feeds_of

    assert feeds_of(None) == {} and feeds_of("") == {} and feeds_of("not json") == {}
    assert feeds_of('{"falcon.feeds": {"1": "x", "2": true, "3": 5}}') == {"3": 5}
    assert feeds_of("[1, 2]") == {}
    assert commit_metadata({}) is None
    assert commit_metadata({f"feed-{i}": i for i in range(1000)}) is None, "over 4,000 bytes: no metadata"


class StaticLag:
    """Group readings as GroupLag's thread would hand them over."""

    def __init__(self) -> None:
        self.reading: LagReading | None = None

    def latest(self) -> LagReading | None:
        return self.reading


def test_a_member_missing_from_its_group_stops_the_loop_with_a_reason_and_one_that_is_listed_does_not() -> None:
    consumer = FakeConsumer()
    loop = make_loop(consumer, BrokenDlq())
    lag = StaticLag()
    loop.lag = lag  # type: ignore[assignment]
    loop.membership = MembershipWatch(limit_s=0.0)
    consumer.member = "falcon-lake-1"
    lag.reading = LagReading(1, set(), 3, frozenset({"falcon-lake-1", "falcon-lake-2"}))
    loop._update_share()
    lag.reading = LagReading(2, {0}, 3, frozenset({"falcon-lake-1", "falcon-lake-2"}))
    loop._update_share()
    assert loop.fatal is None, "listed without partitions: an idle member of a larger group"
    lag.reading = LagReading(3, {0}, 3, frozenset({"falcon-lake-2"}))
    loop._update_share()
    lag.reading = LagReading(4, {0}, 3, frozenset({"falcon-lake-2"}))
    loop._update_share()
    assert loop.fatal is not None and "out of consumer group" in loop.fatal and "falcon-lake-1" in loop.fatal
    assert loop.out_of_group and loop.stop.is_set()
