"""The CloudTrail Lake emulator driven by an unmodified boto3 `cloudtrail-data` client over real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import botocore.auth
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from emulators.cloudtrail import (
    DEFAULT_CHANNEL_ARN,
    ChannelConfig,
    CloudTrailEmulator,
    CloudTrailEmulatorConfig,
    RequestError,
)
from emulators.cloudtrail_validation import event_data_checksum

ROOT = Path(__file__).resolve().parents[2]
FALCON_LAKE = str(ROOT / ".venv/bin/falcon-lake")
ACCOUNT = "123456789012"
OTHER_CHANNEL = f"arn:aws:cloudtrail:us-east-1:{ACCOUNT}:channel/other"

MakeEmulator = Callable[..., CloudTrailEmulator]


def event_data(n: int = 0, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": "1.0",
        "userIdentity": {"type": "AuthActivityAuditEvent", "principalId": f"analyst{n}@example.com"},
        "eventSource": "crowdstrike",
        "eventName": "userAuthenticate",
        "eventTime": "2024-11-26T08:00:00Z",
        "UID": f"cid-0-{n}",
        "sourceIPAddress": "198.51.100.20",
        "recipientAccountId": ACCOUNT,
        "additionalEventData": {"raw": {"offset": n}},
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def audit_event(n: int = 0, **changes: Any) -> dict[str, str]:
    return {"id": f"cid-0-{n}", "eventData": json.dumps(event_data(n, **changes))}


def audit_events(count: int, start: int = 0) -> list[dict[str, str]]:
    return [audit_event(start + i) for i in range(count)]


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Start emulators on free ports (config fields as keywords); all are stopped after the test."""
    started: list[CloudTrailEmulator] = []

    def make(**config: Any) -> CloudTrailEmulator:
        emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, seed=7, **config)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: MakeEmulator) -> CloudTrailEmulator:
    return make_emulator()


def client_for(
    emulator: CloudTrailEmulator,
    attempts: int = 1,
    secret: str = "testing",
    region: str = "us-east-1",
    access_key: str = "testing",
    **config: Any,
) -> Any:
    """A boto3 cloudtrail-data client of the emulator, signing with the documented local test keys by default."""
    return boto3.client(
        "cloudtrail-data",
        endpoint_url=emulator.url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        # total_max_attempts counts the first try; botocore's max_attempts counts only retries.
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}, **config),
    )


