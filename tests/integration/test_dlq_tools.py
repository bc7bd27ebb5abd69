"""`falcon-lake dlq list|redrive` against the real broker, and the redrive bookkeeping on its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from falcon_lake.dead_letter import dlq_headers
from falcon_lake.ops import dlq, redrive_mark
from falcon_lake.ops.command import Watermarks
from falcon_lake.partitioner import partition_for
from tests.support import create_topic, wait_for

Cli = Callable[..., tuple[int, str, str]]

# (stage, code, message, feed, falcon offset): three "too long", two InvalidData, one undecodable line.
DEAD = [
    ("deliver", "FieldTooLong", "eventData field userIdentity.principalId is too long", "0", 100),
    ("convert", "InvalidData", "UTCTimestamp is not a number", "1", 200),
    ("deliver", "FieldTooLong", "additionalEventData Too Long (29000 bytes)", "2", 300),
    ("ingest", "undecodable", "line is not JSON", "0", None),
    ("deliver", "InvalidData", "recipientAccountId does not match the channel", "1", 201),
    ("deliver", "FieldTooLong", "requestParameters too long", "0", 101),
]


@dataclass(frozen=True)
class Scene:
    bootstrap: str
    topic: str
    dlq_topic: str
    env: dict[str, str]


def _value(index: int) -> bytes:
    return json.dumps({"metadata": {"offset": index}, "event": {"n": index}}).encode()


def _original_headers(feed: str, offset: int | None) -> list[tuple[str, bytes]]:
    headers = [("falcon.feed", feed.encode())]
    if offset is not None:
        headers += [
            ("falcon.offset", str(offset).encode()),
            ("falcon.event_type", b"AuthActivityAuditEvent"),
            ("falcon.cid", b"0123456789abcdef0123456789abcdef"),
            ("falcon.created_ms", b"1732608000123"),
        ]
    return headers


def read_topic(bootstrap: str, topic: str) -> list[Message]:
    """Every record of the topic (assigned, not subscribed: no group rebalance to wait for)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-tools-reader", "enable.auto.commit": False})
    try:
        partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        total = 0
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        records: list[Message] = []

        def all_read() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                records.append(msg)
            return len(records) >= total

        wait_for(all_read, timeout=30, interval=0, what=f"{total} records of {topic}")
        return records
    finally:
        consumer.close()


