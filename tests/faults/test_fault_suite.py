"""The fault suite: nothing is lost while everything that can fail, fails.

During one run of FAULT_EVENTS events (50,000 with `make test-faults`; fewer in `make test`),
at random but seeded moments (FAULT_SEED): the ingestor and the publisher are killed with
SIGKILL and restarted, the broker is stopped and restarted, the Falcon emulator disconnects,
expires sessions, answers 401/404/429/5xx and serves malformed lines, the CloudTrail
emulator throttles, fails entries, adds latency spikes, answers 5xx and loses the channel
for a while, and SSM throttles (a proxy in front of moto, since moto never does). At the
end the audit must show zero missing events, and duplicates must stay within the bound of
the delivery contract: per publisher kill, at most one batch per partition (the publisher
runs with MAX_IN_FLIGHT_PER_PARTITION=1, the setting that gives that strict bound; with N
requests in flight the bound is N batches, which tests/integration/test_publish.py checks).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from falcon_lake.ops.audit import audit, format_report, lake_id_counts_from_db, read_dead_letters, read_record_file
from publisher.convert import Converter
from publisher.filter import EventFilter
from tests.conftest import LocalKafka
from tests.processes import Process, base_env, start
from tests.support import free_port, wait_for

FAULT_EVENTS = int(os.environ.get("FAULT_EVENTS", "6000"))
FAULT_SEED = int(os.environ.get("FAULT_SEED", "20261127"))
FEEDS = 2
PARTITIONS = 3
MAX_IN_FLIGHT = 1
BATCH = 100
CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"


class ThrottlingSsmProxy:
    """Forwards AWS JSON requests to moto, answering a share of SSM calls with ThrottlingException."""

    def __init__(self, upstream: str, rate: float, seed: int) -> None:
        self.rate = rate
        self.throttled = 0
        rng = random.Random(seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                if target.startswith("AmazonSSM.") and rng.random() < proxy.rate:
                    proxy.throttled += 1
                    payload = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
                    self.send_response(400)
                    self.send_header("x-amzn-ErrorType", "ThrottlingException")
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.post(upstream + self.path, data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def group_caught_up(bootstrap: str, topic: str, group: str) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = consumer.committed(partitions, timeout=10)
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    except Exception:
        return False
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_nothing_is_lost_under_faults(
    private_kafka: LocalKafka, moto_endpoint: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    rng = random.Random(FAULT_SEED)
    per_feed = FAULT_EVENTS // FEEDS
    duration = max(30.0, FAULT_EVENTS / 700)  # how long the Falcon side takes to serve everything
    rate = max(50, int(per_feed / duration))
    logs = tmp_path / "logs"
    record = tmp_path / "served.ndjson"
    db_path = tmp_path / "lake.db"
    topic = unique_name("faults")
    group = unique_name("faults-publisher")
    ssm_proxy = ThrottlingSsmProxy(moto_endpoint, rate=0.3, seed=FAULT_SEED)

    falcon_port, cloudtrail_port = free_port(), free_port()
    falcon = start(
        [
            "emulate",
            "falcon",
            "--port",
            str(falcon_port),
            "--feeds",
            str(FEEDS),
            "--events",
            str(per_feed),
            "--rate",
            str(rate),
            "--seed",
            str(FAULT_SEED),
            "--record",
            str(record),
            "--hold-seconds",
            "0.5",
            "--refresh-interval",
            "8",
        ],
        {},
        logs,
        "falcon",
    )
    cloudtrail = start(
        [
            "emulate",
            "cloudtrail",
            "--port",
            str(cloudtrail_port),
            "--db",
            str(db_path),
            "--tps",
            "100",
            "--latency-ms",
            "5-30",
            "--seed",
            str(FAULT_SEED),
        ],
        {},
        logs,
        "cloudtrail",
    )
    falcon_url = falcon.wait_for_log(r"listening on (http://\S+)").group(1)
    cloudtrail_url = cloudtrail.wait_for_log(r"listening on (http://\S+)").group(1)

    env = base_env(private_kafka.bootstrap, ssm_proxy.url, topic)
    env.update({"KAFKA_TOPIC_PARTITIONS": str(PARTITIONS), "SHUTDOWN_TIMEOUT_SECONDS": "10"})
    ingest_env = {
        **env,
        "FALCON_CLIENT_ID": "demo",
        "FALCON_CLIENT_SECRET": "demo",
        "FALCON_CLOUD_REGION": falcon_url,
        "METRICS_PORT": "0",
    }
    publish_env = {
        **env,
        "CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL,
        "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA": cloudtrail_url,
        "KAFKA_GROUP_ID": group,
        "FILTER_PRESET": "all-user-activity",
        "METRICS_PORT": "0",
        "MAX_IN_FLIGHT_PER_PARTITION": str(MAX_IN_FLIGHT),
        "SSM_WRITE_INTERVAL_SECONDS": "1",
    }
    processes: dict[str, Process] = {
        "ingest": start(["ingest"], ingest_env, logs),
        "publish": start(["publish"], publish_env, logs),
    }
    kills = {"ingest": 0, "publish": 0}
    injected: list[str] = []

    def restart(name: str) -> None:
        processes[name].kill()
        kills[name] += 1
        time.sleep(rng.uniform(0.2, 2.0))
        processes[name] = start([name], ingest_env if name == "ingest" else publish_env, logs)

    falcon_faults = [
        {"disconnect_every": 700},
        {"feed_401_every": 2},
        {"refresh_404": 1},
        {"rate_limit_every": 3},
        {"token_5xx_every": 2},
        {"discovery_5xx_every": 2},
        {"expire_sessions_after": 3},
        {"malformed_every": 300},
    ]
    cloudtrail_faults = [
        {"throttle_rate": 0.3},
        {"internal_failure_rate": 0.2},
        {"latency_ms": "200-800"},
        {"error_rate": 0.2},
        {"tps": 20},
    ]
    actions: list[Callable[[], None]] = []
    for fault in falcon_faults:
        actions.append(
            lambda f=fault: (
                post_json(f"{falcon_url}/_emulator/faults", {"reset": True, **f}),
                injected.append(f"falcon {f}"),
            )
        )
    for fault in cloudtrail_faults:
        actions.append(
            lambda f=fault: (post_json(f"{cloudtrail_url}/_emulator/faults", f), injected.append(f"cloudtrail {f}"))
        )
    actions += [lambda: (restart("ingest"), injected.append("SIGKILL ingestor")) for _ in range(3)]
    actions += [lambda: (restart("publish"), injected.append("SIGKILL publisher")) for _ in range(3)]

    def channel_outage() -> None:
        post_json(f"{cloudtrail_url}/_emulator/channels", {"arn": CHANNEL, "present": False})
        injected.append("channel removed")
        time.sleep(rng.uniform(3, 6))
        post_json(f"{cloudtrail_url}/_emulator/channels", {"arn": CHANNEL, "present": True})

    def broker_outage() -> None:
        private_kafka.stop()
        injected.append("broker stopped")
        time.sleep(rng.uniform(5, 10))
        private_kafka.start()

    actions += [channel_outage, broker_outage]
    rng.shuffle(actions)

    try:
        gap = duration / (len(actions) + 1)
        for action in actions:
            time.sleep(rng.uniform(0.3, 1.0) * gap)
            action()
            for name, process in processes.items():
                assert process.alive() or process.proc.returncode == 0, f"{name} died:\n{process.output()[-3000:]}"
        post_json(f"{falcon_url}/_emulator/faults", {"reset": True})
        post_json(
            f"{cloudtrail_url}/_emulator/faults",
            {"throttle_rate": 0, "internal_failure_rate": 0, "latency_ms": "5-30", "error_rate": 0, "tps": 100},
        )
        ssm_proxy.rate = 0.0

        # Everything served, ingested and delivered: Falcon has nothing more, the group caught up.
        def falcon_done() -> bool:
            stats = get_json(f"{falcon_url}/_emulator/stats")
            return all(int(n) >= per_feed for n in stats["events_served"].values())

        wait_for(falcon_done, timeout=600, interval=1, what="Falcon emulator to serve every event")
        expected, malformed = read_record_file(str(record))
        assert len(expected) == per_feed * FEEDS

        def delivered_all() -> bool:
            for name, process in processes.items():
                assert process.alive(), f"{name} exited:\n{process.output()[-3000:]}"
            return group_caught_up(private_kafka.bootstrap, topic, group) and _topic_count(
                private_kafka.bootstrap, topic
            ) >= len(expected)

        wait_for(delivered_all, timeout=600, interval=2, what="the publisher group to deliver everything")
        for name in ("ingest", "publish"):
            assert processes[name].terminate(30) == 0, processes[name].output()[-3000:]

        from falcon_lake.ops.command import KafkaOps
        from falcon_lake.settings import KafkaSettings

        letters, ingest_letters = read_dead_letters(
            KafkaOps(KafkaSettings(bootstrap_servers=private_kafka.bootstrap)), f"{topic}.dlq"
        )
        report = audit(
            expected,
            lake_id_counts_from_db(str(db_path)),
            letters,
            Converter(CHANNEL, EventFilter.from_preset("all-user-activity")),
            malformed,
            ingest_letters,
        )
        summary = format_report(report)
        print(f"\nfault suite: {FAULT_EVENTS} events, seed {FAULT_SEED}, SSM throttled {ssm_proxy.throttled} times")
        print("injected: " + "; ".join(injected))
        print(summary)
        (tmp_path / "audit.txt").write_text(summary)
        assert report.missing == [], summary
        bound = kills["publish"] * PARTITIONS * BATCH  # one batch per partition per kill
        assert report.duplicates <= bound, f"{report.duplicates} duplicates > bound {bound}\n{summary}"
        assert report.delivered > 0 and sum(report.filtered.values()) > 0
        with sqlite3.connect(db_path) as db:
            rows = db.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0]
        assert rows == report.delivered + report.duplicates
    finally:
        for process in processes.values():
            process.kill()
        falcon.kill()
        cloudtrail.kill()
        ssm_proxy.stop()


def _topic_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-suite-count"})
    try:
        total = 0
        for partition in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()
