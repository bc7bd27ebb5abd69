"""PutAuditEventsClient over real sockets: the same requests and answers as boto3's own client,
the emulator's SigV4 check, every failure the sender handles, and no secret in any error."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from emulators.cloudtrail import DEFAULT_CHANNEL_ARN, ChannelConfig, CloudTrailEmulator, CloudTrailEmulatorConfig
from falcon_lake.settings import load_publisher
from publisher.batch import AuditEventBatch, BatchEntry, entry_size, event_data_checksum
from publisher.cloudtrail import CloudTrailSender
from publisher.main import cloudtrail_client
from publisher.put_client import PutAuditEventsClient
from publisher.rate_limit import AdaptiveRateLimiter
from tests.support import free_port

CHANNEL = DEFAULT_CHANNEL_ARN
SECRET = "SecretKeyNeverShown-5f4e3d2c1b0a"

# ---- a server that records requests and answers from a script ------------------------------------

Answer = tuple[int, dict[str, str], bytes]
HANG, CLOSE = "hang", "close"  # never answer; close the connection without answering


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class AnsweringServer:
    """Real HTTP on 127.0.0.1: records every request and answers with the next step of the script
    (an Answer, a callable of the request, HANG or CLOSE); the last step repeats."""

    def __init__(self, *steps: Answer | Callable[[Seen], Answer] | str) -> None:
        self.steps = list(steps)
        self.seen: list[Seen] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                seen = Seen(
                    self.command,
                    self.path,
                    list(self.headers.items()),
                    self.rfile.read(int(self.headers["Content-Length"])),
                )
                owner.seen.append(seen)
                step = owner.steps.pop(0) if len(owner.steps) > 1 else owner.steps[0]
                if step == HANG:
                    owner.release.wait(10)
                if isinstance(step, str):
                    self.close_connection = True
                    return
                status, headers, body = step(seen) if callable(step) else step
                head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Length: {len(body)}"]
                head += [f"{name}: {value}" for name, value in headers.items()]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., AnsweringServer]]:
    servers: list[AnsweringServer] = []

    def make(*steps: Answer | Callable[[Seen], Answer] | str) -> AnsweringServer:
        servers.append(AnsweringServer(*steps))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def ids_of(seen: Seen) -> list[str]:
    return [entry["id"] for entry in json.loads(seen.body)["auditEvents"]]


def accept_all(seen: Seen) -> Answer:
    answer = {"successful": [{"id": i, "eventID": str(uuid.uuid4())} for i in ids_of(seen)], "failed": []}
    return 200, {"x-amzn-RequestId": "req-ok"}, json.dumps(answer).encode()


# ---- clients ----------------------------------------------------------------------------------------


def session(secret: str = "testing", token: str | None = None) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key=secret, aws_session_token=token, region_name="us-east-1"
    )


def boto3_client(url: str, secret: str = "testing", token: str | None = None) -> Any:
    """boto3's own client, allowed one attempt as ours makes."""
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    return session(secret, token).client("cloudtrail-data", endpoint_url=url, config=config)


def lean_client(url: str, secret: str = "testing", token: str | None = None, **config: Any) -> PutAuditEventsClient:
    made = session(secret, token)
    client = made.client("cloudtrail-data", endpoint_url=url, config=Config(**config))
    return PutAuditEventsClient(client, made.get_credentials())


def events(count: int, start: int = 0, checksum: bool = False) -> list[dict[str, str]]:
    """Valid events for the emulator's channel, some with quotes, backslashes and non-ASCII text."""
    out = []
    for n in range(start, start + count):
        data = {
            "version": "1.0",
            "userIdentity": {"type": "AuthActivityAuditEvent", "principalId": f"田中{n}@example.jp"},
            "eventSource": "crowdstrike",
            "eventName": "userAuthenticate",
            "eventTime": "2024-11-26T08:00:00Z",
            "UID": f"cid-0-{n}",
            "recipientAccountId": "123456789012",
            "additionalEventData": {"raw": {"note": 'say "hi" \\ 😀', "offset": n}},
        }
        entry = {"id": f"cid-0-{n}", "eventData": json.dumps(data, ensure_ascii=False)}
        if checksum:
            entry["eventDataChecksum"] = event_data_checksum(entry["eventData"])
        out.append(entry)
    return out


@pytest.fixture
def emulator() -> Iterator[CloudTrailEmulator]:
    channels = (ChannelConfig(CHANNEL), ChannelConfig(CHANNEL + "-ext", external_id="ext id/1"))
    with CloudTrailEmulator(CloudTrailEmulatorConfig(port=0, seed=7, channels=channels)) as started:
        yield started


