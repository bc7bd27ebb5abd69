"""The ingestor's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IngestorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_read = Counter(
            "falcon_lake_ingest_events_read", "Events read from Falcon", ["feed", "type"], registry=r
        )
        self.bytes_read = Counter("falcon_lake_ingest_bytes_read", "Event bytes read from Falcon", ["feed"], registry=r)
        self.events_produced = Counter(
            "falcon_lake_ingest_events_produced", "Events acknowledged by Kafka", ["feed", "type"], registry=r
        )
        self.bytes_produced = Counter(
            "falcon_lake_ingest_bytes_produced", "Event bytes acknowledged by Kafka", ["feed"], registry=r
        )
        self.dead_lettered = Counter(
            "falcon_lake_ingest_dead_lettered", "Undecodable lines sent to the DLQ", ["feed", "reason"], registry=r
        )
        self.skipped_duplicates = Counter(
            "falcon_lake_ingest_skipped_duplicates",
            "Events at or below the feed's last offset, skipped",
            ["feed"],
            registry=r,
        )
        self.reconnects = Counter("falcon_lake_ingest_reconnects", "Stream reconnects by cause", ["cause"], registry=r)
        self.api_requests = Counter(
            "falcon_lake_ingest_api_requests", "Falcon API requests by kind and status", ["kind", "status"], registry=r
        )
        self.last_offset = Gauge("falcon_lake_ingest_last_offset", "Last Falcon offset read", ["feed"], registry=r)
        self.event_age = Gauge(
            "falcon_lake_ingest_event_age_seconds",
            "Age of the last event read (now - eventCreationTime)",
            ["feed"],
            registry=r,
        )
        self.produce_queue = Gauge(
            "falcon_lake_ingest_producer_queue", "Records waiting in the producer for Kafka", registry=r
        )
        self.connected = Gauge("falcon_lake_ingest_connected_feeds", "Feeds with an open stream", registry=r)
