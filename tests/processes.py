"""Running falcon-lake commands as real processes in tests: start, watch the log, SIGTERM, SIGKILL.

The ingestor and the publisher run in production as separate processes; the integration
tests do the same, so kill -9 and restarts are real.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
FALCON_LAKE = [sys.executable, "-m", "falcon_lake.cli"]


class Process:
    """A falcon-lake subcommand running in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [*FALCON_LAKE, *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None and not regex.search(self.output()):
                raise AssertionError(f"{self.args[0]} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            return regex.search(self.output())

        match: re.Match[str] = wait_for(found, timeout=timeout, what=f"log line /{pattern}/ of {self.args[0]}")
        return match

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: no chance to flush or commit anything."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if not self._log.closed:
                self._log.close()
        return code

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.alive():
            self.kill()
        elif not self._log.closed:
            self._log.close()


def start(args: list[str], env: Mapping[str, str], log_dir: Path, name: str | None = None) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    label = name or args[0]
    index = len(list(log_dir.glob(f"{label}*.log")))
    return Process(args, env, log_dir / f"{label}-{index}.log")


def base_env(kafka_bootstrap: str, moto_endpoint: str, topic: str) -> dict[str, str]:
    """Settings every falcon-lake process in a test shares: broker, topics, moto, no metrics port."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "AWS_ENDPOINT_URL_SSM": moto_endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SSM_REGION": "us-east-1",
        "SSM_OFFSETS_PARAMETER": f"/{topic}/last_seen_offsets",
        "METRICS_PORT": str(free_port()),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def wait_exit(process: Process, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process.wait(max(0.1, deadline - time.monotonic()))
