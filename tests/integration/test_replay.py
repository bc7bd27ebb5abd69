"""`falcon-lake replay` against the real broker: by time, to earliest, to offsets; dry run vs --execute; refusal."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from falcon_lake.ops import replay
from tests.support import create_topic, wait_for

RECORDS_PER_PARTITION = 10
Cli = Callable[..., tuple[int, str, str]]


@dataclass(frozen=True)
class Scene:
    bootstrap: str
    topic: str
    group: str
    base_ms: int  # partitions 0 and 1: record i at base_ms + i s; partition 2 is older than base_ms
    env: dict[str, str]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def committed(scene: Scene) -> dict[int, int | None]:
    consumer = Consumer({"bootstrap.servers": scene.bootstrap, "group.id": scene.group})
    try:
        tps = consumer.committed([TopicPartition(scene.topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in tps}


def commit(scene: Scene, offsets: Mapping[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": scene.bootstrap, "group.id": scene.group})
    try:
        consumer.commit(offsets=[TopicPartition(scene.topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


@pytest.fixture
def scene(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Scene:
    """3 partitions of 10 records; group committed partition 0 to its end, partition 1 to 7, nothing on 2."""
    topic, group = unique_name("replay"), unique_name("publisher")
    create_topic(kafka_bootstrap, topic, partitions=3)
    base = int(time.time() * 1000) - 100_000
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in range(3):
        start = base if partition < 2 else base - 50_000
        for i in range(RECORDS_PER_PARTITION):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition, timestamp=start + i * 1000)
    assert producer.flush(30) == 0
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic, "KAFKA_GROUP_ID": group}
    result = Scene(kafka_bootstrap, topic, group, base, env)
    commit(result, {0: 10, 1: 7})
    return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `falcon-lake replay ARGS` in this process: (exit code, stdout, stderr)."""

    def run(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
        try:
            code = replay.main(list(args), env)
        except SystemExit as exc:  # argparse: --help, bad arguments
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def table_rows(out: str) -> dict[int, list[str]]:
    """The plan table's rows by partition: [start, end, committed, new, re-sent...]."""
    rows = {}
    for line in out.splitlines():
        if re.match(r"^\s*\d+\s+\d+", line):
            cells = line.split()
            rows[int(cells[0])] = cells[1:]
    return rows


def test_since_dry_run_prints_the_plan_and_changes_nothing(scene: Scene, cli: Cli) -> None:
    code, out, err = cli("--since", _iso(scene.base_ms + 4_500), env=scene.env)
    assert code == 0, err
    assert "PARTITION  START  END  COMMITTED  NEW  RE-SENT" in out
    # Partitions 0 and 1: first record at or after the time is offset 5; partition 2 has none: its end.
    # Re-sent = committed - new, or end - new where nothing was committed.
    assert table_rows(out) == {
        0: ["0", "10", "10", "5", "5"],
        1: ["0", "10", "7", "5", "2"],
        2: ["0", "10", "-", "10", "0"],
    }
    assert "7 events re-sent in total" in out
    assert "dry run: nothing changed" in out
    assert committed(scene) == {0: 10, 1: 7, 2: None}


def test_since_execute_commits_the_new_offsets(scene: Scene, cli: Cli) -> None:
    code, out, err = cli("--since", _iso(scene.base_ms + 4_500), "--execute", env=scene.env)
    assert code == 0, err
    assert "committed:" in out
    assert committed(scene) == {0: 5, 1: 5, 2: 10}


def test_since_accepts_a_time_zone_offset(scene: Scene, cli: Cli) -> None:
    local = datetime.fromtimestamp((scene.base_ms + 2_000) / 1000).astimezone()  # the machine's zone, with offset
    code, out, err = cli("--since", local.isoformat(), "--json", env=scene.env)
    assert code == 0, err
    assert '"new": 2' in out


def test_to_earliest_goes_to_the_oldest_record_still_held(scene: Scene, cli: Cli) -> None:
    # Records 0..2 of partition 0 expire (as retention would do): its earliest is now 3.
    admin = AdminClient({"bootstrap.servers": scene.bootstrap})
    for future in admin.delete_records([TopicPartition(scene.topic, 0, 3)]).values():
        future.result(timeout=30)

    code, out, err = cli("--to-earliest", env=scene.env)
    assert code == 0, err
    assert table_rows(out) == {
        0: ["3", "10", "10", "3", "7"],
        1: ["0", "10", "7", "0", "7"],
        2: ["0", "10", "-", "0", "10"],
    }
    assert committed(scene) == {0: 10, 1: 7, 2: None}

    code, _, err = cli("--to-earliest", "--execute", env=scene.env)
    assert code == 0, err
    assert committed(scene) == {0: 3, 1: 0, 2: 0}


def test_to_offset_moves_only_the_named_partitions(scene: Scene, cli: Cli) -> None:
    code, out, err = cli("--to-offset", "1:2", "--to-offset", "2:9", env=scene.env)
    assert code == 0, err
    assert table_rows(out) == {1: ["0", "10", "7", "2", "5"], 2: ["0", "10", "-", "9", "1"]}
    assert committed(scene) == {0: 10, 1: 7, 2: None}

    # Command-line overrides win over the environment.
    env = {**scene.env, "KAFKA_TOPIC": "not-this-topic", "KAFKA_GROUP_ID": "not-this-group"}
    code, _, err = cli(
        "--to-offset", "1:2", "--to-offset", "2:9", "--topic", scene.topic, "--group", scene.group, "--execute", env=env
    )
    assert code == 0, err
    assert committed(scene) == {0: 10, 1: 2, 2: 9}


def test_moving_forward_shows_what_is_skipped(scene: Scene, cli: Cli) -> None:
    code, out, err = cli("--to-offset", "1:9", env=scene.env)
    assert code == 0, err
    assert table_rows(out) == {1: ["0", "10", "7", "9", "skips", "2"]}
    assert "2 events skipped in total" in out


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--to-offset", "7:1"], "--to-offset 7:1"),
        (["--to-offset", "1:11"], "--to-offset 1:11"),
        (["--to-offset", "1"], "--to-offset"),
        (["--to-offset", "a:b"], "--to-offset"),
        (["--since", "yesterday"], "--since"),
        (["--since", "2024-13-45"], "--since"),
        ([], "--since --to-earliest --to-offset"),
        (["--to-earliest", "--since", "2024-05-01T00:00:00Z"], "--since"),
        (["--to-earliest", "--bogus"], "--bogus"),
    ],
)
def test_a_bad_argument_gives_one_line_and_exit_2(scene: Scene, cli: Cli, args: list[str], names: str) -> None:
    code, _, err = cli(*args, env=scene.env)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and names in err, err
    assert err.startswith("falcon-lake replay: ")
    assert committed(scene) == {0: 10, 1: 7, 2: None}