# ---- the same as boto3, byte for byte ---------------------------------------------------------------

FROZEN = datetime.datetime(2024, 11, 26, 8, 0, 0)


@pytest.mark.parametrize(("checksum", "external_id"), [(True, None), (False, "ext id/1 ÄÖ&=?")])
def test_the_signed_request_is_the_one_boto3_sends(
    serve: Callable[..., AnsweringServer], monkeypatch: pytest.MonkeyPatch, checksum: bool, external_id: str | None
) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN)  # both sign at the same instant
    server = serve(accept_all)
    kwargs: dict[str, Any] = {"channelArn": CHANNEL, "auditEvents": events(3, checksum=checksum)}
    if external_id is not None:
        kwargs["externalId"] = external_id
    boto3_client(server.url, SECRET, token="session-token").put_audit_events(**kwargs)
    lean_client(server.url, SECRET, token="session-token").put_audit_events(**kwargs)

    theirs, ours = server.seen
    assert (ours.method, ours.target, ours.body) == (theirs.method, theirs.target, theirs.body)
    assert ours.target.startswith("/PutAuditEvents?channelArn=arn%3Aaws%3Acloudtrail%3A")

    def signed(seen: Seen) -> list[tuple[str, str]]:
        return [(name, value) for name, value in seen.headers if name not in ("User-Agent", "amz-sdk-invocation-id")]

    assert signed(ours) == signed(theirs)
    names = {name for name, _ in ours.headers}
    assert {"Authorization", "X-Amz-Date", "X-Amz-Security-Token", "Content-Type", "amz-sdk-request"} <= names
    assert dict(ours.headers)["X-Amz-Date"] == "20241126T080000Z"
    assert "falcon-lake/" in dict(ours.headers)["User-Agent"]
    assert uuid.UUID(dict(ours.headers)["amz-sdk-invocation-id"])


