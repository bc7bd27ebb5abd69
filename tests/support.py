"""Small helpers the test suites share: free ports, waiting, creating topics, reading a topic whole."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic

# Servers of the tests listen below Linux's ephemeral range (32768-60999 by default): a port
# from that range, once its server stops (a broker restarted by a fault test), can be taken as
# the source port of any outgoing connection of a parallel test, and the restart cannot bind.
_LISTEN_PORTS = (20000, 32000)
_PORT_CHOICE = random.Random()  # its own: test libraries may seed the global one


def free_port() -> int:
    """A loopback port nothing listens on now, outside the range the kernel picks source ports from."""
    for _ in range(200):
        port = _PORT_CHOICE.randrange(*_LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll until predicate() is truthy and return its value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=30,
    )
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0) -> list[Message]:
    """Every record of topic from the beginning: until `expected` are read, or until the
    end offsets of all partitions are reached when expected is None."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    records: list[Message] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = len(metadata.topics[topic].partitions)
        consumer.subscribe([topic])
        at_eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition() or 0)
                    if expected is None and len(at_eof) >= partitions:
                        break
                    continue
                raise KafkaException(error)
            records.append(msg)
            if expected is not None and len(records) >= expected:
                break
    finally:
        consumer.close()
    return records
