"""Logging set-up shared by both processes: text or JSON lines on stderr, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping

from falcon_lake.settings import OpsSettings, Secret


class RedactSecrets(logging.Filter):
    """Replaces every known secret value in a record's final message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would redact ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            for secret in self._secrets:
                exc_text = exc_text.replace(secret, "***")
            record.exc_text = exc_text
            record.exc_info = None
        if text is not message:
            record.msg, record.args = text, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def secrets_to_redact(environment: Mapping[str, str], *values: Secret | None) -> list[str]:
    """The values no log line may show: the given secrets plus the AWS secret key and session token."""
    secrets = [value.reveal() for value in values if value]
    return [*secrets, environment.get("AWS_SECRET_ACCESS_KEY", ""), environment.get("AWS_SESSION_TOKEN", "")]


def setup_logging(ops: OpsSettings, component: str, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for a process. `secrets` never appear in any line."""
    handler = logging.StreamHandler(sys.stderr)
    if ops.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(ops.log_level)
    # Library chatter at INFO says nothing an operator needs.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(ops.log_level)))
