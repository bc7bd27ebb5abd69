"""PutAuditEvents sent without botocore's per-call machinery, with botocore's wire format and answers.

The sender threads are a large part of the publisher's CPU near CloudTrail's ceiling, and in a
boto3 `cloudtrail-data` call much of it goes to per-call machinery (parameter handling,
serializer, event hooks, endpoint rules, retry context, response parser): measured against
the emulator, about 2.6 ms of CPU per request of 100 events through boto3 and 1.8 ms here,
both counting what any client must do (JSON escaping, SHA-256, HTTP).

This client writes the one request itself, as the service model describes it (rest-json:
`POST /PutAuditEvents?channelArn=..&externalId=..`, body `{"auditEvents": [...]}` in
json.dumps' default form, as botocore writes it), and takes from botocore what fidelity needs:
a boto3 client made once gives the endpoint (honouring AWS_ENDPOINT_URL_CLOUDTRAIL_DATA, FIPS,
...), the region, the HTTP session botocore configured (pool, timeouts, TLS verification, CA
bundle, proxies, client certificate) and the exception classes; the session's credentials are
frozen per request (role credentials refresh); SigV4Auth signs. Answers come back in botocore's
shapes: the dict it returns, the ClientError (or modeled subclass) it raises, the BotoCoreError
subclasses its HTTP session raises. tests/integration/test_put_client.py checks requests and
answers against boto3's own client.
"""

from __future__ import annotations

import http.client
import json
import platform
import uuid
from typing import Any

import botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import NoCredentialsError
from botocore.utils import lowercase_dict, percent_encode_sequence

from falcon_lake import __version__

OPERATION = "PutAuditEvents"
USER_AGENT = f"falcon-lake/{__version__} Botocore/{botocore.__version__} lang/python#{platform.python_version()}"


class PutAuditEventsClient:
    """`put_audit_events(channelArn=, auditEvents=, externalId=)` as a boto3 cloudtrail-data client
    has it, with the same answer and exceptions, but exactly one attempt per call: the caller owns
    every retry. Thread-safe (the HTTP session is a connection pool; the rest is read-only)."""

    def __init__(self, client: Any, credentials: Credentials | None) -> None:
        """`client`: a boto3 cloudtrail-data client, only read here, never called; `credentials`:
        those of the session that made it (None sends nothing: NoCredentialsError, as botocore)."""
        service = client.meta.service_model
        operation = service.operation_model(OPERATION)
        self._url = client.meta.endpoint_url.removesuffix("/") + operation.http["requestUri"]
        self._region: str = client.meta.region_name
        self._signing_name: str = service.signing_name
        self._credentials = credentials
        # The client's own URLLib3Session, exactly as botocore's EndpointCreator configured it from
        # the client config and the environment. `_endpoint` is private: botocore is pinned by
        # constraints.txt, and the tests fail at once if it moves.
        self._http = client._endpoint.http_session
        self._exceptions = client.exceptions
        self._service = service
        # The answer's lists and the fields botocore keeps of each entry (it drops unknown or null ones).
        output = operation.output_shape.members
        self._answer_fields = {name: tuple(output[name].member.members) for name in output}

    def put_audit_events(
        self,
        *,
        channelArn: str,  # boto3's parameter names: either client fits the sender
        auditEvents: list[dict[str, str]],
        externalId: str | None = None,
    ) -> dict[str, Any]:
        """One signed request. Returns botocore's dict (`successful`, `failed`, `ResponseMetadata`);
        raises ClientError (a modeled subclass where the service model has one) for an HTTP error
        status, or BotoCoreError (EndpointConnectionError, ReadTimeoutError, ...) when no answer came."""
        if self._credentials is None:
            raise NoCredentialsError
        query = {"channelArn": channelArn}
        if externalId is not None:
            query["externalId"] = externalId
        request = AWSRequest(
            "POST",
            f"{self._url}?{percent_encode_sequence(query)}",
            {"Content-Type": "application/json", "User-Agent": USER_AGENT},
            json.dumps({"auditEvents": auditEvents}).encode(),
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), self._signing_name, self._region).add_auth(request)
        # Unsigned, as botocore adds them: what AWS sees of an SDK request's attempts.
        request.headers["amz-sdk-invocation-id"] = str(uuid.uuid4())
        request.headers["amz-sdk-request"] = "attempt=1; max=1"
        response = self._http.send(request.prepare())
        status: int = response.status_code
        headers = response.headers
        if status >= 300:
            error = self._error(status, headers, response.content)
            raise self._exceptions.from_code(error["Error"]["Code"])(error, OPERATION)
        metadata: dict[str, Any] = {}
        if "x-amzn-requestid" in headers:
            metadata["RequestId"] = headers["x-amzn-requestid"]
        elif "x-amz-request-id" in headers:
            metadata["RequestId"] = headers["x-amz-request-id"]
            metadata["HostId"] = headers.get("x-amz-id-2", "")
        answer: dict[str, Any] = {"ResponseMetadata": _metadata(metadata, status, headers)}
        body = _json_object(response.content)
        for name, fields in self._answer_fields.items():
            entries = body.get(name)
            if entries is not None:
                answer[name] = [_structure(fields, entry) for entry in entries]
        return answer

    def _error(self, status: int, headers: Any, content: bytes) -> dict[str, Any]:
        """The `response` of the ClientError botocore raises for this answer (its RestJSONParser:
        code from X-Amzn-ErrorType, else the body's __type or code, else the HTTP status)."""
        metadata: dict[str, Any] = {}
        text = content.strip()
        if status >= 500 and (not text or text.startswith(b"<html>")):
            # A proxy's or load balancer's page, not the service's JSON.
            error = {"Code": str(status), "Message": http.client.responses.get(status, "")}
            return {"Error": error, "ResponseMetadata": _metadata(metadata, status, headers)}
        body = _json_object(content)
        code = body.get("__type", str(status))
        if "x-amzn-errortype" in headers:
            code = headers["x-amzn-errortype"]
        elif "code" in body or "Code" in body:
            code = body.get("code", body.get("Code", ""))
        code = str(code).split(":", 1)[0].rsplit("#", 1)[-1]
        if "x-amzn-requestid" in headers:
            metadata["RequestId"] = headers["x-amzn-requestid"]
        response: dict[str, Any] = {
            "Error": {"Message": body.get("message", body.get("Message", "")), "Code": code},
            "ResponseMetadata": _metadata(metadata, status, headers),
        }
        modeled = self._service.shape_for_error_code(code)
        if modeled is not None:  # botocore adds the modeled error's fields (here `message`) beside Error
            response.update(_structure(tuple(modeled.members), body) or {})
        return response


def _metadata(metadata: dict[str, Any], status: int, headers: Any) -> dict[str, Any]:
    metadata["HTTPStatusCode"] = status
    metadata["HTTPHeaders"] = lowercase_dict(headers)
    metadata["RetryAttempts"] = 0
    return metadata


def _json_object(content: bytes) -> dict[str, Any]:
    """The body as botocore reads it: {} when empty, {"message": text} when not a JSON object."""
    if not content:
        return {}
    text = content.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"message": text}
    return parsed if isinstance(parsed, dict) else {"message": text}


def _structure(fields: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    """A structure as botocore parses it: only the modeled fields, none that are null."""
    if not isinstance(value, dict):
        return None
    return {name: value[name] for name in fields if value.get(name) is not None}