@pytest.fixture
def scene(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Scene:
    topic = unique_name("events")
    dlq_topic = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic, partitions=3)
    create_topic(kafka_bootstrap, dlq_topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, (stage, code, message, feed, offset) in enumerate(DEAD):
        headers = dlq_headers(
            stage,
            code,
            message,
            original=[*_original_headers(feed, offset), ("other.header", b"dropped too")],
            source_topic=topic if stage != "ingest" else None,
            source_partition=partition_for(feed, 3) if stage != "ingest" else None,
            source_offset=10 + i if stage != "ingest" else None,
            last_good_offset=99 if stage == "ingest" else None,
            now=1_732_608_000 + i,
        )
        producer.produce(dlq_topic, key=feed.encode(), value=_value(i), partition=i % 2, headers=headers)
    assert producer.flush(30) == 0
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": dlq_topic,
        "KAFKA_GROUP_ID": unique_name("publisher"),
    }
    return Scene(kafka_bootstrap, topic, dlq_topic, env)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `falcon-lake dlq ARGS` in this process: (exit code, stdout, stderr)."""

    def run(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
        try:
            code = dlq.main(list(args), env)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _dlq_position(index: int) -> str:
    """Where DEAD[index] sits in the DLQ: partition index % 2, in order within it."""
    return f"{index % 2}:{index // 2}"


# ---- list -----------------------------------------------------------------------------------------


def test_list_shows_one_row_per_record(scene: Scene, cli: Cli) -> None:
    code, out, err = cli("list", env=scene.env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["DLQ", "TIME", "STAGE", "CODE", "MESSAGE", "SOURCE", "FEED:OFFSET", "REDRIVEN"]
    rows = lines[1:-1]
    assert len(rows) == len(DEAD)
    first = rows[0]  # DEAD[0], at 0:0
    assert first.startswith("0:0  2024-11-26T08:00:00Z  deliver  FieldTooLong  eventData field userIdentity")
    assert f"{scene.topic}[{partition_for('0', 3)}]@10" in first and "0:100" in first and first.endswith("no")
    long_message = next(r for r in rows if "additionalEventData" in r)
    assert "additionalEventData Too Long (29000 bytes)" in long_message
    ingest = next(r for r in rows if "undecodable" in r)
    assert ingest.startswith(_dlq_position(3)) and "line is not JSON" in ingest
    assert lines[-1] == f"6 shown; {scene.dlq_topic} holds 6 records, 6 not redriven"


def test_list_truncates_long_messages_in_the_table_but_not_in_json(scene: Scene, cli: Cli) -> None:
    producer = Producer({"bootstrap.servers": scene.bootstrap})
    message = "x" * 500
    producer.produce(scene.dlq_topic, value=b"{}", partition=0, headers=dlq_headers("deliver", "InvalidData", message))
    assert producer.flush(30) == 0
    _, out, _ = cli("list", "--code", "invaliddata", env=scene.env)
    row = next(line for line in out.splitlines() if "xxx" in line)
    assert ("x" * 57 + "...") in row and "x" * 61 not in row
    _, out, _ = cli("list", "--json", "--code", "InvalidData", env=scene.env)
    records = [json.loads(line) for line in out.splitlines()]
    assert message in [r["error_message"] for r in records]


def test_list_json_limit_and_filters(scene: Scene, cli: Cli) -> None:
    code, out, _ = cli("list", "--json", env=scene.env)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 6
    first = next(r for r in records if r["dlq_partition"] == 0 and r["dlq_offset"] == 0)
    assert first == {
        "dlq_partition": 0,
        "dlq_offset": 0,
        "time": "2024-11-26T08:00:00Z",
        "stage": "deliver",
        "error_code": "FieldTooLong",
        "error_message": "eventData field userIdentity.principalId is too long",
        "source_topic": scene.topic,
        "source_partition": partition_for("0", 3),
        "source_offset": 10,
        "feed": "0",
        "falcon_offset": 100,
        "last_good_offset": None,
        "value_bytes": len(_value(0)),
        "redriven": False,
    }

    code, out, _ = cli("list", "--limit", "2", env=scene.env)
    assert code == 0
    assert len(out.splitlines()) == 1 + 2 + 1
    assert "more match: raise --limit (now 2)" in out

    _, out, _ = cli("list", "--json", "--reason", "TOO LONG", env=scene.env)
    assert sorted(json.loads(line)["falcon_offset"] for line in out.splitlines()) == [100, 101, 300]
    _, out, _ = cli("list", "--json", "--code", "InvalidData", "--reason", "recipient", env=scene.env)
    assert [json.loads(line)["falcon_offset"] for line in out.splitlines()] == [201]


# ---- redrive --------------------------------------------------------------------------------------


def test_redrive_round_trip(scene: Scene, cli: Cli) -> None:
    too_long = [i for i, dead in enumerate(DEAD) if "too long" in dead[2].lower()]

    # Dry run: says what would go, sends nothing.
    code, out, err = cli("redrive", "--reason", "too long", env=scene.env)
    assert code == 0, err
    assert sorted(line.split()[0] for line in out.splitlines()[1:-1]) == sorted(_dlq_position(i) for i in too_long)
    assert out.splitlines()[-1].startswith(
        f"dry run: would re-send 3 of 6 records not yet redriven from {scene.dlq_topic}"
    )
    code, out, err = cli("redrive", "--reason", "too long", "--json", env=scene.env)
    assert code == 0 and err.startswith("dry run: would re-send 3")
    assert sorted(json.loads(line)["falcon_offset"] for line in out.splitlines()) == [100, 101, 300]
    assert read_topic(scene.bootstrap, scene.topic) == []

    # Execute: exactly the matching values, with their falcon.* headers and where they came from.
    code, out, err = cli("redrive", "--reason", "too long", "--execute", env=scene.env)
    assert code == 0, err
    assert out.splitlines()[-1] == f"re-sent 3 of 6 records not yet redriven from {scene.dlq_topic} to {scene.topic}"
    got = read_topic(scene.bootstrap, scene.topic)
    assert sorted(m.value() or b"" for m in got) == sorted(_value(i) for i in too_long)
    for msg in got:
        index = next(i for i in too_long if _value(i) == msg.value())
        feed, offset = DEAD[index][3], DEAD[index][4]
        assert msg.key() == feed.encode()
        assert msg.partition() == partition_for(feed, 3)  # the ingestor's partition for the feed
        assert msg.headers() == [
            *_original_headers(feed, offset),
            ("falcon.partitions", b"3"),  # the count the redrive chose the partition with
            ("falcon.redriven_from", _dlq_position(index).encode()),
        ]

    # A second redrive with the same filter re-sends nothing.
    code, out, err = cli("redrive", "--reason", "too long", "--execute", env=scene.env)
    assert code == 0, err
    assert out.splitlines()[-1] == f"re-sent 0 of 3 records not yet redriven from {scene.dlq_topic} to {scene.topic}"
    assert len(read_topic(scene.bootstrap, scene.topic)) == 3

    # What the filter left out is still there for a later redrive; list marks what went.
    _, out, _ = cli("list", "--json", env=scene.env)
    assert sorted(json.loads(line)["redriven"] for line in out.splitlines()) == [False] * 3 + [True] * 3
    code, out, _ = cli("redrive", "--code", "InvalidData", "--execute", env=scene.env)
    assert code == 0 and "re-sent 2 of 3" in out
    code, out, _ = cli("redrive", "--execute", env=scene.env)
    assert code == 0 and "re-sent 1 of 1" in out
    code, out, _ = cli("redrive", "--execute", env=scene.env)
    assert code == 0 and "re-sent 0 of 0" in out
    got = read_topic(scene.bootstrap, scene.topic)
    assert sorted(m.value() or b"" for m in got) == sorted(_value(i) for i in range(len(DEAD)))
    undecodable = next(m for m in got if m.value() == _value(3))
    assert undecodable.headers() == [
        ("falcon.feed", b"0"),
        ("falcon.partitions", b"3"),
        ("falcon.redriven_from", _dlq_position(3).encode()),
    ]


def test_redrive_without_a_dlq_topic_has_nothing_to_do(scene: Scene, cli: Cli) -> None:
    code, out, _ = cli("redrive", "--execute", "--dlq-topic", scene.topic + ".none", env=scene.env)
    assert code == 0 and "does not exist: nothing to redrive" in out


def test_redrive_into_a_missing_topic_fails_in_one_line(scene: Scene, cli: Cli) -> None:
    code, _, err = cli(
        "redrive", "--execute", "--topic", scene.topic + ".none", "--dlq-topic", scene.dlq_topic, env=scene.env
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([], "ACTION"),
        (["relist"], "relist"),
        (["list", "--limit", "0"], "--limit"),
        (["list", "--limit", "many"], "--limit"),
        (["redrive", "--reason", " "], "--reason"),
        (["redrive", "--code"], "--code"),
    ],
)
def test_a_bad_argument_gives_one_line_and_exit_2(scene: Scene, cli: Cli, args: list[str], names: str) -> None:
    code, _, err = cli(*args, env=scene.env)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and names in err, err


def test_help_documents_every_option(cli: Cli) -> None:
    common = ("--bootstrap-servers", "--topic", "--dlq-topic", "--group", "--verbose")
    for action, options in (
        ("list", ("--limit", "--json", "--reason", "--code")),
        ("redrive", ("--reason", "--code", "--execute", "--json")),
    ):
        code, out, _ = cli(action, "--help", env={})
        assert code == 0
        for option in (*options, *common):
            assert option in out, (action, option)
    code, out, _ = cli("--help", env={})
    assert code == 0 and "list" in out and "redrive" in out


# ---- the bookkeeping, without a broker ------------------------------------------------------------


def test_redrive_mark_remembers_gaps_and_advances_over_contiguous_runs() -> None:
    marks = Watermarks(0, 10)
    mark, given_up = redrive_mark.RedriveMark().advanced([0, 1, 3, 4, 7], marks)
    assert (mark.next_offset, mark.done, given_up) == (2, ((3, 4), (7, 7)), 0)
    assert [o for o in range(10) if not mark.is_done(o)] == [2, 5, 6, 8, 9]
    assert mark.pending(marks) == 5

    again, _ = mark.advanced([2, 5, 6], marks)
    assert (again.next_offset, again.done) == (8, ())

    # Round trip through the commit's metadata.
    restored = redrive_mark.RedriveMark.from_commit(TopicPartition("t", 0, mark.next_offset, mark.metadata()))
    assert restored == mark


def test_redrive_mark_tolerates_expired_records_and_bad_metadata() -> None:
    mark, _ = redrive_mark.RedriveMark(2, ((5, 6),)).advanced([], Watermarks(5, 10))  # 0..4 expired
    assert (mark.next_offset, mark.done) == (7, ())
    assert redrive_mark.RedriveMark(0, ((3, 4),)).pending(Watermarks(0, 4)) == 3
    junk = redrive_mark.RedriveMark.from_commit(TopicPartition("t", 0, 4, "written by someone else"))
    assert (junk.next_offset, junk.done) == (4, ())
    assert redrive_mark.RedriveMark.from_commit(TopicPartition("t", 0, -1001)) == redrive_mark.RedriveMark()


def test_redrive_mark_fits_kafkas_metadata_limit() -> None:
    every_other = list(range(1, 20_000, 2))  # the worst case: a gap between every redriven record
    mark, given_up = redrive_mark.RedriveMark().advanced(every_other, Watermarks(0, 20_000))
    assert len(mark.metadata()) <= redrive_mark.METADATA_LIMIT
    assert given_up > 0 and mark.next_offset > 0
    assert all(mark.is_done(o) for o in every_other)  # nothing redriven is ever sent again


def test_redrive_headers_keep_falcon_headers_only() -> None:
    headers = [
        ("falcon.feed", b"3"),
        ("dlq.stage", b"deliver"),
        ("falcon.redriven_from", b"0:1"),
        ("falcon.offset", b"9"),
    ]
    assert dlq.redrive_headers(headers, 1, 42) == [
        ("falcon.feed", b"3"),
        ("falcon.offset", b"9"),
        ("falcon.redriven_from", b"1:42"),
    ]
