"""`falcon-lake ingest`: stream every Falcon event into the Kafka topic, losslessly, resuming exactly."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from falcon_lake.aws import aws_client
from falcon_lake.kafka_config import admin_client, client_config, ensure_topic, producer_config
from falcon_lake.logs import secrets_to_redact, setup_logging
from falcon_lake.offset_store import OffsetStoreError, SsmOffsetStore
from falcon_lake.ops_server import OpsServer
from falcon_lake.settings import IngestorSettings, Secret, SettingsError, drain_seconds, load_ingestor
from ingestor.falcon_api import FalconClient
from ingestor.metrics import IngestorMetrics
from ingestor.resume import PartitionCountChanged, ResumePoint, check_partition_count, resume_points
from ingestor.session import StreamSupervisor
from ingestor.sink import KafkaEventSink

log = logging.getLogger("ingestor")

SUMMARY_EVERY_S = 30.0
# librdkafka's default message.max.bytes; the producer never asks for more.
PRODUCER_MAX_BYTES = 1_000_000
# Room for the record batch's framing, so a batch the producer accepts fits the topic's max.message.bytes.
BATCH_FRAMING_BYTES = 1_024


class StartupError(RuntimeError):
    """Something the operator must fix before the ingestor can run; one line."""


def _credentials(settings: IngestorSettings) -> tuple[str, Secret]:
    falcon = settings.falcon
    if falcon.secret_arn is None:
        assert falcon.client_id is not None and falcon.client_secret is not None
        return falcon.client_id, falcon.client_secret
    client = aws_client("secretsmanager", falcon.secrets_region)
    try:
        secret = json.loads(client.get_secret_value(SecretId=falcon.secret_arn)["SecretString"])
        return str(secret[falcon.secret_client_id_key]), Secret(str(secret[falcon.secret_client_secret_key]))
    except KeyError as exc:
        raise StartupError(f"secret {falcon.secret_arn} has no key {exc}: set FALCON_SECRET_*_KEY") from None
    except Exception as exc:
        reason = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        raise StartupError(f"cannot read FALCON_SECRET_ARN {falcon.secret_arn}: {reason}") from None


class Ingestor:
    """Wires the Falcon client, the stream supervisor and the Kafka producer; owns shutdown."""

    def __init__(self, settings: IngestorSettings, client_id: str, client_secret: Secret) -> None:
        self.settings = settings
        self.metrics = IngestorMetrics()
        self.stop = threading.Event()
        self._kafka_conf = client_config(settings.kafka)
        self.producer: Producer | None = None  # made once the topics' size limits are known
        self.client = FalconClient(
            settings.falcon.base_url,
            settings.falcon.cloud,
            client_id,
            client_secret,
            settings.falcon.application_id,
            settings.falcon.member_cid,
            on_request=lambda kind, status: self.metrics.api_requests.labels(kind, str(status)).inc(),
        )
        self.ssm: SsmOffsetStore | None = None
        if settings.ssm.region:
            self.ssm = SsmOffsetStore(aws_client("ssm", settings.ssm.region), settings.ssm.parameter)
        self.partitions = 0
        self.max_message_bytes: dict[str, int] = {}
        self.producer_max_bytes = PRODUCER_MAX_BYTES
        self.ssm_offsets: dict[str, int] = {}
        self.sink: KafkaEventSink | None = None
        self.supervisor: StreamSupervisor | None = None

    def _prepare_topics(self) -> None:
        """Create the topics if needed and learn the partition count; waits while Kafka is away."""
        admin = admin_client(self.settings.kafka)
        kafka = self.settings.kafka
        while not self.stop.is_set():
            try:
                ensure_topic(admin, kafka.topic, kafka.topic_partitions)
                ensure_topic(admin, kafka.dlq_topic, 1)
                metadata = admin.list_topics(kafka.topic, timeout=30)
                described = metadata.topics.get(kafka.topic)
                # Just after creation the metadata may not list the partitions yet; 0 would break routing.
                if described is not None and described.error is None and described.partitions:
                    self.partitions = len(described.partitions)
                    self.max_message_bytes = _max_message_bytes(admin, [kafka.topic, kafka.dlq_topic])
                    return
                reason = described.error if described is not None else "not in the metadata"
                log.info("topic %s not ready yet (%s); retrying in 1s", kafka.topic, reason)
                self.stop.wait(1)
            except (KafkaException, concurrent.futures.TimeoutError) as exc:
                log.warning("Kafka at %s not usable yet (%s); retrying in 5s", kafka.bootstrap_servers, exc)
                self.stop.wait(5)

    def _make_producer(self) -> Producer:
        """Idempotent with gapless delivery, and no record or batch larger than the events topic takes.

        A record the topic would refuse is refused by produce() itself, so it goes to the DLQ in
        order; should the broker still refuse a batch (its limit lowered while running), the
        gapless guarantee turns that into a fatal error: the ingestor stops and resumes below it.
        """
        topic_limit = self.max_message_bytes.get(self.settings.kafka.topic, PRODUCER_MAX_BYTES + BATCH_FRAMING_BYTES)
        max_bytes = self.producer_max_bytes = max(1_000, min(PRODUCER_MAX_BYTES, topic_limit - BATCH_FRAMING_BYTES))
        if max_bytes < PRODUCER_MAX_BYTES:
            log.info(
                "topic %s takes records up to %d bytes (max.message.bytes): larger events go to %s",
                self.settings.kafka.topic,
                topic_limit,
                self.settings.kafka.dlq_topic,
            )
        return Producer(
            producer_config(
                self.settings.kafka,
                **{
                    "enable.gapless.guarantee": True,
                    "message.max.bytes": max_bytes,
                    "batch.size": max_bytes,
                    "queue.buffering.max.messages": self.settings.max_buffered_events,
                    "queue.buffering.max.kbytes": 32_768,
                },
            )
        )

    def _check_partition_count(self) -> None:
        """Refuse to start when the topic's partition count is not the one its records were written with."""
        while not self.stop.is_set():
            consumer = Consumer(
                {**self._kafka_conf, "group.id": "falcon-lake-ingest-resume", "enable.auto.commit": False}
            )
            try:
                check_partition_count(consumer, self.settings.kafka.topic, self.partitions)
                return
            except PartitionCountChanged as exc:
                raise StartupError(str(exc)) from None
            except KafkaException as exc:
                log.warning(
                    "cannot read the newest records of %s yet (%s); retrying in 2s", self.settings.kafka.topic, exc
                )
                self.stop.wait(2)
            finally:
                consumer.close()

    def _read_ssm(self) -> None:
        if self.ssm is None:
            log.info("no SSM region configured: resuming from Kafka alone")
            return
        try:
            self.ssm_offsets = self.ssm.read()
        except OffsetStoreError as exc:
            # An unreadable value would silently re-ingest from the start: refuse instead.
            raise StartupError(str(exc)) from None
        log.info("SSM %s holds %s", self.settings.ssm.parameter, self.ssm_offsets or "nothing yet")

    def _resume(self, feeds: list[str]) -> dict[str, ResumePoint]:
        consumer = Consumer({**self._kafka_conf, "group.id": "falcon-lake-ingest-resume", "enable.auto.commit": False})
        try:
            return resume_points(
                consumer,
                self.settings.kafka.topic,
                self.partitions,
                feeds,
                self.ssm_offsets,
                self.settings.falcon.events_start,
            )
        finally:
            consumer.close()

    def ready(self) -> tuple[bool, str]:
        if self.supervisor is None or not self.supervisor.connected:
            return False, "not connected to Falcon"
        return True, "streaming"

    def run(self) -> int:
        self._read_ssm()
        self._prepare_topics()
        if self.stop.is_set():
            return 0
        self._check_partition_count()
        if self.stop.is_set():
            return 0
        producer = self.producer = self._make_producer()
        sink = self.sink = KafkaEventSink(
            producer,
            self.settings.kafka.topic,
            self.settings.kafka.dlq_topic,
            self.partitions,
            self.metrics,
            self.stop,
        )
        # One producer writes both topics: a DLQ value is cut to fit the smaller limit, with room for the
        # dlq.* headers (reason, source, time).
        dlq_limit = self.max_message_bytes.get(self.settings.kafka.dlq_topic, PRODUCER_MAX_BYTES)
        fits = min(dlq_limit - BATCH_FRAMING_BYTES, self.producer_max_bytes) - 4 * BATCH_FRAMING_BYTES
        self.sink.dlq_value_limit = max(500, min(self.sink.dlq_value_limit, fits))
        self.supervisor = StreamSupervisor(
            self.client, self.sink, self.metrics, self.settings.falcon.event_types, self._resume, self.stop
        )
        ops = None
        if self.settings.ops.metrics_port:
            ops = OpsServer(
                self.metrics.registry,
                self.ready,
                alive=lambda: not self.stop.is_set(),
                port=self.settings.ops.metrics_port,
            ).start()
            log.info("metrics and health on :%d (/metrics, /healthz, /readyz)", ops.port)
        log.info(
            "ingesting appId %s from %s into %s (%d partitions)",
            self.settings.falcon.application_id,
            self.client.base_url,
            self.settings.kafka.topic,
            self.partitions,
        )
        self.supervisor.start()
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while not self.stop.is_set():
            sink.poll(0.2)
            self.metrics.produce_queue.set(len(producer))
            if time.monotonic() >= next_summary:
                next_summary += SUMMARY_EVERY_S
                log.info("summary: next offsets %s, %d waiting for Kafka", self.supervisor.positions(), len(producer))
        return self._shutdown(ops)

    def _shutdown(self, ops: OpsServer | None) -> int:
        began = time.monotonic()
        deadline = began + drain_seconds(self.settings.shutdown_timeout_s)
        assert self.supervisor is not None and self.sink is not None and self.producer is not None
        log.info("stopping: closing streams and flushing Kafka (up to %.0fs)", self.settings.shutdown_timeout_s)
        self.supervisor.wake()
        self.supervisor.join(timeout=max(0.5, deadline - time.monotonic()))
        left = 0
        if self.sink.fatal is None:
            try:
                left = self.producer.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException:
                self.sink.poll(0)  # the fatal error the flush raised becomes sink.fatal
        if self.sink.fatal is not None:
            # Flushing now could deliver records queued after the failed one: a gap the restart would skip.
            dropped = self.sink.discard_unsent()
            log.error("%d records not sent after the failure; the next start reads them again from Falcon", dropped)
        self.client.close()
        if ops is not None:
            ops.stop()
        if self.supervisor.error is not None:
            return 1
        if self.sink.fatal is not None:
            return 1
        if left:
            log.warning("%d events were not yet in Kafka at exit; the next start reads them again", left)
        log.info("stopped in %.1fs; next offsets %s", time.monotonic() - began, self.supervisor.positions())
        return 0


