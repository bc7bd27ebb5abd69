"""falcon-lake: CrowdStrike Falcon user-activity audit events into AWS CloudTrail Lake, through Kafka."""

__version__ = "0.1.0"
