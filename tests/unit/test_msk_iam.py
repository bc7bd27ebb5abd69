"""Amazon MSK IAM authentication: the OAUTHBEARER callback and the client configuration (no services needed)."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from confluent_kafka import KafkaError, Producer

from falcon_lake.kafka_config import client_config, consumer_config, msk_iam_oauth_cb, producer_config
from falcon_lake.settings import KafkaSettings, load_kafka
from tests.support import free_port

EXPIRY_MS = 1_700_000_900_123


class FakeSigner:
    """Stands in for MSKAuthTokenProvider.generate_auth_token: (token, expiry in epoch milliseconds)."""

    def __init__(self, expiry_ms: int = EXPIRY_MS) -> None:
        self.regions: list[str] = []
        self.expiry_ms = expiry_ms

    def __call__(self, region: str) -> tuple[str, int]:
        self.regions.append(region)
        return f"token-for-{region}", self.expiry_ms


def test_oauth_cb_returns_the_token_and_the_expiry_in_seconds() -> None:
    signer = FakeSigner()
    callback = msk_iam_oauth_cb("eu-west-1", generate=signer)
    token, expiry = callback("ignored sasl.oauthbearer.config")
    assert token == "token-for-eu-west-1"
    assert expiry == pytest.approx(EXPIRY_MS / 1000)  # seconds since the epoch, not milliseconds
    assert signer.regions == ["eu-west-1"]


def test_oauth_cb_signs_a_fresh_token_on_every_call() -> None:
    signer = FakeSigner()
    callback = msk_iam_oauth_cb("us-east-1", generate=signer)
    callback(None)
    callback(None)
    assert signer.regions == ["us-east-1", "us-east-1"]


def test_the_real_signer_expiry_becomes_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The signer presigns locally with whatever credentials the SDK finds: dummy keys, no network.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    token, expiry = msk_iam_oauth_cb("us-east-1")(None)
    now = time.time()
    assert now < expiry < now + 3600, "expiry must be seconds since the epoch, a few minutes ahead"
    url = urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    assert url.hostname == "kafka.us-east-1.amazonaws.com"
    assert parse_qs(url.query)["Action"] == ["kafka-cluster:Connect"]


def _msk(**changes: Any) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="b-1.example.kafka.us-east-1.amazonaws.com:9098", **changes)


def test_client_config_for_msk_iam_uses_sasl_ssl_oauthbearer() -> None:
    config = client_config(_msk(security="msk-iam", msk_region="us-east-1"))
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert callable(config["oauth_cb"])
    assert "ssl.ca.location" not in config  # the system trust store knows Amazon's CA
    # Every kind of client gets the same security settings.
    for derived in (
        producer_config(_msk(security="msk-iam", msk_region="us-east-1")),
        consumer_config(_msk(security="msk-iam", msk_region="us-east-1")),
    ):
        assert (derived["security.protocol"], derived["sasl.mechanism"]) == ("SASL_SSL", "OAUTHBEARER")


def test_client_config_for_msk_iam_keeps_a_custom_ca() -> None:
    config = client_config(_msk(security="msk-iam", msk_region="us-east-1", tls_ca_file="/etc/ca.pem"))
    assert config["ssl.ca.location"] == "/etc/ca.pem"


def test_msk_iam_without_a_region_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="MSK_REGION"):
        client_config(_msk(security="msk-iam"))


def test_msk_iam_settings_from_the_environment() -> None:
    settings = load_kafka({"KAFKA_SECURITY": "msk-iam", "AWS_REGION": "ap-southeast-2"})
    assert (settings.security, settings.msk_region) == ("msk-iam", "ap-southeast-2")
    assert client_config(settings)["sasl.mechanism"] == "OAUTHBEARER"


def test_librdkafka_accepts_the_config_and_calls_the_callback() -> None:
    # librdkafka refuses an expired token, so this one expires in 15 minutes, as the signer's do.
    signer = FakeSigner(expiry_ms=int((time.time() + 900) * 1000))
    errors: list[KafkaError] = []
    config = client_config(_msk(security="msk-iam", msk_region="us-east-1"))
    # Nothing listens on this port: the client asks for a token before it ever connects.
    config.update(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "oauth_cb": msk_iam_oauth_cb("us-east-1", generate=signer),
            "error_cb": errors.append,
            "log_level": 0,
        }
    )
    producer = Producer(config)  # raises when the callback's answer is unusable
    deadline = time.monotonic() + 5
    while not signer.regions and time.monotonic() < deadline:
        producer.poll(0.1)
    assert signer.regions == ["us-east-1"], "librdkafka never asked for a token"
    assert not [e for e in errors if "OAUTHBEARER" in e.str() or "token" in e.str().lower()], errors
