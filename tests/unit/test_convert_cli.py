"""`falcon-lake convert` as a user runs it: the installed command, stdin and files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from publisher.convert_cli import read_items

ROOT = Path(__file__).resolve().parent.parent.parent
COMMAND = [str(Path(sys.executable).parent / "falcon-lake"), "convert"]
CORPUS = ROOT / "tests" / "data" / "falcon_events.ndjson"
CID = "0123456789abcdef0123456789abcdef"


def event(
    offset: int, operation: str = "userAuthenticate", service: str = "CrowdStrike Authentication"
) -> dict[str, Any]:
    return {
        "metadata": {
            "customerIDString": CID,
            "offset": offset,
            "eventType": "AuthActivityAuditEvent",
            "eventCreationTime": 1732608000123,
            "version": "1.0",
        },
        "event": {
            "UserId": "analyst@example.com",
            "UserIp": "198.51.100.20",
            "OperationName": operation,
            "ServiceName": service,
        },
    }


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, timeout=60, check=False)


def lines(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.decode().splitlines()]


def test_ndjson_from_stdin_gives_one_audit_event_per_line() -> None:
    data = b"".join(json.dumps(event(n)).encode() + b"\n" for n in (1, 2, 3))
    done = run(stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    out = lines(done.stdout)
    assert [item["id"] for item in out] == [f"{CID}-0-{n}" for n in (1, 2, 3)]
    assert out[0]["eventData"]["recipientAccountId"] == "123456789012"
    assert out[0]["eventData"]["eventName"] == "userAuthenticate"


def test_file_and_dash_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text(json.dumps(event(5)) + "\n")
    from_file, from_stdin = run(str(path)), run("-", stdin=path.read_bytes())
    assert from_file.returncode == from_stdin.returncode == 0
    assert from_file.stdout == from_stdin.stdout != b""


def test_concatenated_pretty_printed_objects_are_read() -> None:
    data = (json.dumps(event(1), indent=2) + json.dumps(event(2), indent=4) + "\n\n" + json.dumps(event(3))).encode()
    done = run(stdin=data)
    assert done.returncode == 0
    assert [item["id"][-1] for item in lines(done.stdout)] == ["1", "2", "3"]


def test_feed_and_channel_arn_options() -> None:
    done = run(
        "--feed",
        "7",
        "--channel-arn",
        "arn:aws:cloudtrail:eu-west-1:210987654321:channel/x",
        stdin=json.dumps(event(9)).encode(),
    )
    (item,) = lines(done.stdout)
    assert item["id"] == f"{CID}-7-9"
    assert item["eventData"]["recipientAccountId"] == "210987654321"


def test_explain_adds_a_line_per_filtered_or_rejected_event() -> None:
    data = "\n".join(
        [
            json.dumps(event(1)),
            json.dumps(event(2, "streamStarted", "Crowdstrike Streaming API")),
            "{not json",
            json.dumps(event(4)),
        ]
    ).encode()
    done = run("--explain", stdin=data)
    assert done.returncode == 0
    out = lines(done.stdout)
    assert out[0]["id"].endswith("-0-1")
    assert out[1] == {
        "filtered": {
            "line": 2,
            "rule": "service-name",
            "detail": "service 'Crowdstrike Streaming API' is not selected (selected: 'crowdstrike authentication')",
        }
    }
    assert out[2]["rejected"]["line"] == 3 and out[2]["rejected"]["code"] == "undecodable"
    assert out[3]["id"].endswith("-0-4")
    assert b"4 events from stdin: 2 converted, 1 filtered, 1 rejected" in done.stderr


def test_without_explain_filtered_events_are_silent() -> None:
    done = run(stdin=json.dumps(event(2, "streamStarted", "Crowdstrike Streaming API")).encode())
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_bad_lines_are_reported_on_stderr_with_line_numbers_and_reading_goes_on() -> None:
    data = b"\n".join(
        [
            json.dumps(event(1)).encode(),
            b"garbage",
            b'{"metadata": {"offset": 3}, "event": {}}',
            b"\xff\xfe not utf-8",
            b"[1, 2]",
            json.dumps(event(6)).encode(),
        ]
    )
    done = run(stdin=data)
    assert done.returncode == 0
    assert [item["id"][-1] for item in lines(done.stdout)] == ["1", "6"]
    errors = done.stderr.decode().splitlines()
    assert errors == [
        "falcon-lake convert: stdin line 2: undecodable: not JSON (Expecting value)",
        "falcon-lake convert: stdin line 3: invalid-event: metadata.customerIDString: expected string, missing or null",
        "falcon-lake convert: stdin line 4: undecodable: not JSON (Expecting value)",
        "falcon-lake convert: stdin line 5: undecodable: not a JSON object: got array",
    ]


def test_filter_options_select_events() -> None:
    data = "\n".join(
        [json.dumps(event(1, "createUser", "Falcon Console")), json.dumps(event(2)), json.dumps(event(3, "deleteUser"))]
    ).encode()
    done = run(
        "--include-service",
        "falcon console,CrowdStrike Authentication",
        "--exclude-operation",
        "deleteuser",
        stdin=data,
    )
    assert [item["id"][-1] for item in lines(done.stdout)] == ["1", "2"]
    done = run("--preset", "all-user-activity", "--event-type", "UserActivityAuditEvent", stdin=data)
    assert done.stdout == b""
    done = run("--preset", "all-user-activity", "--max-age-days", "1", "--explain", stdin=data)
    assert {item["filtered"]["rule"] for item in lines(done.stdout)} == {"max-age"}


def test_corpus_file_converts_and_reports_its_rejects() -> None:
    done = run("--preset", "all-user-activity", str(CORPUS))
    assert done.returncode == 0
    assert len(lines(done.stdout)) == 22
    assert done.stderr.count(b"\n") == 8  # lines 25 to 32


def test_unreadable_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run(str(tmp_path / "missing.ndjson"))
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        == f"falcon-lake convert: cannot read {tmp_path / 'missing.ndjson'}: No such file or directory\n"
    )
    done = run(str(tmp_path))
    assert done.returncode == 2 and b"cannot read" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], b"invalid choice: 'nope'"),
        (["--channel-arn", "arn:aws:cloudtrail:x"], b"malformed CloudTrail channel ARN"),
        (["--event-type", "DetectionSummaryEvent"], b"unknown event type DetectionSummaryEvent"),
        (["--max-age-days", "-1"], b"maximum event age must be a positive number of days"),
        (["--feed", "a/b"], b"--feed 'a/b'"),
    ],
)
def test_bad_options_exit_2_naming_the_problem(args: list[str], message: bytes) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert b"Traceback" not in done.stderr


def test_help_documents_every_option() -> None:
    done = run("--help")
    assert done.returncode == 0
    for option in (
        "--preset",
        "--event-type",
        "--include-service",
        "--exclude-service",
        "--include-operation",
        "--exclude-operation",
        "--max-age-days",
        "--feed",
        "--channel-arn",
        "--explain",
        "gateway",
        "all-user-activity",
    ):
        assert option.encode() in done.stdout


def test_read_items_numbers_lines_and_resumes_after_garbage() -> None:
    data = b'\n{"a": 1}\n{"b":\n  2}{"c": 3}\n{"broken": [\n  oops\n{"d": 4}\n'
    items = list(read_items(data))
    assert [(item.line, item.raw, item.error is None) for item in items] == [
        (2, b'{"a": 1}', True),
        (3, b'{"b":\n  2}', True),
        (4, b'{"c": 3}', True),
        (5, None, False),
        (7, b'{"d": 4}', True),
    ]
