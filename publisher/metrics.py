"""The publisher's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PublisherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "falcon_lake_publish_consumed", "Records consumed from Kafka", ["partition"], registry=r
        )
        self.filtered = Counter("falcon_lake_publish_filtered", "Events dropped by a filter rule", ["rule"], registry=r)
        self.converted = Counter("falcon_lake_publish_converted", "Events converted to audit events", registry=r)
        self.sent = Counter("falcon_lake_publish_sent", "Audit events sent in requests (with re-sends)", registry=r)
        self.accepted = Counter("falcon_lake_publish_accepted", "Audit events CloudTrail accepted", registry=r)
        self.failed = Counter(
            "falcon_lake_publish_failed", "Per-event failures CloudTrail answered, by code", ["code"], registry=r
        )
        self.dead_lettered = Counter(
            "falcon_lake_publish_dead_lettered", "Records written to the DLQ", ["stage", "code"], registry=r
        )
        self.retries = Counter("falcon_lake_publish_retries", "Requests re-sent after a retryable failure", registry=r)
        self.requests = Counter(
            "falcon_lake_publish_requests", "PutAuditEvents requests by outcome", ["outcome"], registry=r
        )
        self.in_flight = Gauge("falcon_lake_publish_in_flight_requests", "Batches being delivered", registry=r)
        self.buffered = Gauge("falcon_lake_publish_unfinished_records", "Consumed records not yet finished", registry=r)
        self.batch_size = Histogram(
            "falcon_lake_publish_batch_events",
            "Audit events per request",
            buckets=(1, 5, 10, 25, 50, 75, 100),
            registry=r,
        )
        self.put_latency = Histogram(
            "falcon_lake_publish_put_seconds",
            "PutAuditEvents latency",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.event_age = Histogram(
            "falcon_lake_publish_event_age_seconds",
            "Event age at acceptance (now - eventCreationTime)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
            registry=r,
        )
        self.committed = Gauge(
            "falcon_lake_publish_committed_offset", "Last committed Kafka offset", ["partition"], registry=r
        )
        self.ssm_writes = Counter("falcon_lake_publish_ssm_writes", "SSM PutParameter calls", registry=r)
        self.channel_up = Gauge("falcon_lake_publish_channel_up", "1 while the CloudTrail channel works", registry=r)
