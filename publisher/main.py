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

import boto3
from confluent_kafka import Consumer, KafkaException, Producer

from falcon_lake.aws import aws_client
from falcon_lake.kafka_config import client_config, consumer_config, producer_config
from falcon_lake.logs import secrets_to_redact, setup_logging
from falcon_lake.offset_store import SsmOffsetStore
from falcon_lake.ops_server import OpsServer
from falcon_lake.settings import PublisherSettings, SettingsError, load_publisher
from publisher.cloudtrail import ChannelHealth, CloudTrailSender, delivery_workers
from publisher.conversion import Conversions
from publisher.convert import Converter
from publisher.filter import EventFilter
from publisher.group_lag import GroupLag
from publisher.loop import PublisherLoop
from publisher.metrics import PublisherMetrics
from publisher.put_client import PutAuditEventsClient
from publisher.rate_limit import AdaptiveRateLimiter

log = logging.getLogger("publisher")

# The consumer's fetch settings, each chosen on purpose (librdkafka's defaults suit a
# different consumer). The loop bounds what it holds by asking consume() for a budget of
# records, not by pausing, so the prefetch queue only has to keep the loop fed - and, as
# librdkafka has one queue for all partitions, it must hold every partition's records
# interleaved: the loop takes records in queue order, and a queue filled with one partition's
# megabytes starves the others (measured: partitions drained one after another at a third of
# the rate, since each partition's sends are bounded by its window).
FETCH_CONFIG: dict[str, Any] = {
    # The whole consumer queue, all partitions together (not per partition): about half a second
    # of records at CloudTrail's 10,000 events/s ceiling, and a few MB of memory.
    "queued.max.messages.kbytes": 2_048,
    # Above that queue size every fetch waits this long before it is sent again; the default
    # (1,000 ms) left the queue empty for most of a second each time the loop caught up.
    "fetch.queue.backoff.ms": 20,
    # One fetch brings at most 128 kB (a few hundred records) of each partition, so every
    # partition's records arrive interleaved in small runs instead of a partition at a time.
    "fetch.max.bytes": 1024 * 1024,
    "max.partition.fetch.bytes": 128 * 1024,
}


def cloudtrail_client(settings: PublisherSettings) -> PutAuditEventsClient:
    """PutAuditEvents for the sender threads: one attempt per call (the sender owns every retry,
    so each attempt passes its rate limiter), without botocore's per-call CPU.

    The boto3 client made here is never called: it gives the endpoint, region, HTTP session and
    error classes, configured as the SDK configures them. One pooled connection per possible
    request in flight (botocore keeps 10 by default and opens and drops a new connection for
    every request beyond that).
    """
    session = boto3.session.Session()
    client = aws_client(
        "cloudtrail-data",
        settings.cloudtrail_region,
        session=session,
        max_pool_connections=delivery_workers(settings) + 2,
    )
    return PutAuditEventsClient(client, session.get_credentials())


def _filter_variable(settings: PublisherSettings, problem: str) -> str:
    """The setting a filter problem comes from, so the one line names it."""
    if "age" in problem:
        return "FILTER_MAX_AGE_DAYS"
    if "event type" in problem and settings.filter.event_types:
        return "FILTER_EVENT_TYPES"
    return f"FILTER_PRESET={settings.filter.preset}"


def build(settings: PublisherSettings, stop: threading.Event) -> tuple[PublisherLoop, PublisherMetrics]:
    """Every part of the publisher, wired from settings (raises ValueError for a bad filter)."""
    metrics = PublisherMetrics()
    try:
        event_filter = EventFilter.from_settings(settings.filter)
    except ValueError as exc:
        raise ValueError(f"{_filter_variable(settings, str(exc))}: {exc}") from None
    converter = Converter(settings.channel_arn, event_filter)
    health = ChannelHealth()
    cloudtrail = cloudtrail_client(settings)
    # PUT_RATE_LIMIT is the whole group's; the loop sets this publisher's share as it learns it.
    limiter = AdaptiveRateLimiter(settings.rate_limit_rps)

    def on_request(outcome: str, seconds: float) -> None:
        metrics.requests.labels(outcome).inc()
        metrics.put_latency.observe(seconds)

    sender = CloudTrailSender(
        cloudtrail,
        settings.channel_arn,
        settings.external_id,
        settings.checksum,
        limiter,
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
    loops: list[PublisherLoop] = []

    def on_commit(err: Any, partitions: list[Any]) -> None:
        loops[0].on_commit(err, partitions)  # the loop exists before any commit is made

    consumer = Consumer(consumer_config(settings.kafka, None, on_commit=on_commit, **FETCH_CONFIG))
    lag = GroupLag(
        consumer_config(settings.kafka, None), settings.kafka.topic, admin_config=client_config(settings.kafka)
    )
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
        Conversions(settings, converter, Conversions.default_processes()),
        limiter=limiter,
        lag=lag,
    )
    loops.append(loop)
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
    secrets = secrets_to_redact(environment, settings.kafka.tls_key_password)
    setup_logging(settings.ops, "publish", secrets)
    stop = threading.Event()
    try:
        loop, metrics = build(settings, stop)
    except ValueError as exc:
        print(f"falcon-lake publish: {exc}", file=sys.stderr)
        return 2
    except KafkaException as exc:  # librdkafka refused the client configuration (e.g. a TLS file)
        print(f"falcon-lake publish: Kafka client settings (KAFKA_*): {exc.args[0]}", file=sys.stderr)
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
