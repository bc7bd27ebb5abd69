"""`run_query`: the query API's lifecycle, paging and failures, driven by a scripted client."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from falcon_lake.ops.lake_client import LakeQueryError, run_query


class ScriptedClient:
    def __init__(self, statuses: list[str], pages: list[list[str]], error: str | None = None) -> None:
        self.statuses = statuses
        self.pages = pages
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def start_query(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("StartQuery", kwargs))
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "StartQuery")
        return {"QueryId": "q-1"}

    def describe_query(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("DescribeQuery", kwargs))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        answer: dict[str, Any] = {"QueryStatus": status, "QueryStatistics": {"BytesScanned": 1234}}
        if status in ("FAILED", "TIMED_OUT"):
            answer["ErrorMessage"] = "it broke"
        return answer

    def get_query_results(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("GetQueryResults", kwargs))
        index = int(kwargs.get("NextToken", "tok0")[3:])
        answer: dict[str, Any] = {"QueryResultRows": [[{"uid": uid}] for uid in self.pages[index]]}
        if index + 1 < len(self.pages):
            answer["NextToken"] = f"tok{index + 1}"
        return answer

    def cancel_query(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("CancelQuery", kwargs))
        return {}


def test_waits_for_the_end_then_reads_every_page() -> None:
    client = ScriptedClient(["QUEUED", "RUNNING", "RUNNING", "FINISHED"], [["a", "b"], ["c"], ["d"]])
    lines: list[str] = []
    result = run_query(client, "SELECT ...", "eds", progress=lines.append, progress_every=0, sleep=lambda s: None)
    assert result.columns == ["uid"] and [r[0] for r in result.rows] == ["a", "b", "c", "d"]
    assert result.bytes_scanned == 1234
    assert [c[0] for c in client.calls].count("GetQueryResults") == 3
    assert lines and "RUNNING" in lines[-1] and "scanned so far" in lines[-1]


@pytest.mark.parametrize(
    ("status", "words"),
    [("FAILED", "FAILED: it broke"), ("TIMED_OUT", "narrow the time range"), ("CANCELLED", "cancelled")],
)
def test_a_query_that_does_not_finish_is_one_line(status: str, words: str) -> None:
    with pytest.raises(LakeQueryError) as excinfo:
        run_query(ScriptedClient(["RUNNING", status], [[]]), "SELECT ...", "eds", sleep=lambda s: None)
    assert words in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("ThrottlingException", "throttled"),
        ("AccessDeniedException", "cloudtrail:GetEventDataStore, StartQuery"),
        ("EventDataStoreNotFoundException", "not found"),
        ("InvalidQueryStatementException", "rejected the query"),
    ],
)
def test_api_errors_say_what_to_do(code: str, words: str) -> None:
    with pytest.raises(LakeQueryError) as excinfo:
        run_query(ScriptedClient(["FINISHED"], [[]], error=code), "SELECT ...", "eds", sleep=lambda s: None)
    assert words in str(excinfo.value)


def test_a_timeout_cancels_the_query() -> None:
    client = ScriptedClient(["RUNNING"], [[]])
    with pytest.raises(LakeQueryError, match="cancelled it"):
        run_query(client, "SELECT ...", "eds", timeout=-1, sleep=lambda s: None)
    assert ("CancelQuery", {"EventDataStore": "eds", "QueryId": "q-1"}) in client.calls