def test_the_body_is_as_large_as_the_batch_counted_it(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(accept_all)
    sent = events(20, checksum=True)
    lean_client(server.url).put_audit_events(channelArn=CHANNEL, auditEvents=sent)
    on_the_wire = len(server.seen[0].body)
    assert on_the_wire <= batch(sent).size <= on_the_wire + 2  # never under: a batch that fits, fits


ANSWERS: list[Answer] = [
    (
        200,
        {"x-amzn-RequestId": "r1", "Content-Type": "application/json"},
        b'{"successful":[{"id":"a","eventID":"e1","extra":1}],"failed":[{"id":"b","errorCode":"InvalidData",'
        b'"errorMessage":null},{"id":"c","errorCode":"Throttling","errorMessage":"slow down"}],"other":true}',
    ),
    (200, {"x-amz-request-id": "r2", "x-amz-id-2": "host-2"}, b""),
    (200, {}, b"<html>a proxy's page</html>"),
    (
        400,
        {"x-amzn-RequestId": "r3", "X-Amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/"},
        b'{"message":"Rate exceeded"}',
    ),
    (400, {"x-amzn-RequestId": "r4"}, b'{"__type":"com.amazonaws.cloudtraildata#ChannelNotFound","message":"gone"}'),
    (400, {"X-Amzn-ErrorType": "ValidationException"}, b'{"Message":"1 validation error detected"}'),
    (403, {"x-amzn-RequestId": "r5"}, b'{"code":"AccessDeniedException","message":"not allowed"}'),
    (404, {"X-Amzn-ErrorType": "UnknownOperationException"}, b""),
    (400, {}, b"not JSON at all"),
    (429, {}, b""),
    (500, {}, b"<html><body>Internal Server Error</body></html>"),
    (502, {}, b'{"message":"bad gateway"}'),
    (503, {"x-amzn-RequestId": "r6"}, b""),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda a: f"{a[0]}-{a[2][:24]!r}")
def test_every_answer_comes_back_as_boto3_returns_or_raises_it(
    serve: Callable[..., AnsweringServer], answer: Answer
) -> None:
    server = serve(answer)
    outcomes: list[Any] = []
    for client in (boto3_client(server.url), lean_client(server.url)):
        # botocore's retry handler notes in every answer that its one attempt was its last; ours has none.
        try:
            answered = client.put_audit_events(channelArn=CHANNEL, auditEvents=events(1))
            answered["ResponseMetadata"].pop("MaxAttemptsReached", None)
            outcomes.append(answered)
        except ClientError as exc:
            exc.response["ResponseMetadata"].pop("MaxAttemptsReached", None)
            outcomes.append((type(exc).__name__, exc.response, str(exc).replace(" (reached max retries: 0)", "")))
    theirs, ours = outcomes
    assert ours == theirs
    if answer[0] >= 300:
        assert isinstance(ours, tuple) and ours[1]["ResponseMetadata"]["HTTPStatusCode"] == answer[0]


# ---- against the emulator, which checks SigV4 as AWS does ------------------------------------------


def test_one_hundred_events_are_accepted_and_stored_as_sent(emulator: CloudTrailEmulator) -> None:
    sent = events(100, checksum=True)
    answer = lean_client(emulator.url).put_audit_events(channelArn=CHANNEL, auditEvents=sent)
    assert answer["failed"] == [] and [e["id"] for e in answer["successful"]] == [e["id"] for e in sent]
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200 and answer["ResponseMetadata"]["RequestId"]
    assert [e.event_data for e in emulator.events()] == [json.loads(e["eventData"]) for e in sent]


def test_the_publishers_own_client_follows_the_sdk_endpoint_variable(
    emulator: CloudTrailEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDTRAIL_DATA", emulator.url)
    settings = load_publisher({"CLOUDTRAIL_LAKE_CHANNEL_ARN": CHANNEL})
    answer = cloudtrail_client(settings).put_audit_events(channelArn=CHANNEL, auditEvents=events(2))
    assert len(answer["successful"]) == 2


def test_per_event_failures_come_back_in_failed(emulator: CloudTrailEmulator) -> None:
    sent = events(3, checksum=True)
    sent[1]["eventDataChecksum"] = event_data_checksum("something else")
    answer = lean_client(emulator.url).put_audit_events(channelArn=CHANNEL, auditEvents=sent)
    assert [(f["id"], f["errorCode"]) for f in answer["failed"]] == [("cid-0-1", "InvalidChecksum")]
    emulator.set_faults(throttle_rate=1.0)
    answer = lean_client(emulator.url).put_audit_events(channelArn=CHANNEL, auditEvents=events(2))
    assert [f["errorCode"] for f in answer["failed"]] == ["Throttling", "Throttling"]


@pytest.mark.parametrize(
    ("change", "code", "status"),
    [
        ({"force_error": "ThrottlingException"}, "ThrottlingException", 400),
        ({"channelArn": CHANNEL.replace("demo", "gone")}, "ChannelNotFound", 400),
        ({"auditEvents": events(101)}, "ValidationException", 400),
        ({"channelArn": CHANNEL + "-ext"}, "ChannelInsufficientPermission", 400),
        ({"secret": "not-the-secret"}, "InvalidSignatureException", 403),
    ],
)
def test_request_errors_raise_client_error_with_code_and_status(
    emulator: CloudTrailEmulator, change: dict[str, Any], code: str, status: int
) -> None:
    change = dict(change)
    if "force_error" in change:
        emulator.set_faults(force_error=change.pop("force_error"))
    client = lean_client(emulator.url, secret=change.pop("secret", "testing"))
    with pytest.raises(ClientError) as excinfo:
        client.put_audit_events(**{"channelArn": CHANNEL, "auditEvents": events(1), **change})
    response = excinfo.value.response
    assert (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]) == (code, status)
    assert response["ResponseMetadata"]["RequestId"] and response["Error"]["Message"]


def test_the_external_id_travels_in_the_signed_query(emulator: CloudTrailEmulator) -> None:
    answer = lean_client(emulator.url).put_audit_events(
        channelArn=CHANNEL + "-ext", auditEvents=events(1), externalId="ext id/1"
    )
    assert len(answer["successful"]) == 1


def test_role_credentials_are_refreshed_before_they_sign(emulator: CloudTrailEmulator) -> None:
    refreshed: list[int] = []

    def refresh() -> dict[str, Any]:
        refreshed.append(1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {"access_key": "testing", "secret_key": "testing", "token": None, "expiry_time": expiry.isoformat()}

    expired = {
        "access_key": "testing",
        "secret_key": "stale-secret",
        "token": None,
        "expiry_time": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).isoformat(),
    }
    credentials = RefreshableCredentials.create_from_metadata(expired, refresh, "test")
    client = PutAuditEventsClient(boto3_client(emulator.url), credentials)
    assert len(client.put_audit_events(channelArn=CHANNEL, auditEvents=events(1))["successful"]) == 1
    assert refreshed == [1]


def test_without_credentials_nothing_is_sent(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(accept_all)
    with pytest.raises(NoCredentialsError):
        PutAuditEventsClient(boto3_client(server.url), None).put_audit_events(channelArn=CHANNEL, auditEvents=events(1))
    assert server.seen == []


@pytest.mark.parametrize("failure", ["refused", HANG, CLOSE])
def test_no_answer_raises_the_botocore_error_of_the_failure(
    serve: Callable[..., AnsweringServer], failure: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if failure == "refused" else serve(failure).url
    client = lean_client(url, read_timeout=0.5, connect_timeout=1)
    expected = {"refused": EndpointConnectionError, HANG: ReadTimeoutError, CLOSE: ConnectionClosedError}[failure]
    with pytest.raises(expected) as excinfo:
        client.put_audit_events(channelArn=CHANNEL, auditEvents=events(1))
    assert isinstance(excinfo.value, BotoCoreError)


def test_the_secret_is_in_no_error_and_no_log_line(
    emulator: CloudTrailEmulator, serve: Callable[..., AnsweringServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[Exception] = []
    for url in (emulator.url, f"http://127.0.0.1:{free_port()}", serve(HANG).url):
        client = lean_client(url, SECRET, read_timeout=0.5, connect_timeout=1)
        try:
            client.put_audit_events(channelArn=CHANNEL, auditEvents=events(1))
        except (ClientError, BotoCoreError) as exc:
            errors.append(exc)
    assert [type(e).__name__ for e in errors] == ["ClientError", "EndpointConnectionError", "ReadTimeoutError"]
    for exc in errors:
        shown = f"{exc} {exc!r} {getattr(exc, 'response', '')!r} {exc.__dict__!r}"
        assert SECRET not in shown
    assert caplog.text and SECRET not in caplog.text


# ---- the sender with this client ---------------------------------------------------------------------


def batch(sent: list[dict[str, str]]) -> AuditEventBatch:
    out = AuditEventBatch(0)
    for offset, e in enumerate(sent):
        out.add(BatchEntry(e["id"], e["eventData"], 0, offset, None, entry_size(e["id"], e["eventData"], True)))
    return out


def sender(client: PutAuditEventsClient) -> CloudTrailSender:
    return CloudTrailSender(client, CHANNEL, None, True, AdaptiveRateLimiter(1000.0), backoff_base_s=0.001)


def never() -> bool:
    return False


def test_the_sender_delivers_rejects_and_splits_through_the_emulator(emulator: CloudTrailEmulator) -> None:
    sent = events(5)
    sent[2]["eventData"] = json.dumps({"version": "1.0"})  # required fields missing: the event's fault
    result = sender(lean_client(emulator.url)).deliver(batch(sent), never)
    assert [e.id for e, _, _ in result.rejected] == ["cid-0-2"] and len(result.accepted) == 4
    assert result.channel_error is None and result.request_ids[0]

    sent = events(3, start=10)
    sent[1]["id"] = "not a valid id!"  # the whole request is refused: one by one finds it
    result = sender(lean_client(emulator.url)).deliver(batch(sent), never)
    assert [(e.id, code) for e, code, _ in result.rejected] == [("not a valid id!", "ValidationException")]
    assert sorted(e.id for e in result.accepted) == ["cid-0-10", "cid-0-12"]


def test_the_sender_holds_a_batch_for_a_missing_channel_and_its_probe_says_so(emulator: CloudTrailEmulator) -> None:
    emulator.set_channel_present(CHANNEL, False)
    client_sender = sender(lean_client(emulator.url))
    result = client_sender.deliver(batch(events(2)), never)
    assert result.channel_error is not None and result.channel_error.startswith("ChannelNotFound")
    assert result.remaining is not None and len(result.remaining) == 2
    assert client_sender.probe().channel_error is not None
    emulator.set_channel_present(CHANNEL, True)
    assert client_sender.probe().channel_error is None


@pytest.mark.parametrize(
    "refusal",
    [
        (400, {"X-Amzn-ErrorType": "ThrottlingException"}, b'{"message":"Rate exceeded"}'),
        (429, {}, b""),
        (503, {}, b""),
        CLOSE,
    ],
)
def test_the_sender_retries_throttling_5xx_and_lost_connections_then_delivers(
    serve: Callable[..., AnsweringServer], refusal: Answer | str
) -> None:
    server = serve(refusal, accept_all)
    client_sender = sender(lean_client(server.url))
    result = client_sender.deliver(batch(events(4)), never)
    assert len(result.accepted) == 4 and result.retries == 1 and result.channel_error is None
    assert [ids_of(seen) for seen in server.seen] == [[f"cid-0-{n}" for n in range(4)]] * 2
    throttled = refusal != CLOSE and refusal[0] in (400, 429)
    assert (client_sender._limiter.rate < 1000.0) == throttled
