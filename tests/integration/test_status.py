"""`falcon-lake status` against a known state: offsets, lag in events and time, SSM in moto, DLQ depth, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from falcon_lake.dead_letter import dlq_headers
from falcon_lake.ops import status
from falcon_lake.partitioner import partition_for
from tests.processes import FALCON_LAKE, ROOT
from tests.support import create_topic, free_port, wait_for

Cli = Callable[..., tuple[int, str, str]]
AGE_S = 300  # partition 0's record 2 (the oldest undelivered) is this old, give or take


@dataclass(frozen=True)
class Scene:
    bootstrap: str
    topic: str
    dlq_topic: str
    group: str
    parameter: str
    oldest_ms: int
    env: dict[str, str]


def commit(scene: Scene, offsets: Mapping[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": scene.bootstrap, "group.id": scene.group})
    try:
        consumer.commit(offsets=[TopicPartition(scene.topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


@pytest.fixture
def scene(
    kafka_bootstrap: str, moto_endpoint: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Scene:
    """Partition 0: 6 records, 2 committed; partition 1: 4 records, all committed; 3 dead letters;
    SSM offsets in the old gateway's format; the group has no member."""
    topic, group = unique_name("status"), unique_name("publisher")
    dlq_topic = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic, partitions=2)
    create_topic(kafka_bootstrap, dlq_topic, partitions=2)
    now = int(time.time() * 1000)
    oldest = now - AGE_S * 1000
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(6):
        producer.produce(topic, value=b"{}", partition=0, timestamp=oldest + (i - 2) * 10_000)
    for _ in range(4):
        producer.produce(topic, value=b"{}", partition=1)
    for i in range(3):
        headers = dlq_headers("deliver", "InvalidData", f"bad {i}", original=[("falcon.feed", b"0")])
        producer.produce(dlq_topic, value=b"{}", partition=i % 2, headers=headers)
    assert producer.flush(30) == 0

    parameter = f"/{topic}/last_seen_offsets"
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=moto_endpoint)
    ssm.put_parameter(Name=parameter, Value="{'0': 41, '7': 9}", Type="String", Overwrite=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto_endpoint)  # boto3 reads it from the process environment
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": dlq_topic,
        "KAFKA_GROUP_ID": group,
        "SSM_OFFSETS_PARAMETER": parameter,
        "SSM_REGION": "us-east-1",
    }
    result = Scene(kafka_bootstrap, topic, dlq_topic, group, parameter, oldest, env)
    commit(result, {0: 2, 1: 4})
    return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `falcon-lake status ARGS` in this process: (exit code, stdout, stderr)."""

    def run(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
        try:
            code = status.main(list(args), env)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _json(cli: Cli, env: Mapping[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli("--json", *args, env=env)
    assert err == ""
    return code, json.loads(out)


def test_json_reports_the_known_state_and_exit_3_when_stalled(scene: Scene, cli: Cli) -> None:
    code, report = _json(cli, scene.env)
    assert code == status.EXIT_STALLED == 3
    assert (report["topic"], report["group"], report["members"]) == (scene.topic, scene.group, 0)
    assert report["group_state"] == "EMPTY"
    p0, p1 = report["partitions"]
    assert (p0["partition"], p0["start"], p0["end"], p0["committed"], p0["lag"]) == (0, 0, 6, 2, 4)
    assert p0["oldest_offset"] == 2 and p0["oldest_timestamp_ms"] == scene.oldest_ms
    assert AGE_S - 1 <= p0["oldest_age_s"] <= AGE_S + 30
    assert (p1["end"], p1["committed"], p1["lag"], p1["oldest_age_s"]) == (4, 4, 0, None)
    assert report["lag"] == 4 and report["max_age_s"] == p0["oldest_age_s"]
    assert report["stalled"] is True and report["exit_code"] == 3
    # The old gateway's {'0': 41} format reads too; each feed's partition is the ingestor's.
    assert report["ssm"]["state"] == "ok" and report["ssm"]["parameter"] == scene.parameter
    assert report["ssm"]["feeds"] == [
        {"feed": "0", "ssm_offset": 41, "partition": partition_for("0", 2)},
        {"feed": "7", "ssm_offset": 9, "partition": partition_for("7", 2)},
    ]
    assert report["dlq"] == {"topic": scene.dlq_topic, "exists": True, "depth": 3, "pending_redrive": 3}


def test_table_shows_the_same_state(scene: Scene, cli: Cli) -> None:
    code, out, err = cli(env=scene.env)
    assert code == 3, err
    lines = out.splitlines()
    assert f"topic {scene.topic}, group {scene.group}: state EMPTY, 0 member(s)" in lines
    assert "PARTITION  START  END  COMMITTED  LAG  OLDEST UNDELIVERED    AGE" in lines
    row0 = next(line.split() for line in lines if line.strip().startswith("0  "))
    assert row0[:5] == ["0", "0", "6", "2", "4"] and row0[6].startswith(("4m", "5m"))
    assert "total lag: 4 events" in out
    assert any(line.split() == ["0", "41", str(partition_for("0", 2))] for line in lines)
    assert f"DLQ {scene.dlq_topic}: 3 records, 3 not redriven" in lines
    assert lines[-1].startswith("STALLED: 4 events waiting and no publisher")


def test_records_expired_before_delivery_are_flagged(scene: Scene, cli: Cli) -> None:
    admin = AdminClient({"bootstrap.servers": scene.bootstrap})
    for future in admin.delete_records([TopicPartition(scene.topic, 0, 4)]).values():
        future.result(timeout=30)  # as retention would: offsets 0..3 are gone, 2 and 3 never delivered
    code, report = _json(cli, scene.env)
    assert code == 3
    p0 = report["partitions"][0]
    assert (p0["start"], p0["committed"], p0["lag"], p0["oldest_offset"], p0["expired"]) == (4, 2, 2, 4, 2)
    _, out, _ = cli(env=scene.env)
    assert "WARNING: partition 0: 2 undelivered events expired" in out


def test_exit_0_while_a_publisher_is_in_the_group(scene: Scene, cli: Cli) -> None:
    consumer = Consumer({"bootstrap.servers": scene.bootstrap, "group.id": scene.group, "enable.auto.commit": False})
    consumer.subscribe([scene.topic])
    try:

        def assigned() -> bool:
            consumer.poll(0.2)
            return bool(consumer.assignment())

        wait_for(assigned, timeout=30, what="assignment")
        code, report = _json(cli, scene.env)
        assert code == 0
        assert (report["group_state"], report["members"], report["lag"]) == ("STABLE", 1, 4)
    finally:
        consumer.close()


def test_exit_0_when_nothing_waits_and_no_dlq_topic(scene: Scene, cli: Cli) -> None:
    commit(scene, {0: 6})
    code, out, err = cli("--dlq-topic", scene.topic + ".no-dlq", env=scene.env)
    assert code == 0, err
    assert "total lag: 0 events" in out
    assert "topic does not exist" in out
    assert out.splitlines()[-1] == "up to date, 0 publisher(s) in the group"


def test_unreachable_ssm_is_a_note_not_a_hang(scene: Scene, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, report = _json(cli, scene.env)
    assert time.monotonic() - started < 10
    assert code == 3  # the verdict is Kafka's; SSM only informs
    assert report["ssm"]["state"] == "unreachable" and "cannot reach SSM" in report["ssm"]["note"]
    assert report["partitions"][0]["lag"] == 4


def test_ssm_not_configured_or_skipped(scene: Scene, cli: Cli) -> None:
    no_region = {k: v for k, v in scene.env.items() if k != "SSM_REGION"}
    code, out, _ = cli(env=no_region)
    assert code == 3
    assert "SSM not configured: set SSM_REGION" in out
    code, report = _json(cli, scene.env, "--no-ssm")
    assert report["ssm"]["state"] == "skipped" and report["ssm"]["feeds"] == []


def test_help_documents_every_option_and_the_exit_codes(cli: Cli) -> None:
    code, out, _ = cli("--help", env={})
    assert code == 0
    for option in ("--json", "--no-ssm", "--bootstrap-servers", "--topic", "--dlq-topic", "--group", "--verbose"):
        assert option in out, option
    assert "3  stalled" in out


def test_a_bad_setting_gives_one_line_and_exit_2(cli: Cli) -> None:
    code, _, err = cli(env={"KAFKA_SECURITY": "carrier-pigeon"})
    assert code == 2
    assert err.strip() == ("falcon-lake status: KAFKA_SECURITY='carrier-pigeon' is not one of: plaintext, tls, msk-iam")


@pytest.mark.slow
def test_unreachable_kafka_gives_one_line_and_exit_1_for_every_command() -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "PYTHONUNBUFFERED": "1"}
    commands = [["status"], ["replay", "--to-earliest"], ["dlq", "list"], ["dlq", "redrive", "--execute"]]
    started = time.monotonic()
    # Side by side: each waits out the same ~10 s connection deadline.
    running = [
        subprocess.Popen(
            [*FALCON_LAKE, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    results: Iterator[tuple[str, str]] = (proc.communicate(timeout=30) for proc in running)
    for args, proc, (out, err) in zip(commands, running, results, strict=True):
        assert proc.returncode == 1, (args, out, err)
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "cannot reach Kafka at 127.0.0.1:" in err and "Connection refused" in err, err
    assert time.monotonic() - started < 15
