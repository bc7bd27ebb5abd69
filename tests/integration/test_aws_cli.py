"""The AWS CLI against the CloudTrail emulator, as an operator would type it.

awscli comes from PyPI with its own copy of botocore (not the one boto3 and the publisher
use), so these commands check the emulator against a client nobody here wrote: what the CLI
sends and how it reads the answers and the errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emulators.cloudtrail import DEFAULT_CHANNEL_ARN, CloudTrailEmulator, CloudTrailEmulatorConfig
from emulators.lake_query import DEFAULT_EVENT_DATA_STORE_ARN

AWS = Path(sys.executable).parent / "aws"
STORE_ID = DEFAULT_EVENT_DATA_STORE_ARN.rsplit("/", 1)[1]


@pytest.fixture
def emulator() -> Any:
    emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, seed=11)).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def aws(emulator: CloudTrailEmulator, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_PAGER": "",
    }

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AWS), *args, "--endpoint-url", emulator.url, "--output", "json"],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def audit_events(count: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"e{n}",
            "eventData": json.dumps(
                {
                    "version": "1.0",
                    "userIdentity": {"type": "AuthActivityAuditEvent", "principalId": f"analyst{n}@example.com"},
                    "eventSource": "crowdstrike",
                    "eventName": "userAuthenticate" if n % 2 else "createUser",
                    "eventTime": "2026-11-26T08:00:00Z",
                    "UID": f"cid-0-{n}",
                    "recipientAccountId": "123456789012",
                }
            ),
        }
        for n in range(count)
    ]


def put_audit_events(
    aws: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, count: int
) -> subprocess.CompletedProcess[str]:
    """`aws cloudtrail-data put-audit-events` of `count` events from a file, as the CLI's docs show."""
    events = tmp_path / "events.json"
    events.write_text(json.dumps(audit_events(count)))
    return aws(
        "cloudtrail-data",
        "put-audit-events",
        "--channel-arn",
        DEFAULT_CHANNEL_ARN,
        "--audit-events",
        f"file://{events}",
    )


def test_put_audit_events_from_the_cli_are_stored_and_answered_as_aws_does(
    aws: Callable[..., subprocess.CompletedProcess[str]], emulator: CloudTrailEmulator, tmp_path: Path
) -> None:
    result = put_audit_events(aws, tmp_path, 3)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["failed"] == []
    assert sorted(entry["id"] for entry in answer["successful"]) == ["e0", "e1", "e2"]
    assert all(entry["eventID"] for entry in answer["successful"])
    assert sorted(event.id for event in emulator.events()) == ["e0", "e1", "e2"]


def test_the_query_api_from_the_cli_lists_the_store_runs_sql_and_pages_results(
    aws: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    put = put_audit_events(aws, tmp_path, 5)
    assert put.returncode == 0, put.stderr

    stores = aws("cloudtrail", "list-event-data-stores")
    assert stores.returncode == 0, stores.stderr
    assert [s["EventDataStoreArn"] for s in json.loads(stores.stdout)["EventDataStores"]] == [
        DEFAULT_EVENT_DATA_STORE_ARN
    ]

    statement = (
        f"SELECT eventData.uid, eventData.eventName FROM {STORE_ID} "
        "WHERE eventTime >= '2026-11-26 00:00:00' AND eventData.eventName = 'userAuthenticate' "
        "ORDER BY eventData.uid"
    )
    started = aws("cloudtrail", "start-query", "--query-statement", statement)
    assert started.returncode == 0, started.stderr
    query_id = json.loads(started.stdout)["QueryId"]
    deadline = time.monotonic() + 30
    while True:
        described = json.loads(aws("cloudtrail", "describe-query", "--query-id", query_id).stdout)
        if described["QueryStatus"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert described["QueryStatus"] == "FINISHED"
    assert described["QueryStatistics"]["EventsMatched"] == 2

    # GetQueryResults has no CLI paginator: one row per page, the next asked for with --next-token.
    first = aws("cloudtrail", "get-query-results", "--query-id", query_id, "--max-query-results", "1")
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert page["QueryResultRows"] == [[{"uid": "cid-0-1"}, {"eventName": "userAuthenticate"}]]
    second = aws(
        "cloudtrail", "get-query-results", "--query-id", query_id, "--max-query-results", "1",
        "--next-token", page["NextToken"],
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    last = json.loads(second.stdout)
    assert last["QueryResultRows"] == [[{"uid": "cid-0-3"}, {"eventName": "userAuthenticate"}]]
    assert "NextToken" not in last


def test_the_cli_reports_the_errors_cloudtrail_gives(
    aws: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    events = tmp_path / "events.json"
    events.write_text(json.dumps(audit_events(1)))
    put = ["cloudtrail-data", "put-audit-events", "--channel-arn", DEFAULT_CHANNEL_ARN, "--audit-events"]

    wrong_secret = aws(*put, f"file://{events}", AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert wrong_secret.returncode != 0
    assert "(InvalidSignatureException) when calling the PutAuditEvents operation" in wrong_secret.stderr

    other_region = aws(*put, f"file://{events}", AWS_DEFAULT_REGION="eu-west-1")
    assert other_region.returncode != 0
    assert "scoped to a valid region" in other_region.stderr

    unknown_channel = aws(
        "cloudtrail-data",
        "put-audit-events",
        "--channel-arn",
        "arn:aws:cloudtrail:us-east-1:123456789012:channel/none",
        "--audit-events",
        f"file://{events}",
    )
    assert unknown_channel.returncode != 0
    assert "(ChannelNotFound" in unknown_channel.stderr

    not_a_select = aws("cloudtrail", "start-query", "--query-statement", f"DELETE FROM {STORE_ID}")
    assert not_a_select.returncode != 0
    assert "(InvalidQueryStatementException) when calling the StartQuery operation" in not_a_select.stderr

    unknown_store = aws(
        "cloudtrail", "start-query", "--query-statement", "SELECT eventTime FROM 00000000-0000-4000-8000-000000000000"
    )
    assert unknown_store.returncode != 0
    assert "EventDataStoreNotFoundException" in unknown_store.stderr
