"""Secrets never appear in logs, metrics, DLQ headers or error messages, even at DEBUG."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from emulators.cloudtrail import CloudTrailEmulator, CloudTrailEmulatorConfig
from emulators.falcon import FalconEmulator, FalconEmulatorConfig
from tests.processes import base_env, start
from tests.support import free_port, read_topic, wait_for

FALCON_SECRET = "FalconS3cr3t-9f8e7d6c5b4a"
AWS_SECRET = "AwsSecretKey-0a1b2c3d4e5f6a7b8c9d"
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


def _metrics(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_pipeline_never_shows_its_secrets(
    kafka_bootstrap: str, moto_endpoint: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("secrets")
    falcon = FalconEmulator(
        FalconEmulatorConfig(port=0, client_secret=FALCON_SECRET, feeds=1, events=400, hold_seconds=0.2)
    ).start()
    # The emulator verifies signatures made with this test's own secret.
    cloudtrail = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, secret_key=AWS_SECRET)).start()
    try:
        falcon.set_faults({"malformed_every": 50, "disconnect_every": 150})  # DLQ records and reconnect logs
        env = base_env(kafka_bootstrap, moto_endpoint, topic)
        env.update({"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "LOG_LEVEL": "DEBUG"})
        ingest_env = {
            **env,
            "FALCON_CLIENT_ID": "demo",
            "FALCON_CLIENT_SECRET": FALCON_SECRET,
            "FALCON_CLOUD_REGION": falcon.url,
        }
        publish_env = {
            **env,
            "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL,
            "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": cloudtrail.url,
            "KAFKA_GROUP_ID": unique_name("g"),
            "FILTER_PRESET": "all-user-activity",
        }
        publish_env["METRICS_PORT"] = str(free_port())
        ingestor = start(["ingest"], ingest_env, tmp_path)
        publisher = start(["publish"], publish_env, tmp_path)
        with ingestor, publisher:
            wait_for(lambda: falcon.stats()["next_offset"] and cloudtrail.stats()["events_accepted"] > 0, timeout=60)
            wait_for(lambda: sum(falcon.stats()["events_served"].values()) >= 400, timeout=60)
            metrics = _metrics(ingest_env["METRICS_PORT"]) + _metrics(publish_env["METRICS_PORT"])
            assert ingestor.terminate() == 0 and publisher.terminate() == 0
        logs = ingestor.output() + publisher.output()
        assert "stream connection-error" in logs or "reconnecting" in logs  # the faults did happen
        dlq = read_topic(kafka_bootstrap, f"{topic}.dlq")
        assert dlq, "malformed lines should be in the DLQ"
        headers = " ".join(f"{k}={v!r}" for m in dlq for k, v in (m.headers() or []))

        # A wrong secret: the failure is logged, the secret is not.
        wrong = start(
            ["ingest"],
            {**ingest_env, "FALCON_CLIENT_SECRET": FALCON_SECRET + "-wrong", "FALCON_APPLICATION_ID": "other"},
            tmp_path,
            "ingest-wrong",
        )
        with wrong:
            wrong.wait_for_log(r"token-401|HTTP 401", timeout=30)
            wrong.terminate()
        # A configuration error next to the secret: one line, no secret.
        bad = subprocess.run(
            [sys.executable, "-m", "falcon_lake.cli", "ingest"],
            env={**ingest_env, "FALCON_APPLICATION_ID": "bad-app-id"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2 and "FALCON_APPLICATION_ID" in bad.stderr
        everything = logs + metrics + headers + wrong.output() + bad.stdout + bad.stderr
        for secret in (FALCON_SECRET, AWS_SECRET):
            assert secret not in everything
    finally:
        falcon.stop()
        cloudtrail.stop()
