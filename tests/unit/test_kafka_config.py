"""Client configuration: security modes and a log that a broker outage cannot flood."""

from __future__ import annotations

import logging

import pytest

from falcon_lake.kafka_config import RepeatFilter, client_config, consumer_config, producer_config
from falcon_lake.settings import KafkaSettings, Secret


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("kafka", logging.WARNING, __file__, 1, message, None, None)


def test_repeated_connection_errors_are_logged_once_per_interval() -> None:
    repeat = RepeatFilter(every_s=30)
    lines = [
        f"127.0.0.1:9092/bootstrap: Connect failed: Connection refused (after {n}ms in state CONNECT)"
        for n in range(200)
    ]
    assert sum(repeat.filter(_record(line)) for line in lines) == 1
    assert repeat.filter(_record("a different error"))


def test_plaintext_producer_is_idempotent_and_never_drops() -> None:
    config = producer_config(KafkaSettings(bootstrap_servers="b:9092"))
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["message.timeout.ms"] == 0 and "security.protocol" not in config


def test_consumer_commits_only_by_hand_with_cooperative_rebalancing() -> None:
    config = consumer_config(KafkaSettings(), group_id="g")
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky" and config["group.id"] == "g"


def test_tls_settings() -> None:
    config = client_config(
        KafkaSettings(
            security="tls",
            tls_ca_file="/ca.pem",
            tls_cert_file="/c.pem",
            tls_key_file="/k.pem",
            tls_key_password=Secret("pw"),
        )
    )
    assert config["security.protocol"] == "SSL" and config["ssl.ca.location"] == "/ca.pem"
    assert config["ssl.key.password"] == "pw" and "enable.ssl.certificate.verification" not in config


def test_msk_iam_needs_a_region() -> None:
    with pytest.raises(ValueError, match="MSK_REGION"):
        client_config(KafkaSettings(security="msk-iam", msk_region=None))
