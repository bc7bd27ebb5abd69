"""The local services are the real thing: Apache Kafka over its wire protocol, moto over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import boto3
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support import create_topic, read_topic


def _produce(bootstrap: str, topic: str, records: list[tuple[str, bytes, dict[str, bytes]]], **extra: object) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=list(headers.items()), **extra)  # type: ignore[arg-type]
    assert producer.flush(30) == 0


def test_round_trip_keeps_key_value_and_headers(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("rt")
    create_topic(kafka_bootstrap, topic, partitions=2)
    sent = [(f"feed-{i % 2}", json.dumps({"n": i}).encode(), {"falcon.offset": str(i).encode()}) for i in range(20)]
    _produce(kafka_bootstrap, topic, sent)

    got = read_topic(kafka_bootstrap, topic, expected=20)
    assert sorted((m.key(), m.value(), dict(m.headers() or [])) for m in got) == sorted(
        (k.encode(), v, h) for k, v, h in sent
    )
    # Same key, same partition, in order.
    by_key: dict[bytes, list[int]] = {}
    for m in got:
        by_key.setdefault(m.key(), []).append(int(dict(m.headers() or [])["falcon.offset"]))
    assert all(offsets == sorted(offsets) for offsets in by_key.values())
    assert len({m.partition() for m in got if m.key() == b"feed-0"}) == 1


def _group_consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )


def _consume(consumer: Consumer, count: int, timeout: float = 30.0) -> list[int]:
    values: list[int] = []
    deadline = time.monotonic() + timeout
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(int(msg.value()))
    return values


def test_consumer_group_resumes_from_its_commit(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic, group = unique_name("grp"), unique_name("g")
    create_topic(kafka_bootstrap, topic)
    _produce(kafka_bootstrap, topic, [("k", str(i).encode(), {}) for i in range(10)])

    first = _group_consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    assert _consume(first, 4) == [0, 1, 2, 3]
    first.commit(asynchronous=False)
    first.close()

    second = _group_consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    assert _consume(second, 6) == [4, 5, 6, 7, 8, 9]
    second.close()


def test_offsets_for_times_and_committed_reset(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic, group = unique_name("oft"), unique_name("g")
    create_topic(kafka_bootstrap, topic)
    base = int(time.time() * 1000) - 60_000
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, value=str(i).encode(), timestamp=base + i * 1000)
    assert producer.flush(30) == 0

    consumer = _group_consumer(kafka_bootstrap, group)
    found = consumer.offsets_for_times([TopicPartition(topic, 0, base + 6500)], timeout=10)
    assert found[0].offset == 7  # first record at or after the time

    consumer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    assert consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 7
    consumer.subscribe([topic])
    assert _consume(consumer, 3) == [7, 8, 9]
    consumer.close()


def test_ssm_and_secrets_manager_through_boto3(moto_endpoint: str, unique_name: Callable[[str], str]) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=moto_endpoint)
    name = unique_name("param")
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=name)
    ssm.put_parameter(Name=name, Value='{"0": 42}', Type="String", Overwrite=True)
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == '{"0": 42}'

    secrets = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_endpoint)
    arn = secrets.create_secret(Name=unique_name("falcon"), SecretString='{"client_id": "a", "client_secret": "b"}')[
        "ARN"
    ]
    assert json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])["client_secret"] == "b"