def _max_message_bytes(admin: AdminClient, topics: list[str]) -> dict[str, int]:
    """Each topic's max.message.bytes (topics whose config cannot be read are left out)."""
    limits: dict[str, int] = {}
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic) for topic in topics])
    for resource, future in futures.items():
        try:
            entry = future.result(timeout=30).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                limits[resource.name] = int(entry.value)
        except (KafkaException, ValueError, concurrent.futures.TimeoutError) as exc:
            log.warning("cannot read max.message.bytes of topic %s (%s); assuming the default", resource.name, exc)
    return limits


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="falcon-lake ingest",
        description=(
            "Stream every event of every Falcon Event Streams feed into the Kafka topic, keyed by feed, "
            "value = the event's exact bytes, with falcon.* headers. Resumes per feed at the larger of the "
            "last offset in Kafka and the SSM offset, plus one. Configured by environment variables "
            "(FALCON_CLIENT_ID, FALCON_CLIENT_SECRET or FALCON_SECRET_ARN, FALCON_CLOUD_REGION, "
            "FALCON_APPLICATION_ID, EVENTS_START, EVENTS_TYPES, KAFKA_*, SSM_*, METRICS_PORT, LOG_*): "
            "see README.md, Configuration."
        ),
    ).parse_args(list(argv))
    environment = os.environ if env is None else env
    try:
        settings = load_ingestor(environment)
    except SettingsError as exc:
        print(f"falcon-lake ingest: {exc}", file=sys.stderr)
        return 2
    secrets = secrets_to_redact(environment, settings.falcon.client_secret, settings.kafka.tls_key_password)
    setup_logging(settings.ops, "ingest", secrets)
    try:
        client_id, client_secret = _credentials(settings)
        setup_logging(settings.ops, "ingest", [*secrets, client_secret.reveal()])
        ingestor = Ingestor(settings, client_id, client_secret)
    except (StartupError, ValueError) as exc:
        print(f"falcon-lake ingest: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        ingestor.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return ingestor.run()
    except StartupError as exc:
        print(f"falcon-lake ingest: {exc}", file=sys.stderr)
        return 2
