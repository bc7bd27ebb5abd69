"""The SSM offsets parameter, through boto3 against moto over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from falcon_lake.offset_store import OffsetStoreError, SsmOffsetStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ssm(endpoint: str) -> object:
    return boto3.client("ssm", region_name="us-east-1", endpoint_url=endpoint)


def test_reads_old_gateway_format_and_writes_json(moto_endpoint: str, unique_name: Callable[[str], str]) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    ssm.put_parameter(Name=name, Value="{'0': 48643}", Type="String")  # type: ignore[attr-defined]
    store = SsmOffsetStore(ssm, name, min_interval_s=5)
    assert store.read() == {"0": 48643}
    store.advance({"0": 48650, "1": 3})
    assert store.flush(force=True)
    stored = ssm.get_parameter(Name=name)["Parameter"]["Value"]  # type: ignore[attr-defined]
    assert json.loads(stored) == {"0": 48650, "1": 3}


def test_missing_parameter_reads_empty_and_is_created(moto_endpoint: str, unique_name: Callable[[str], str]) -> None:
    name = unique_name("offsets")
    store = SsmOffsetStore(_ssm(moto_endpoint), name)
    assert store.read() == {}
    store.advance({"0": 1})
    assert store.flush(force=True) and store.read() == {"0": 1}


def test_writes_are_coalesced_and_never_backwards(moto_endpoint: str, unique_name: Callable[[str], str]) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    clock = FakeClock()
    store = SsmOffsetStore(ssm, name, min_interval_s=5, clock=clock)
    for offset in range(1, 101):
        store.advance({"0": offset})
        store.flush()
        clock.now += 0.1
    assert store.writes == 2  # at start, then once 5 s later: never per event

    # Another writer (an old gateway, another publisher) moved feed 0 ahead and added feed 9.
    ssm.put_parameter(Name=name, Value='{"0": 500, "9": 1}', Type="String", Overwrite=True)  # type: ignore[attr-defined]
    store.advance({"0": 120, "1": 4})
    assert store.flush(force=True)
    assert store.read() == {"0": 500, "1": 4, "9": 1}
    assert not store.flush(force=True)  # nothing new: no write


def test_unreadable_value_is_a_clear_error(moto_endpoint: str, unique_name: Callable[[str], str]) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    ssm.put_parameter(Name=name, Value="garbage", Type="String")  # type: ignore[attr-defined]
    with pytest.raises(OffsetStoreError, match=name):
        SsmOffsetStore(ssm, name).read()


class RacingSsm:
    """An SSM client that lets another writer write between this one's read and its write:
    the moment two publishers flush at once."""

    def __init__(self, ssm: Any, other: Callable[[], None]) -> None:
        self._ssm = ssm
        self._other: Callable[[], None] | None = other

    def get_parameter(self, **kwargs: Any) -> Any:
        return self._ssm.get_parameter(**kwargs)

    def put_parameter(self, **kwargs: Any) -> Any:
        if self._other is not None:
            other, self._other = self._other, None
            other()
        return self._ssm.put_parameter(**kwargs)


def test_two_writers_at_the_same_moment_never_move_a_feed_backwards(
    moto_endpoint: str, unique_name: Callable[[str], str]
) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    clock = FakeClock()
    b = SsmOffsetStore(ssm, name, min_interval_s=5, clock=clock)
    b.advance({"1": 10})

    def b_flushes() -> None:
        assert b.flush(force=True)

    # A read {} and then B wrote {"1": 10} before A's write of {"0": 5}: A's write drops feed 1.
    a = SsmOffsetStore(RacingSsm(ssm, b_flushes), name, min_interval_s=5, clock=clock)
    a.advance({"0": 5})
    assert a.flush(force=True)
    assert a.read() == {"0": 5}, "the race happened: feed 1 moved backwards for a moment"
    # B reads back what it wrote at its next interval and repairs it.
    clock.now += 5
    assert b.due()
    assert b.flush()
    assert b.read() == {"0": 5, "1": 10} and b.repairs == 1
    clock.now += 5
    assert not b.flush() and not a.flush(), "nothing moved: a read, no write"
    assert a.read() == {"0": 5, "1": 10}


def test_a_write_that_is_overwritten_at_once_is_repaired_by_its_read_back(
    moto_endpoint: str, unique_name: Callable[[str], str]
) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    ssm.put_parameter(Name=name, Value='{"0": 1}', Type="String")  # type: ignore[attr-defined]

    class Overwritten(RacingSsm):
        def put_parameter(self, **kwargs: Any) -> Any:
            answer = self._ssm.put_parameter(**kwargs)
            if self._other is not None:  # another writer's older merge lands right after ours
                self._other = None
                self._ssm.put_parameter(Name=name, Value='{"0": 1}', Type="String", Overwrite=True)
            return answer

    store = SsmOffsetStore(Overwritten(ssm, lambda: None), name)
    store.advance({"0": 7})
    assert store.flush(force=True)
    assert store.read() == {"0": 7} and store.writes == 2 and store.repairs == 1


class ThrottledSsm:
    """An SSM client whose first `failures` writes are throttled, as SSM answers a burst of writers."""

    def __init__(self, ssm: Any, failures: int) -> None:
        self._ssm = ssm
        self.failures = failures

    def get_parameter(self, **kwargs: Any) -> Any:
        return self._ssm.get_parameter(**kwargs)

    def put_parameter(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            raise ClientError(error, "PutParameter")
        return self._ssm.put_parameter(**kwargs)


def test_the_last_write_before_exit_is_retried_through_throttling(
    moto_endpoint: str, unique_name: Callable[[str], str]
) -> None:
    ssm = _ssm(moto_endpoint)
    name = unique_name("offsets")
    store = SsmOffsetStore(ThrottledSsm(ssm, failures=2), name)
    store.advance({"0": 41, "1": 7})
    assert not store.flush(force=True), "a throttled write is deferred, not lost"
    assert store.flush_before_exit(timeout_s=10)
    assert store.read() == {"0": 41, "1": 7}

    stuck = SsmOffsetStore(ThrottledSsm(ssm, failures=1000), name)
    stuck.advance({"0": 99})
    assert not stuck.flush_before_exit(timeout_s=0.5), "gives up within its budget and says so"
    assert stuck.read() == {"0": 41, "1": 7}
