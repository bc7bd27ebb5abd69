"""The out-of-group check: a member missing from its group for a minute asks for a fresh process."""

from __future__ import annotations

from publisher.membership import MembershipWatch


def test_a_member_absent_from_the_group_for_the_limit_is_reported_once_the_limit_has_passed() -> None:
    watch = MembershipWatch(limit_s=60)
    assert watch.observe(0.0, False, "m-1", frozenset({"m-2"})) is None, "the first sight starts the clock"
    assert watch.observe(59.0, False, "m-1", frozenset()) is None
    reason = watch.observe(60.0, False, "m-1", frozenset({"m-2"}))
    assert reason is not None
    assert "out of consumer group for 60s" in reason and "m-1" in reason and "1 member(s)" in reason


def test_no_member_id_at_all_counts_as_absent() -> None:
    watch = MembershipWatch(limit_s=10)
    assert watch.observe(0.0, False, None, frozenset()) is None
    assert watch.observe(10.0, False, None, frozenset()) is not None


def test_listed_members_and_owners_are_never_stuck_and_coming_back_resets_the_clock() -> None:
    watch = MembershipWatch(limit_s=10)
    assert watch.observe(0.0, False, "m-1", frozenset()) is None
    assert watch.observe(9.0, False, "m-1", frozenset({"m-1"})) is None, "listed: an idle member of a larger group"
    assert watch.observe(15.0, False, "m-1", frozenset()) is None, "absent again: the clock starts anew"
    assert watch.observe(24.0, True, None, frozenset()) is None, "owning partitions: delivering"
    assert watch.observe(30.0, False, "m-1", frozenset()) is None
    assert watch.observe(39.0, False, "m-1", frozenset()) is None
    assert watch.observe(40.0, False, "m-1", frozenset()) is not None


def test_a_group_that_could_not_be_read_is_no_evidence() -> None:
    watch = MembershipWatch(limit_s=10)
    assert watch.observe(0.0, False, "m-1", frozenset()) is None
    assert watch.observe(100.0, False, "m-1", None) is None, "the broker could not be asked"
    assert watch.observe(100.0, False, "m-1", frozenset()) is not None, "the earlier absence still counts"
