"""Kafka over TLS with falcon-lake's own client configuration, against a private broker with an SSL listener.

The test makes a throwaway CA and a broker certificate for 127.0.0.1 (openssl), starts a
broker of its own with scripts/kafka.sh (the shared one is never touched), round-trips a
record through client_config(KafkaSettings(security="tls", ...)), shows that a client
trusting another CA cannot connect, and runs `falcon-lake status` over TLS.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from falcon_lake.kafka_config import client_config, consumer_config, ensure_topic, producer_config
from falcon_lake.settings import KafkaSettings
from tests.processes import FALCON_LAKE
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEYSTORE_PASSWORD = "falcon-lake-test"

pytestmark = pytest.mark.slow  # starts a broker of its own (~10 s)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA certificate (name.pem) and key (name.key); returns the certificate."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return directory / f"{name}.pem"


def make_broker_keystore(directory: Path, ca: str) -> Path:
    """A PKCS12 keystore with a key and a certificate for 127.0.0.1/localhost signed by the CA."""
    (directory / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        "broker.pem",
        "-days",
        "2",
        "-extfile",
        "broker.ext",
        cwd=directory,
    )
    _openssl(
        "pkcs12",
        "-export",
        "-in",
        "broker.pem",
        "-inkey",
        "broker.key",
        "-certfile",
        f"{ca}.pem",
        "-name",
        "broker",
        "-out",
        "broker.p12",
        "-passout",
        f"pass:{KEYSTORE_PASSWORD}",
        cwd=directory,
    )
    return directory / "broker.p12"


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # the SSL listener
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the broker's certificate


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    certs = tmp_path_factory.mktemp("tls")
    ca = make_ca(certs, "falcon-lake-test-ca")
    other_ca = make_ca(certs, "some-other-ca")
    keystore = make_broker_keystore(certs, "falcon-lake-test-ca")
    ssl_port = free_port()
    extra = certs / "ssl.properties"
    extra.write_text(
        "ssl.keystore.type=PKCS12\n"
        f"ssl.keystore.location={keystore}\n"
        f"ssl.keystore.password={KEYSTORE_PASSWORD}\n"
        f"ssl.key.password={KEYSTORE_PASSWORD}\n"
        "ssl.client.auth=none\n"
    )
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DATA_DIR": str(tmp_path_factory.mktemp("kafka-tls")),
        "KAFKA_EXTRA_LISTENERS": f"SSL://127.0.0.1:{ssl_port}",
        "KAFKA_EXTRA_CONFIG": str(extra),
    }
    script = str(ROOT / "scripts/kafka.sh")
    subprocess.run([script, "start"], env=env, check=True)
    try:
        yield TlsBroker(f"127.0.0.1:{ssl_port}", ca, other_ca)
    finally:
        subprocess.run([script, "stop"], env=env, check=False)


def _tls(broker: TlsBroker, ca_file: Path | None = None, **changes: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        security="tls",
        tls_ca_file=str(ca_file or broker.ca_file),
        **changes,  # type: ignore[arg-type]
    )


def test_round_trip_over_tls_with_client_config(tls_broker: TlsBroker) -> None:
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    settings = _tls(tls_broker, topic=topic)
    assert client_config(settings)["security.protocol"] == "SSL"
    ensure_topic(AdminClient(client_config(settings)), topic, 1)

    producer = Producer(producer_config(settings, **{"message.timeout.ms": 20_000}))
    producer.produce(topic, key=b"0", value=b'{"over":"tls"}', headers=[("falcon.feed", b"0")])
    assert producer.flush(30) == 0

    consumer = Consumer(consumer_config(settings, group_id=f"tls-{uuid.uuid4().hex[:8]}"))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value(), msg.headers()) == (b"0", b'{"over":"tls"}', [("falcon.feed", b"0")])
    finally:
        consumer.close()


def test_a_broker_certificate_from_another_ca_is_refused(tls_broker: TlsBroker) -> None:
    errors: list[KafkaError] = []
    config = client_config(_tls(tls_broker, ca_file=tls_broker.other_ca_file))
    config["error_cb"] = errors.append
    admin = AdminClient(config)

    def refused() -> bool:
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=0.5)
        admin.poll(0)  # serves error_cb
        return any("certificate verify failed" in e.str() for e in errors)

    wait_for(refused, timeout=15, interval=0, what="the TLS handshake to fail on the broker's certificate")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FALCON_LAKE, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_cli_commands_connect_over_tls(tls_broker: TlsBroker) -> None:
    topic = f"tls-cli-{uuid.uuid4().hex[:8]}"
    ensure_topic(AdminClient(client_config(_tls(tls_broker))), topic, 2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": tls_broker.bootstrap,
        "KAFKA_SECURITY": "tls",
        "KAFKA_TLS_CA_FILE": str(tls_broker.ca_file),
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_GROUP_ID": f"g-{topic}",
    }
    status = _cli(["status", "--no-ssm"], env)
    assert status.returncode == 0, status.stderr
    assert f"topic {topic}" in status.stdout and "up to date" in status.stdout

    refused = _cli(["status", "--no-ssm"], {**env, "KAFKA_TLS_CA_FILE": str(tls_broker.other_ca_file)})
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "certificate verify failed" in lines[0], refused.stderr
