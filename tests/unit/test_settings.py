"""Settings: defaults, the old gateway's names, and one clear line for every bad value."""

from __future__ import annotations

import pytest

from falcon_lake.offset_store import merge_offsets, parse_offsets_value
from falcon_lake.settings import Secret, SettingsError, drain_seconds, load_ingestor, load_publisher

BASE = {"FALCON_CLIENT_ID": "id", "FALCON_CLIENT_SECRET": "s3cr3t-value"}
CHANNEL = "arn:aws:cloudtrail:eu-west-1:123456789012:channel/abc-123"


def test_ingestor_defaults() -> None:
    s = load_ingestor(BASE)
    assert s.falcon.base_url == "https://api.crowdstrike.com"
    assert s.falcon.application_id == "falconlake"
    assert s.falcon.events_start == "earliest"
    assert s.kafka.topic == "falcon.events" and s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.ops.metrics_port == 9464
    assert s.ssm.parameter == "last_seen_offsets"


def test_secret_never_shows_itself() -> None:
    s = load_ingestor(BASE)
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.falcon)
    assert isinstance(s.falcon.client_secret, Secret) and s.falcon.client_secret.reveal() == "s3cr3t-value"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FALCON_CLIENT_SECRET": "x"}, "FALCON_CLIENT_ID"),
        ({"FALCON_CLIENT_ID": "x"}, "FALCON_CLIENT_SECRET"),
        ({**BASE, "FALCON_APPLICATION_ID": "has-dash"}, "FALCON_APPLICATION_ID"),
        ({**BASE, "FALCON_APPLICATION_ID": "a" * 33}, "FALCON_APPLICATION_ID"),
        ({**BASE, "FALCON_CLOUD_REGION": "mars-1"}, "FALCON_CLOUD_REGION"),
        ({**BASE, "EVENTS_START": "yesterday"}, "EVENTS_START"),
        ({**BASE, "KAFKA_SECURITY": "ssl3"}, "KAFKA_SECURITY"),
        ({**BASE, "METRICS_PORT": "70000"}, "METRICS_PORT"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({**BASE, "KAFKA_SECURITY": "tls", "KAFKA_TLS_SKIP_VERIFY": "true"}, "KAFKA_TLS_SKIP_VERIFY"),
        ({**BASE, "KAFKA_TLS_CERT_FILE": "/c.pem", "KAFKA_SECURITY": "tls"}, "KAFKA_TLS_CERT_FILE"),
        ({**BASE, "KAFKA_TLS_CA_FILE": "/ca.pem"}, "KAFKA_SECURITY"),
    ],
)
def test_bad_ingestor_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_ingestor(env)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


def test_cloud_region_accepts_names_and_urls() -> None:
    assert load_ingestor({**BASE, "FALCON_CLOUD_REGION": "eu-1"}).falcon.base_url == "https://api.eu-1.crowdstrike.com"
    s = load_ingestor({**BASE, "FALCON_CLOUD_REGION": "http://127.0.0.1:8090/"})
    assert s.falcon.base_url == "http://127.0.0.1:8090" and s.falcon.cloud is None


def test_old_gateway_start_names() -> None:
    assert load_ingestor({**BASE, "EVENTS_OFFSET": "1234"}).falcon.events_start == "1234"
    assert load_ingestor({**BASE, "EVENTS_START_FROM_NEWEST": "true"}).falcon.events_start == "latest"
    assert load_ingestor({**BASE, "EVENTS_START": "latest", "EVENTS_OFFSET": "5"}).falcon.events_start == "latest"


def test_secret_arn_replaces_client_credentials() -> None:
    s = load_ingestor({"FALCON_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"})
    assert s.falcon.client_id is None and s.falcon.secret_client_secret_key == "client_secret"


def test_insecure_tls_needs_explicit_consent() -> None:
    s = load_ingestor(
        {**BASE, "KAFKA_SECURITY": "tls", "KAFKA_TLS_SKIP_VERIFY": "true", "KAFKA_TLS_ALLOW_INSECURE": "i-understand"}
    )
    assert s.kafka.tls_skip_verify


def test_publisher_settings() -> None:
    s = load_publisher({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL})
    assert s.cloudtrail_region == "eu-west-1" and s.ssm.region == "eu-west-1"
    assert s.channel_account == "123456789012"
    assert s.filter.preset == "gateway" and s.batch_max_events == 100
    assert s.ops.metrics_port == 9465


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "CLOUDTRAIL_LAKE_CHANNEL_ARN"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": "arn:aws:s3:::bucket"}, "CLOUDTRAIL_LAKE_CHANNEL_ARN"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "BATCH_MAX_EVENTS": "101"}, "BATCH_MAX_EVENTS"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "FILTER_PRESET": "everything"}, "FILTER_PRESET"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "KAFKA_DLQ_TOPIC": "falcon.events"}, "KAFKA_DLQ_TOPIC"),
        ({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL, "CLOUDTRAIL_CHECKSUM": "maybe"}, "CLOUDTRAIL_CHECKSUM"),
    ],
)
def test_bad_publisher_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_publisher(env)


def test_offsets_value_reads_json_and_the_old_gateway_dict() -> None:
    assert parse_offsets_value('{"0": 48643, "1": 7}') == {"0": 48643, "1": 7}
    assert parse_offsets_value("{'0': 48643}") == {"0": 48643}
    assert parse_offsets_value("{0: '12'}") == {"0": 12}
    for bad in ("[1, 2]", "not a dict", "{'0': 'x'}", "{'0': None}"):
        with pytest.raises(ValueError):
            parse_offsets_value(bad)


def test_merge_keeps_the_highest_offset_per_feed() -> None:
    assert merge_offsets({"0": 5, "1": 9}, {"0": 7, "1": 3}, {"2": 1}) == {"0": 7, "1": 9, "2": 1}


def test_the_drain_leaves_time_to_close_and_exit_before_the_shutdown_timeout() -> None:
    assert drain_seconds(20.0) == 18.5
    assert drain_seconds(5.0) == 3.75
    assert drain_seconds(1.0) == 0.75