@pytest.fixture
def client(emulator: CloudTrailEmulator) -> Any:
    return client_for(emulator)


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    assert response["ResponseMetadata"]["RequestId"], "every answer carries x-amzn-RequestId"
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def post_control(emulator: CloudTrailEmulator, name: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{emulator.url}/_emulator/{name}", json=body, timeout=5)


# ---- happy path ---------------------------------------------------------------------


def test_accepted_events_are_stored_with_fresh_event_ids(emulator: CloudTrailEmulator, client: Any) -> None:
    sent = audit_events(3)
    answer = client.put_audit_events(auditEvents=sent, channelArn=DEFAULT_CHANNEL_ARN)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["failed"] == []
    assert [entry["id"] for entry in answer["successful"]] == ["cid-0-0", "cid-0-1", "cid-0-2"]
    event_ids = [entry["eventID"] for entry in answer["successful"]]
    assert all(uuid.UUID(event_id).version == 4 for event_id in event_ids)
    stored = emulator.events()
    assert [(e.id, e.event_id, e.channel_arn) for e in stored] == [
        (s["id"], event_id, DEFAULT_CHANNEL_ARN) for s, event_id in zip(sent, event_ids, strict=True)
    ]
    assert stored[0].event_data == event_data(0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stored[0].received_at)


def test_a_resent_id_is_a_second_row(emulator: CloudTrailEmulator, client: Any) -> None:
    for _ in range(2):
        client.put_audit_events(auditEvents=[audit_event(1)], channelArn=DEFAULT_CHANNEL_ARN)
    stored = emulator.events()
    assert [e.id for e in stored] == ["cid-0-1", "cid-0-1"]
    assert stored[0].event_id != stored[1].event_id


def test_a_valid_checksum_is_accepted(emulator: CloudTrailEmulator, client: Any) -> None:
    entry = audit_event(1)
    entry["eventDataChecksum"] = event_data_checksum(entry["eventData"])
    answer = client.put_audit_events(auditEvents=[entry], channelArn=DEFAULT_CHANNEL_ARN)
    assert len(answer["successful"]) == 1


def test_one_hundred_events_in_one_request(emulator: CloudTrailEmulator, client: Any) -> None:
    answer = client.put_audit_events(auditEvents=audit_events(100), channelArn=DEFAULT_CHANNEL_ARN)
    assert len(answer["successful"]) == 100
    assert emulator.store.count() == 100


# ---- request limits ----------------------------------------------------------------


def test_zero_events_is_a_validation_error(emulator: CloudTrailEmulator) -> None:
    unchecked = client_for(emulator, parameter_validation=False)  # botocore itself refuses an empty list
    with pytest.raises(ClientError) as excinfo:
        unchecked.put_audit_events(auditEvents=[], channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("ValidationException", 400)


def test_more_than_one_hundred_events_is_a_validation_error(emulator: CloudTrailEmulator, client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(auditEvents=audit_events(101), channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("ValidationException", 400)
    assert "between 1 and 100" in str(excinfo.value)
    assert emulator.store.count() == 0


def test_a_body_over_one_megabyte_is_refused_whole(emulator: CloudTrailEmulator, client: Any) -> None:
    def big(n: int) -> dict[str, str]:
        return audit_event(n, requestParameters={"blob": "x" * 95_000})

    answer = client.put_audit_events(auditEvents=[big(i) for i in range(10)], channelArn=DEFAULT_CHANNEL_ARN)
    assert len(answer["successful"]) == 10  # about 950 kB: under the limit

    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(auditEvents=[big(i) for i in range(11)], channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("ValidationException", 400)
    assert "exceeds the limit of 1000000 bytes" in str(excinfo.value)
    # The connection stays usable after the refused body.
    assert client.put_audit_events(auditEvents=[audit_event(99)], channelArn=DEFAULT_CHANNEL_ARN)["successful"]
    assert emulator.store.count() == 11


@pytest.mark.parametrize("bad_id", ["has space", "dot.ted", "x" * 129, "slash/ed"])
def test_an_illegal_id_refuses_the_whole_request(emulator: CloudTrailEmulator, client: Any, bad_id: str) -> None:
    entries = [audit_event(1), {"id": bad_id, "eventData": json.dumps(event_data(2))}]
    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("ValidationException", 400)
    assert "auditEvents.2.member.id" in str(excinfo.value)
    assert emulator.store.count() == 0


def test_a_128_character_id_is_legal(client: Any) -> None:
    entry = {"id": "x" * 128, "eventData": json.dumps(event_data())}
    assert client.put_audit_events(auditEvents=[entry], channelArn=DEFAULT_CHANNEL_ARN)["successful"]


def test_duplicate_ids_in_one_request(emulator: CloudTrailEmulator, client: Any) -> None:
    with pytest.raises(client.exceptions.DuplicatedAuditEventId) as excinfo:
        client.put_audit_events(
            auditEvents=[audit_event(1), audit_event(2), audit_event(1)], channelArn=DEFAULT_CHANNEL_ARN
        )
    assert error_of(excinfo) == ("DuplicatedAuditEventId", 400)
    assert emulator.store.count() == 0


# ---- per-event failures ------------------------------------------------------------


def test_each_invalid_event_fails_alone_with_its_code(emulator: CloudTrailEmulator, client: Any) -> None:
    bad_checksum = audit_event(6)
    bad_checksum["eventDataChecksum"] = event_data_checksum("something else")
    entries = [
        audit_event(0),
        audit_event(1, eventName=None),
        audit_event(2, userAgent="u" * 1025),
        audit_event(3, eventTime="26/11/2024 08:00"),
        {"id": "cid-0-4", "eventData": "not json"},
        audit_event(5, recipientAccountId="210987654321"),
        bad_checksum,
        audit_event(7, eventSource="signin.amazonaws.com"),
        audit_event(8, sourceIPAddress="not-an-ip"),
        audit_event(9, additionalEventData={"raw": "x" * 28_000}),
        audit_event(10),
    ]
    answer = client.put_audit_events(auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert [e["id"] for e in answer["successful"]] == ["cid-0-0", "cid-0-10"]
    codes = {e["id"]: e["errorCode"] for e in answer["failed"]}
    assert codes == {
        "cid-0-1": "FieldNotFound",
        "cid-0-2": "FieldTooLong",
        "cid-0-3": "InvalidData",
        "cid-0-4": "InvalidData",
        "cid-0-5": "InvalidRecipient",
        "cid-0-6": "InvalidChecksum",
        "cid-0-7": "InvalidEventSource",
        "cid-0-8": "InvalidData",
        "cid-0-9": "FieldTooLong",
    }
    assert all(e["errorMessage"] for e in answer["failed"])
    assert [e.id for e in emulator.events()] == ["cid-0-0", "cid-0-10"]


def test_the_answer_is_compact_json_in_the_order_events_were_sent(emulator: CloudTrailEmulator) -> None:
    entries = [
        audit_event(0),
        audit_event(1, eventName=None),
        {"id": "cid-0-2", "eventData": "not json"},
        audit_event(3, **{'naïve"field': 1}),  # its error message needs escaping
        audit_event(4),
    ]
    answer = signed_post(emulator, "cloudtrail-data", entries)
    assert answer.status_code == 200
    parsed = answer.json()
    assert [e["id"] for e in parsed["successful"]] == ["cid-0-0", "cid-0-4"]
    assert [e["id"] for e in parsed["failed"]] == ["cid-0-1", "cid-0-2", "cid-0-3"]
    assert answer.content == json.dumps(parsed, separators=(",", ":")).encode()


def test_recipient_follows_the_channel_account(make_emulator: MakeEmulator) -> None:
    arn = "arn:aws:cloudtrail:eu-west-1:210987654321:channel/eu"
    emulator = make_emulator(channels=(ChannelConfig(arn),))
    client = client_for(emulator, region="eu-west-1")  # the emulator serves its channel's region
    answer = client.put_audit_events(
        auditEvents=[audit_event(1), audit_event(2, recipientAccountId="210987654321")], channelArn=arn
    )
    assert [e["id"] for e in answer["successful"]] == ["cid-0-2"]
    assert answer["failed"][0]["errorCode"] == "InvalidRecipient"


@pytest.mark.parametrize(
    ("setting", "code"), [("throttle_rate", "Throttling"), ("internal_failure_rate", "InternalFailure")]
)
def test_injected_per_event_failures(make_emulator: MakeEmulator, setting: str, code: str) -> None:
    emulator = make_emulator(**{setting: 1.0})
    client = client_for(emulator)
    answer = client.put_audit_events(auditEvents=audit_events(5), channelArn=DEFAULT_CHANNEL_ARN)
    assert answer["successful"] == []
    assert {e["errorCode"] for e in answer["failed"]} == {code}
    assert emulator.store.count() == 0

    emulator.set_faults(**{setting: 0.0})
    assert len(client.put_audit_events(auditEvents=audit_events(5), channelArn=DEFAULT_CHANNEL_ARN)["successful"]) == 5


def test_partial_injected_failures_follow_the_rate(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(throttle_rate=0.3, internal_failure_rate=0.1)
    client = client_for(emulator)
    failed: list[str] = []
    for start in range(0, 1000, 100):
        answer = client.put_audit_events(auditEvents=audit_events(100, start), channelArn=DEFAULT_CHANNEL_ARN)
        failed += [e["errorCode"] for e in answer["failed"]]
    assert 220 < failed.count("Throttling") < 380
    assert 30 < failed.count("InternalFailure") < 110
    assert emulator.store.count() == 1000 - len(failed)


def test_an_unsubscribed_account_fails_every_event(emulator: CloudTrailEmulator, client: Any) -> None:
    assert post_control(emulator, "channels", {"arn": DEFAULT_CHANNEL_ARN, "subscribed": False}).ok
    answer = client.put_audit_events(auditEvents=audit_events(3), channelArn=DEFAULT_CHANNEL_ARN)
    assert {e["errorCode"] for e in answer["failed"]} == {"AccountNotSubscribed"}
    assert answer["successful"] == []


# ---- whole-request errors ----------------------------------------------------------


def test_unknown_channel_is_channel_not_found(client: Any) -> None:
    with pytest.raises(client.exceptions.ChannelNotFound) as excinfo:
        client.put_audit_events(auditEvents=[audit_event()], channelArn=OTHER_CHANNEL)
    assert error_of(excinfo) == ("ChannelNotFound", 400)


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:cloudtrail:us-east-1:1234:channel/demo",
        "arn:aws:s3:::bucket",
        "arn:aws:cloudtrail:us-east-1:123456789012:trail/demo",
        "demo",
    ],
)
def test_malformed_channel_arn_is_invalid_channel_arn(client: Any, arn: str) -> None:
    with pytest.raises(client.exceptions.InvalidChannelARN) as excinfo:
        client.put_audit_events(auditEvents=[audit_event()], channelArn=arn)
    assert error_of(excinfo) == ("InvalidChannelARN", 400)


def test_external_id_is_required_when_the_channel_has_one(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(channels=(ChannelConfig.parse(f"{DEFAULT_CHANNEL_ARN}=s3cret/id"),))
    client = client_for(emulator)
    for external_id in (None, "wrong"):
        kwargs = {} if external_id is None else {"externalId": external_id}
        with pytest.raises(client.exceptions.ChannelInsufficientPermission) as excinfo:
            client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN, **kwargs)
        assert error_of(excinfo) == ("ChannelInsufficientPermission", 400)
    answer = client.put_audit_events(
        auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN, externalId="s3cret/id"
    )
    assert answer["successful"]


@pytest.mark.parametrize(
    ("forced", "status"),
    [
        ("ChannelUnsupportedSchema", 400),
        ("UnsupportedOperationException", 400),
        ("ChannelInsufficientPermission", 400),
        ("AccessDeniedException", 403),
    ],
)
def test_forced_request_errors(emulator: CloudTrailEmulator, client: Any, forced: str, status: int) -> None:
    assert post_control(emulator, "faults", {"force_error": forced}).json()["force_error"] == forced
    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == (forced, status)
    modeled = getattr(client.exceptions, forced, None)
    if modeled is not None:
        assert isinstance(excinfo.value, modeled)
    post_control(emulator, "faults", {"force_error": None})
    assert client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)["successful"]


def test_a_channel_can_disappear_and_come_back(emulator: CloudTrailEmulator, client: Any) -> None:
    emulator.set_channel_present(DEFAULT_CHANNEL_ARN, False)
    with pytest.raises(client.exceptions.ChannelNotFound):
        client.put_audit_events(auditEvents=[audit_event(1)], channelArn=DEFAULT_CHANNEL_ARN)

    answer = post_control(emulator, "channels", {"arn": DEFAULT_CHANNEL_ARN, "present": True})
    assert answer.json() == {"arn": DEFAULT_CHANNEL_ARN, "present": True, "external_id": None, "subscribed": True}
    assert client.put_audit_events(auditEvents=[audit_event(2)], channelArn=DEFAULT_CHANNEL_ARN)["successful"]

    post_control(emulator, "channels", {"arn": DEFAULT_CHANNEL_ARN, "present": False})
    with pytest.raises(client.exceptions.ChannelNotFound):
        client.put_audit_events(auditEvents=[audit_event(3)], channelArn=DEFAULT_CHANNEL_ARN)
    # A channel created at run time.
    post_control(emulator, "channels", {"arn": OTHER_CHANNEL, "present": True})
    assert client.put_audit_events(auditEvents=[audit_event(4)], channelArn=OTHER_CHANNEL)["successful"]
    assert [(e.id, e.channel_arn) for e in emulator.events()] == [
        ("cid-0-2", DEFAULT_CHANNEL_ARN),
        ("cid-0-4", OTHER_CHANNEL),
    ]
    channels = requests.get(f"{emulator.url}/_emulator/channels", timeout=5).json()["channels"]
    assert {(c["arn"], c["present"]) for c in channels} == {(DEFAULT_CHANNEL_ARN, False), (OTHER_CHANNEL, True)}


def test_requests_beyond_the_tps_quota_are_throttled(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(tps=2)
    client = client_for(emulator, attempts=1)
    outcomes = []
    for n in range(8):
        try:
            client.put_audit_events(auditEvents=[audit_event(n)], channelArn=DEFAULT_CHANNEL_ARN)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400  # as AWS's common errors
    assert outcomes[:2] == ["ok", "ok"]
    assert outcomes.count("ThrottlingException") >= 4
    stats = emulator.stats()
    assert stats["requests_throttled"] == outcomes.count("ThrottlingException")
    assert stats["requests_by_error"]["ThrottlingException"] == stats["requests_throttled"]


def test_botocore_retries_a_throttled_request_by_itself(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(tps=10)
    client = client_for(emulator, attempts=10)
    retried = 0
    for n in range(15):
        answer = client.put_audit_events(auditEvents=[audit_event(n)], channelArn=DEFAULT_CHANNEL_ARN)
        retried += answer["ResponseMetadata"]["RetryAttempts"]
    assert retried > 0
    assert emulator.store.count() == 15
    assert emulator.stats()["requests_throttled"] == retried


def test_injected_server_errors_are_5xx(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(error_rate=1.0)
    client = client_for(emulator, attempts=1)
    seen = set()
    for _ in range(12):
        with pytest.raises(ClientError) as excinfo:
            client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)
        seen.add(error_of(excinfo))
    assert seen == {("InternalFailure", 500), ("ServiceUnavailable", 503)}
    assert emulator.store.count() == 0


def test_latency_is_added_and_changes_at_run_time(emulator: CloudTrailEmulator, client: Any) -> None:
    client.put_audit_events(auditEvents=[audit_event(0)], channelArn=DEFAULT_CHANNEL_ARN)  # connect first
    assert post_control(emulator, "faults", {"latency_ms": "250"}).ok
    started = time.monotonic()
    client.put_audit_events(auditEvents=[audit_event(1)], channelArn=DEFAULT_CHANNEL_ARN)
    assert time.monotonic() - started >= 0.25
    emulator.set_faults(latency_ms="0")
    started = time.monotonic()
    client.put_audit_events(auditEvents=[audit_event(2)], channelArn=DEFAULT_CHANNEL_ARN)
    assert time.monotonic() - started < 0.2


def test_fault_settings_are_checked(emulator: CloudTrailEmulator) -> None:
    for bad in ({"throttle_rate": 2}, {"tps": 0}, {"latency_ms": "soon"}, {"force_error": "Nope"}, {"speed": 1}):
        answer = post_control(emulator, "faults", bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]
    assert requests.get(f"{emulator.url}/_emulator/faults", timeout=5).json() == {
        "tps": 100.0,
        "latency_ms": "0",
        "throttle_rate": 0.0,
        "internal_failure_rate": 0.0,
        "error_rate": 0.0,
        "force_error": None,
    }
    assert post_control(emulator, "faults", {"tps": 5, "latency_ms": "p50=40,p99=200"}).json()["tps"] == 5.0


# ---- authentication ----------------------------------------------------------------


def test_a_request_without_sigv4_is_refused(emulator: CloudTrailEmulator) -> None:
    answer = requests.post(
        f"{emulator.url}/PutAuditEvents",
        params={"channelArn": DEFAULT_CHANNEL_ARN},
        json={"auditEvents": [audit_event()]},
        timeout=5,
    )
    assert answer.status_code == 403
    assert answer.headers["X-Amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert answer.headers["x-amzn-RequestId"]
    assert answer.json()["__type"] == "MissingAuthenticationTokenException"
    assert emulator.store.count() == 0


def signed_post(
    emulator: CloudTrailEmulator, service: str, entries: list[dict[str, str]] | None = None
) -> requests.Response:
    url = f"{emulator.url}/PutAuditEvents?channelArn={quote(DEFAULT_CHANNEL_ARN, safe='')}"
    body = json.dumps({"auditEvents": entries or [audit_event()]}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("testing", "testing"), service, "us-east-1").add_auth(request)
    return requests.post(url, data=body, headers=dict(request.headers.items()), timeout=5)


def test_sigv4_must_be_scoped_to_cloudtrail_data(emulator: CloudTrailEmulator) -> None:
    wrong = signed_post(emulator, "cloudtrail")
    assert wrong.status_code == 403
    assert wrong.json()["__type"] == "InvalidSignatureException"
    assert "cloudtrail-data" in wrong.json()["message"]
    right = signed_post(emulator, "cloudtrail-data")
    assert right.status_code == 200
    assert len(right.json()["successful"]) == 1


def test_garbled_authorization_is_an_incomplete_signature(emulator: CloudTrailEmulator) -> None:
    answer = requests.post(
        f"{emulator.url}/PutAuditEvents?channelArn=x", data=b"{}", headers={"Authorization": "Bearer abc"}, timeout=5
    )
    assert answer.status_code == 403
    assert answer.headers["X-Amzn-ErrorType"] == "IncompleteSignatureException"


def test_the_documented_test_credentials_pass_and_a_wrong_secret_or_unknown_key_is_refused(
    emulator: CloudTrailEmulator,
) -> None:
    entries = [audit_event()]
    good = client_for(emulator)  # testing/testing, as moto's docs and the README
    assert good.put_audit_events(auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN, externalId="a b/c")["successful"]
    with pytest.raises(ClientError) as excinfo:
        client_for(emulator, secret="wrong").put_audit_events(auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("InvalidSignatureException", 403)
    assert "signature we calculated does not match" in str(excinfo.value)
    with pytest.raises(ClientError) as excinfo:
        client_for(emulator, access_key="AKIDOTHER").put_audit_events(
            auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN
        )
    assert error_of(excinfo) == ("UnrecognizedClientException", 403)
    assert emulator.store.count() == 1


def test_a_secret_of_ones_own_is_verified(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(access_key="x", secret_key="right")
    entries = [audit_event()]
    assert client_for(emulator, access_key="x", secret="right").put_audit_events(
        auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN
    )["successful"]
    with pytest.raises(ClientError) as excinfo:
        client_for(emulator).put_audit_events(auditEvents=entries, channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("UnrecognizedClientException", 403)


@pytest.mark.parametrize(
    ("minutes", "refusal"),
    [(-20, "Signature expired: "), (20, "Signature not yet current: "), (-120, "Signature expired: "), (10, None)],
)
def test_a_request_signed_more_than_15_minutes_off_the_clock_is_refused(
    emulator: CloudTrailEmulator, monkeypatch: pytest.MonkeyPatch, minutes: int, refusal: str | None
) -> None:
    signed_at = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=minutes)
    # botocore signs with this clock (SigV4Auth.add_auth): a client whose clock is that far off.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: signed_at)
    client = client_for(emulator)
    if refusal is None:
        assert client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)["successful"]
        return
    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)
    assert error_of(excinfo) == ("InvalidSignatureException", 403)
    message = excinfo.value.response["Error"]["Message"]
    assert message.startswith(refusal + signed_at.strftime("%Y%m%dT%H%M%SZ")), message
    assert emulator.store.count() == 0


def test_a_credential_scoped_to_another_region_is_refused(emulator: CloudTrailEmulator) -> None:
    with pytest.raises(ClientError) as excinfo:
        client_for(emulator, region="eu-west-1").put_audit_events(
            auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN
        )
    assert error_of(excinfo) == ("InvalidSignatureException", 403)
    assert "Credential should be scoped to a valid region, not 'eu-west-1'" in str(excinfo.value)


def test_accept_any_signature_takes_any_key_secret_clock_and_region(
    make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = make_emulator(accept_any_signature=True)
    signed_at = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: signed_at)
    client = client_for(emulator, access_key="anything", secret="else", region="ap-south-1")
    assert client.put_audit_events(auditEvents=[audit_event()], channelArn=DEFAULT_CHANNEL_ARN)["successful"]
    assert signed_post(emulator, "cloudtrail").status_code == 403  # still for the right service only


def test_the_signature_check_takes_the_signing_service_of_the_operation(emulator: CloudTrailEmulator) -> None:
    """One check for both APIs: `cloudtrail-data` (PutAuditEvents) and `cloudtrail` (the Lake query API)."""
    body = b'{"QueryStatement": "SELECT 1"}'
    request = AWSRequest(method="POST", url=f"{emulator.url}/", data=body, headers={"X-Amz-Target": "x"})
    SigV4Auth(Credentials("testing", "testing"), "cloudtrail", "us-east-1").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = f"127.0.0.1:{emulator.port}"  # signed by botocore, sent by the HTTP client
    emulator._authenticate("POST", "/", headers, body, service="cloudtrail")  # accepted
    with pytest.raises(RequestError, match="scoped to correct service: 'cloudtrail-data'"):
        emulator._authenticate("POST", "/", headers, body)
    with pytest.raises(RequestError, match="does not match"):
        emulator._authenticate("POST", "/", headers, body + b" ", service="cloudtrail")


# ---- stats, events, reset ------------------------------------------------------------


def test_stats_count_requests_events_and_errors(emulator: CloudTrailEmulator, client: Any) -> None:
    client.put_audit_events(
        auditEvents=[audit_event(0), audit_event(1), audit_event(2, UID=None), audit_event(3, UID="u" * 2000)],
        channelArn=DEFAULT_CHANNEL_ARN,
    )
    with pytest.raises(client.exceptions.ChannelNotFound):
        client.put_audit_events(auditEvents=[audit_event()], channelArn=OTHER_CHANNEL)
    requests.post(f"{emulator.url}/PutAuditEvents", data=b"{}", timeout=5)

    expected = {
        "requests": 3,
        "requests_ok": 1,
        "requests_throttled": 0,
        "requests_by_error": {"ChannelNotFound": 1, "MissingAuthenticationTokenException": 1},
        "events_received": 4,
        "events_accepted": 2,
        "events_failed": 2,
        "events_failed_by_code": {"FieldNotFound": 1, "FieldTooLong": 1},
    }
    assert emulator.stats() == expected
    assert requests.get(f"{emulator.url}/_emulator/stats", timeout=5).json() == expected


def test_events_endpoint_and_reset(emulator: CloudTrailEmulator, client: Any) -> None:
    client.put_audit_events(auditEvents=audit_events(3), channelArn=DEFAULT_CHANNEL_ARN)
    listed = requests.get(f"{emulator.url}/_emulator/events", params={"limit": 2}, timeout=5).json()
    assert listed["count"] == 3
    assert [e["id"] for e in listed["events"]] == ["cid-0-0", "cid-0-1"]
    assert listed["events"][0]["eventData"] == event_data(0)
    assert listed["events"][0]["channelArn"] == DEFAULT_CHANNEL_ARN

    assert post_control(emulator, "reset", {}).json() == {"status": "reset"}
    assert emulator.events() == []
    assert emulator.stats()["requests"] == 0


def test_unknown_paths_are_404(emulator: CloudTrailEmulator) -> None:
    answer = requests.post(f"{emulator.url}/PutEvents", data=b"{}", timeout=5)
    assert answer.status_code == 404
    assert answer.headers["X-Amzn-ErrorType"] == "UnknownOperationException"
    assert requests.get(f"{emulator.url}/_emulator/nope", timeout=5).status_code == 404


def test_concurrent_clients_all_land(emulator: CloudTrailEmulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(worker: int) -> int:
        client = client_for(emulator)
        total = 0
        for batch in range(5):
            answer = client.put_audit_events(
                auditEvents=audit_events(50, worker * 1000 + batch * 50), channelArn=DEFAULT_CHANNEL_ARN
            )
            total += len(answer["successful"])
        return total

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(send, range(4))) == 1000
    assert emulator.store.count() == 1000
    assert len({e.event_id for e in emulator.events()}) == 1000


# ---- the command line ----------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [FALCON_LAKE, "emulate", "cloudtrail", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.fullmatch(r"cloudtrail emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
    if match is None:
        process.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {process.communicate()[1]}")
    return process, match.group(1)


def lake_query(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FALCON_LAKE, "lake", "query", *args], capture_output=True, text=True, timeout=30)


def test_cli_serves_until_sigterm_and_lake_query_reads_the_db(tmp_path: Path) -> None:
    db = tmp_path / "lake.db"
    process, url = start_cli("--db", str(db), "--channel", f"{OTHER_CHANNEL}=ext-1", "--tps", "50")
    try:
        client = boto3.client(
            "cloudtrail-data",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        answer = client.put_audit_events(auditEvents=audit_events(3), channelArn=OTHER_CHANNEL, externalId="ext-1")
        assert len(answer["successful"]) == 3
        with pytest.raises(client.exceptions.ChannelNotFound):  # only the channels given are served
            client.put_audit_events(auditEvents=audit_events(1), channelArn=DEFAULT_CHANNEL_ARN)
        assert requests.get(f"{url}/_emulator/faults", timeout=5).json()["tps"] == 50.0

        # While the emulator runs (WAL): JSON output, SQLite JSON functions available.
        result = lake_query(
            "SELECT id, json_extract(event_data, '$.userIdentity.principalId') AS who FROM audit_events ORDER BY id",
            "--db",
            str(db),
            "--json",
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            {"id": "cid-0-0", "who": "analyst0@example.com"},
            {"id": "cid-0-1", "who": "analyst1@example.com"},
            {"id": "cid-0-2", "who": "analyst2@example.com"},
        ]
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
    assert returncode == 0

    table = lake_query("SELECT id, channel_arn FROM audit_events ORDER BY id", "--db", str(db))
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "channel_arn"]
    assert lines[2].split() == ["cid-0-0", OTHER_CHANNEL]
    assert lines[-1] == "(3 rows)"
    with sqlite3.connect(db) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(audit_events)")]
        # The first five columns are the original schema; the query API's came after (schema version 1).
        assert columns == ["event_id", "id", "channel_arn", "event_data", "received_at", "event_time", "envelope"]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_lake_query_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "lake.db"
    emulator = CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, db_path=str(db))).start()
    emulator.stop()

    bad = lake_query("SELEC nonsense", "--db", str(db))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "bad query" in bad.stderr

    readonly = lake_query("DELETE FROM audit_events", "--db", str(db))
    assert readonly.returncode == 2 and "readonly" in readonly.stderr

    missing = lake_query("SELECT 1", "--db", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope.db" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


def test_cli_ctrl_c_stops_cleanly() -> None:
    process, url = start_cli()
    assert requests.get(f"{url}/_emulator/health", timeout=5).json() == {"status": "ok"}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    assert process.stderr is not None and "Traceback" not in process.stderr.read()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--channel", "not-an-arn"], "not-an-arn"),
        (["--latency-ms", "fast"], "--latency-ms"),
        (["--throttle-rate", "1.5"], "--throttle-rate"),
        (["--tps", "0"], "--tps"),
    ],
)
def test_cli_bad_flags_fail_with_one_line(args: list[str], named: str) -> None:
    result = subprocess.run(
        [FALCON_LAKE, "emulate", "cloudtrail", "--port", "0", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert named in result.stderr


def test_cli_port_in_use_is_one_line(emulator: CloudTrailEmulator) -> None:
    result = subprocess.run(
        [FALCON_LAKE, "emulate", "cloudtrail", "--port", str(emulator.port)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{emulator.port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_help_documents_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "falcon_lake.cli", "emulate", "cloudtrail", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    for flag in (
        "--host", "--port", "--channel", "--db", "--tps", "--latency-ms", "--throttle-rate",
        "--internal-failure-rate", "--error-rate", "--seed", "--max-request-bytes", "--allow-unknown-fields",
        "--access-key", "--secret-key", "--verbose",
    ):  # fmt: skip
        assert flag in result.stdout
