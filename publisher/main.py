"""`falcon-lake publish`: deliver user activity from Kafka to CloudTrail Lake, committing only after success."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, Producer

from falcon_lake.aws import aws_client
from falcon_lake.kafka_config import client_config, consumer_config, producer_config
from falcon_lake.logs import setup_logging
from falcon_lake.offset_store import SsmOffsetStore
from falcon_lake.ops_server import OpsServer
from falcon_lake.settings import PublisherSettings, SettingsError, load_publisher
from publisher.cloudtrail import ChannelHealth, CloudTrailSender
from publisher.convert import Converter
from publisher.loop import PublisherLoop, make_filter
from publisher.metrics import PublisherMetrics
from publisher.rate_limit import AdaptiveRateLimiter

log = logging.getLogger("publisher")


def build(settings: PublisherSettings, stop: threading.Event) -> tuple[PublisherLoop, PublisherMetrics]:
    """Every part of the publisher, wired from settings (raises ValueError for a bad filter)."""
    metrics = PublisherMetrics()
    event_filter = make_filter(settings)
    converter = Converter(settings.channel_arn, event_filter)
    health = ChannelHealth()
    cloudtrail = aws_client("cloudtrail-data", settings.cloudtrail_region, max_attempts=3)

    def on_request(outcome: str, seconds: float) -> None:
        metrics.requests.labels(outcome).inc()
        metrics.put_latency.observe(seconds)

    sender = CloudTrailSender(
        cloudtrail,
        settings.channel_arn,
        settings.external_id,
        settings.checksum,
        AdaptiveRateLimiter(settings.rate_limit_rps),
        health,
        on_request=on_request,
    )
    store = None
    if settings.ssm.region:
        store = SsmOffsetStore(
            aws_client("ssm", settings.ssm.region),
            settings.ssm.parameter,
            settings.ssm.write_interval_s,
            on_write=metrics.ssm_writes.inc,
        )
    consumer = Consumer(consumer_config(settings.kafka))
    dlq = Producer(producer_config(settings.kafka, **{"linger.ms": 5}))
    loop = PublisherLoop(
        settings,
        consumer,
        dlq,
        converter,
        event_filter,
        sender,
        health,
        store,
        metrics,
        stop,
        reader_config=client_config(settings.kafka),
    )
    return loop, metrics


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="falcon-lake publish",
        description=(
            "Consume the Falcon events topic as a member of the publisher group, keep user activity "
            "(FILTER_PRESET and FILTER_* rules), convert it to CloudTrail Open Audit Events and send it to "
            "CLOUDTRAIL_LAKE_CHANNEL_ARN in batches; commit Kafka offsets, then the SSM offsets, only after "
            "success. Rejected events go to KAFKA_DLQ_TOPIC with the reason. Configured by environment "
            "variables: see README.md, Configuration."
        ),
    ).parse_args(list(argv))
    environment = os.environ if env is None else env
    try:
        settings = load_publisher(environment)
    except SettingsError as exc:
        print(f"falcon-lake publish: {exc}", file=sys.stderr)
        return 2
    secrets = [s.reveal() for s in (settings.kafka.tls_key_password,) if s]
    secrets += [environment.get("AWS_SECRET_ACCESS_KEY", ""), environment.get("AWS_SESSION_TOKEN", "")]
    setup_logging(settings.ops, "publish", secrets)
    stop = threading.Event()
    try:
        loop, metrics = build(settings, stop)
    except ValueError as exc:
        print(f"falcon-lake publish: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ops = None
    if settings.ops.metrics_port:
        ops = OpsServer(
            metrics.registry, loop.ready, alive=lambda: not stop.is_set(), port=settings.ops.metrics_port
        ).start()
        log.info("metrics and health on :%d (/metrics, /healthz, /readyz)", ops.port)
    log.info(
        "publishing %s (group %s) to %s with filter %s",
        settings.kafka.topic,
        settings.kafka.group_id,
        settings.channel_arn,
        loop.filter.describe(),
    )
    try:
        return loop.run()
    finally:
        if ops is not None:
            ops.stop()
