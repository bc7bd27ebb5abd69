"""librdkafka configuration for every client falcon-lake makes: plaintext, TLS or Amazon MSK IAM.

One place decides security settings, so the ingestor, the publisher and every CLI command
connect the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from falcon_lake.settings import KafkaSettings

log = logging.getLogger(__name__)


def msk_iam_oauth_cb(
    region: str, generate: Callable[[str], tuple[str, int]] | None = None
) -> Callable[[Any], tuple[str, float]]:
    """An `oauth_cb` for SASL/OAUTHBEARER on MSK IAM.

    The signer returns the expiry in milliseconds; librdkafka wants seconds since the epoch.
    """
    if generate is None:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        generate = MSKAuthTokenProvider.generate_auth_token

    def oauth_cb(_config: Any) -> tuple[str, float]:
        token, expiry_ms = generate(region)
        return token, expiry_ms / 1000.0

    return oauth_cb


class RepeatFilter(logging.Filter):
    """Lets the same message through at most once per `every_s`: a broker outage retries
    connections every second and would otherwise flood the log."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self._every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # Drop digits so "after 0ms" and "after 1ms" count as the same message.
        key = "".join(c for c in record.getMessage() if not c.isdigit())
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self._every_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_librdkafka_log = logging.getLogger("librdkafka")
_librdkafka_log.addFilter(RepeatFilter())
log.addFilter(RepeatFilter())


def _log_error(err: KafkaError) -> None:
    # Transport errors are retried by librdkafka itself; repeats are filtered (RepeatFilter).
    log.warning("kafka: %s", err.str())


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The settings every client shares: brokers, security, error logging."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "error_cb": _log_error,
        # librdkafka's own log lines go through Python logging (and its redaction), not raw stderr.
        "logger": _librdkafka_log,
        "client.id": "falcon-lake",
    }
    if kafka.security == "tls":
        config["security.protocol"] = "SSL"
        if kafka.tls_ca_file:
            config["ssl.ca.location"] = kafka.tls_ca_file
        if kafka.tls_cert_file and kafka.tls_key_file:
            config["ssl.certificate.location"] = kafka.tls_cert_file
            config["ssl.key.location"] = kafka.tls_key_file
            if kafka.tls_key_password:
                config["ssl.key.password"] = kafka.tls_key_password.reveal()
        if kafka.tls_skip_verify:
            config["enable.ssl.certificate.verification"] = False
            config["ssl.endpoint.identification.algorithm"] = "none"
    elif kafka.security == "msk-iam":
        if not kafka.msk_region:
            raise ValueError("KAFKA_SECURITY=msk-iam needs a region: set MSK_REGION or AWS_REGION")
        config["security.protocol"] = "SASL_SSL"
        config["sasl.mechanism"] = "OAUTHBEARER"
        config["oauth_cb"] = msk_iam_oauth_cb(kafka.msk_region)
        if kafka.tls_ca_file:
            config["ssl.ca.location"] = kafka.tls_ca_file
    return config


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all, compressed; a full local queue makes produce() wait, never drop."""
    config = client_config(kafka)
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 100_000,
            "queue.buffering.max.kbytes": 65_536,
            # Never give up on a record: delivery is retried until the broker takes it.
            "message.timeout.ms": 0,
        }
    )
    config.update(overrides)
    return config


def consumer_config(kafka: KafkaSettings, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Manual offset store and commit, cooperative rebalancing, reads from the start of a new group."""
    config = client_config(kafka)
    config.update(
        {
            "group.id": group_id or kafka.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            "session.timeout.ms": 15_000,
            "max.poll.interval.ms": 300_000,
        }
    )
    config.update(overrides)
    return config


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(client_config(kafka))


def ensure_topic(admin: AdminClient, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
    """Create the topic if it does not exist; an existing topic is left as it is."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=-1, config=config or {})],
        operation_timeout=30,
        request_timeout=30,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=60)
            log.info("created topic %s with %d partitions", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
