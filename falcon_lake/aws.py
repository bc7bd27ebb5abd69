"""boto3 clients with explicit retry settings (botocore's default mode changed between releases)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def aws_client(
    service: str,
    region: str | None,
    max_attempts: int = 5,
    session: boto3.session.Session | None = None,
    **config: Any,
) -> Any:
    """A boto3 client; endpoints and credentials follow the SDK's own conventions
    (AWS_ENDPOINT_URL_<SERVICE>, AWS_ACCESS_KEY_ID, profiles, roles). `config` adds or
    replaces botocore Config options (timeouts, pool size, ...); `session` is the one to
    make it from (default: a new one), for a caller that also needs its credentials."""
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "connect_timeout": 5,
        "read_timeout": 30,
        "user_agent_extra": "falcon-lake",
        **config,
    }
    return (session or boto3.session.Session()).client(service, region_name=region, config=Config(**options))
