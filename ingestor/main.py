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

from falcon_lake.aws import aws_client
from falcon_lake.kafka_config import admin_client, client_config, ensure_topic, producer_config
from falcon_lake.logs import secrets_to_redact, setup_logging
from falcon_lake.offset_store import OffsetStoreError, SsmOffsetStore
from falcon_lake.ops_server import OpsServer
from falcon_lake.settings import IngestorSettings, Secret, SettingsError, load_ingestor
from ingestor.falcon_api import FalconClient
from ingestor.metrics import IngestorMetrics
from ingestor.resume import ResumePoint, resume_points
from ingestor.session import StreamSupervisor
from ingestor.sink import KafkaEventSink

log = logging.getLogger("ingestor")

SUMMARY_EVERY_S = 30.0


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
        self.producer = Producer(
            producer_config(
                settings.kafka,
                **{
                    "queue.buffering.max.messages": settings.max_buffered_events,
                    "queue.buffering.max.kbytes": 32_768,
                },
            )
        )
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
                    return
                reason = described.error if described is not None else "not in the metadata"
                log.info("topic %s not ready yet (%s); retrying in 1s", kafka.topic, reason)
                self.stop.wait(1)
            except (KafkaException, concurrent.futures.TimeoutError) as exc:
                log.warning("Kafka at %s not usable yet (%s); retrying in 5s", kafka.bootstrap_servers, exc)
                self.stop.wait(5)

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
        self.sink = KafkaEventSink(
            self.producer,
            self.settings.kafka.topic,
            self.settings.kafka.dlq_topic,
            self.partitions,
            self.metrics,
            self.stop,
        )
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
            self.producer.poll(0.2)
            self.metrics.produce_queue.set(len(self.producer))
            if time.monotonic() >= next_summary:
                next_summary += SUMMARY_EVERY_S
                log.info(
                    "summary: next offsets %s, %d waiting for Kafka", self.supervisor.positions(), len(self.producer)
                )
        return self._shutdown(ops)

    def _shutdown(self, ops: OpsServer | None) -> int:
        budget = self.settings.shutdown_timeout_s
        # Keep a margin inside the budget for the ops server, the signal's wait and the interpreter's exit.
        deadline = time.monotonic() + budget - min(1.0, budget / 4)
        assert self.supervisor is not None and self.sink is not None
        log.info("stopping: closing streams and flushing Kafka (up to %.0fs)", self.settings.shutdown_timeout_s)
        self.supervisor.wake()
        self.supervisor.join(timeout=max(0.5, deadline - time.monotonic()))
        left = self.producer.flush(max(0.0, deadline - time.monotonic()))
        self.client.close()
        if ops is not None:
            ops.stop()
        if self.supervisor.error is not None:
            return 1
        if self.sink.fatal is not None:
            return 1
        if left:
            log.warning("%d events were not yet in Kafka at exit; the next start reads them again", left)
        log.info("stopped; next offsets %s", self.supervisor.positions())
        return 0


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