def test_a_missing_topic_gives_one_line_and_exit_1(scene: Scene, cli: Cli) -> None:
    code, _, err = cli("--to-earliest", "--topic", scene.topic + "-missing", env=scene.env)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err


@pytest.fixture
def active_member(scene: Scene) -> Iterator[Consumer]:
    """A publisher-like consumer, subscribed and holding its partitions."""
    consumer = Consumer(
        {
            "bootstrap.servers": scene.bootstrap,
            "group.id": scene.group,
            "enable.auto.commit": False,
            "session.timeout.ms": 10_000,
        }
    )
    consumer.subscribe([scene.topic])

    def assigned() -> bool:
        consumer.poll(0.2)
        return bool(consumer.assignment())

    wait_for(assigned, timeout=30, what="the consumer's assignment")
    try:
        yield consumer
    finally:
        consumer.close()


def test_refuses_while_the_group_has_an_active_member(scene: Scene, cli: Cli, active_member: Consumer) -> None:
    for args in (["--to-earliest", "--execute"], ["--to-earliest"], ["--to-offset", "1:0", "--execute"]):
        code, out, err = cli(*args, env=scene.env)
        assert code == 1
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "1 active member" in err and "stop every publisher" in err
    assert committed(scene) == {0: 10, 1: 7, 2: None}

    active_member.close()  # the publisher stops: now the reset goes through
    code, _, err = cli("--to-earliest", "--execute", env=scene.env)
    assert code == 0, err
    assert committed(scene) == {0: 0, 1: 0, 2: 0}


def test_help_documents_every_option(cli: Cli) -> None:
    code, out, _ = cli("--help", env={})
    assert code == 0
    for option in (
        "--since",
        "--to-earliest",
        "--to-offset",
        "--execute",
        "--json",
        "--bootstrap-servers",
        "--topic",
        "--group",
        "--verbose",
    ):
        assert option in out, option
    assert "exit codes" in out
