"""The flow-control core: every transition driven by hand, in every order, in milliseconds."""

from __future__ import annotations

import itertools

import pytest

from publisher.batch import AuditEventBatch, BatchEntry
from publisher.flow import FlowConfig, FlowControl, Outcome, Send, rate_share

CONFIG = FlowConfig(max_buffered=1000, max_in_flight=2, batch_max_events=10, linger_s=0.2, keepalive_s=1.0)


def feed(flow: FlowControl, partition: int, offsets: range, now: float = 0.0) -> None:
    """Records consumed and converted to audit events."""
    for offset in offsets:
        generation = flow.consumed(partition, offset, f"f{partition}", 1000 + offset)
        assert generation is not None
        flow.converted(generation, BatchEntry(f"id-{partition}-{offset}", "{}", partition, offset, None, 10), now)


def accept(send: Send) -> Outcome:
    assert send.batch is not None
    return Outcome(accepted=list(send.batch.entries))


def down(send: Send, reason: str = "ChannelNotFound: gone") -> Outcome:
    return Outcome(channel_error=reason, remaining=send.batch)


def settle(flow: FlowControl, now: float) -> None:
    """Commit what is finished and acknowledge it, as the broker would."""
    for p, offset in flow.commits(now).items():
        flow.commit_acknowledged(p, offset)


# ---- reading -------------------------------------------------------------------------------------


def test_the_consume_budget_bounds_what_is_held_and_frees_as_records_finish() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    assert flow.consume_budget() == CONFIG.consume_chunk
    feed(flow, 0, range(900))
    assert flow.consume_budget() == 100
    feed(flow, 0, range(900, 1000))
    assert flow.consume_budget() == 0 and flow.paused() == set(), "backpressure is the budget, not pause()"
    sends = flow.sends(1.0)
    for send in sends:
        flow.request_finished(send, accept(send), 1.0)
    assert flow.consume_budget() == len(sends) * 10


def test_a_budget_used_up_for_long_pauses_everything_so_the_loop_keeps_polling_then_resumes() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0, 1])
    feed(flow, 0, range(1000))
    flow.tick(0.0)
    flow.tick(0.5)
    assert flow.paused() == set() and not flow.must_poll()
    flow.tick(1.0)
    assert flow.paused() == {0, 1} and flow.must_poll()
    for now in range(2, 30):  # deliver and commit until half the buffer is free
        assert flow.must_poll()
        sends = flow.sends(now)
        for send in sends:
            flow.request_finished(send, accept(send), now)
        settle(flow, now)
        flow.tick(now)
        if flow.unfinished() <= 500:
            break
    assert flow.unfinished() <= 500 and flow.paused() == set()


def test_records_of_partitions_not_owned_are_not_tracked() -> None:
    flow = FlowControl(CONFIG)
    assert flow.consumed(3, 1, "f", 1) is None
    assert flow.unfinished() == 0 and flow.consume_budget() == 0 and flow.must_poll()


# ---- sending and the window ----------------------------------------------------------------------


def test_batches_wait_for_linger_unless_full_or_forced() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(5), now=0.0)
    assert flow.sends(0.1) == []
    assert [len(s.batch or []) for s in flow.sends(0.2)] == [5]
    feed(flow, 0, range(5, 8), now=0.3)
    assert [len(s.batch or []) for s in flow.sends(0.3, force=True)] == [3]


def test_a_lingering_batch_fills_up_while_its_partition_could_not_send_it_anyway() -> None:
    """Past linger, a batch is sealed only when it could go out: with the window full it
    stays open and takes the records that follow, so the quota is not spent on part-full
    requests during a backlog."""
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(20), now=0.0)
    assert [len(s.batch or []) for s in flow.sends(0.0)] == [10, 10], "the window is full"
    feed(flow, 0, range(20, 23), now=0.0)
    assert flow.sends(0.5) == [], "linger is over, but nothing could be sent"
    feed(flow, 0, range(23, 30), now=0.6)
    assert flow.commits(0.6) == {}, "nothing finished yet"
    assert flow.sends(0.7) == []
    feed(flow, 0, range(30, 32), now=0.7)
    assert flow.sends(0.7) == [], "the full batch of 20..29 waits for the window"
    flow.commit_acknowledged(0, 20)  # the window frees: the full batch goes first
    assert [len(s.batch or []) for s in flow.sends(0.8)] == [10]
    assert flow.sends(0.85) == [], "30..31 have waited less than linger"
    assert [len(s.batch or []) for s in flow.sends(0.9)] == [2], "linger over and room in the window"
    feed(flow, 0, range(32, 35), now=1.0)
    assert flow.sends(1.0) == []
    assert [len(s.batch or []) for s in flow.sends(5.0, force=True)] == [], "force seals, the window holds"
    flow.commit_acknowledged(0, 32)
    assert [len(s.batch or []) for s in flow.sends(5.0)] == [3]


def test_the_window_counts_sent_batches_past_the_last_acknowledged_commit() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(50))
    first = flow.sends(0.0)
    assert len(first) == 2, "max_in_flight batches, no more"
    for send in first:
        flow.request_finished(send, accept(send), 0.0)
    assert flow.sends(0.0) == [], "finished is not enough: the commit must be acknowledged"
    commits = flow.commits(0.0)
    assert commits == {0: 20}
    assert flow.sends(0.0) == [], "asked for, not acknowledged"
    flow.commit_acknowledged(0, 20)
    assert len(flow.sends(0.0)) == 2


def test_a_failed_commit_stops_sending_at_the_window_and_is_asked_again() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(100))
    sent = 0
    now = 0.0
    for _ in range(10):  # commits keep failing (a broker restart): sending stops at the window
        sends = flow.sends(now)
        sent += len(sends)
        for send in sends:
            flow.request_finished(send, accept(send), now)
        for p in flow.commits(now):
            flow.commit_failed(p, now)
        now += 0.5
    assert sent == CONFIG.max_in_flight, "a crash now re-sends at most the window"
    assert flow.commits(now + CONFIG.commit_retry_s) == {0: 20}, "asked for again after commit_retry_s"
    flow.commit_acknowledged(0, 20)
    assert len(flow.sends(now)) == 2


def test_an_older_commit_stored_after_a_newer_one_is_followed_by_the_newer_one_again() -> None:
    """Two commits retried by librdkafka across a broker restart can land out of order: the
    broker then holds the older offset, and the partition must commit its offset again
    (otherwise the group's committed offset stays behind for good once the partition is idle)."""
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(20))
    (first, second) = flow.sends(0.0)
    flow.request_finished(first, accept(first), 0.0)
    assert flow.commits(0.0) == {0: 10}
    flow.request_finished(second, accept(second), 0.0)
    assert flow.commits(0.0) == {0: 20}
    assert flow.commit_acknowledged(0, 20) == {"f0": 1019}
    assert flow.commits(0.1) == {}, "acknowledged: nothing to ask"
    assert flow.commit_acknowledged(0, 10) == {}, "nothing new for SSM"
    assert flow.commits(0.1) == {0: 20}, "the broker went back to 10: asked again at once"
    assert flow.commits(0.2) == {}, "then on the usual schedule"
    assert flow.commit_acknowledged(0, 20) == {"f0": 1019}, "the same feed offsets (SSM keeps them)"
    assert flow.commits(0.2 + CONFIG.commit_retry_s) == {}
    assert len(flow.sends(0.2)) == 0 and flow.window(0) == 0


def test_a_commit_at_revocation_leaves_the_other_partitions_commits_to_their_schedule() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0, 1])
    feed(flow, 0, range(10))
    feed(flow, 1, range(10))
    for send in flow.sends(1.0):
        flow.request_finished(send, accept(send), 1.0)
    assert flow.commits(1.0, only=[0], urgent=True) == {0: 10}
    assert flow.commits(1.0, only=[0], urgent=True) == {0: 10}, "urgent: asked again"
    assert flow.commits(1.0) == {1: 10}


def test_out_of_order_finishes_commit_only_the_contiguous_prefix() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(20))
    a, b = flow.sends(0.0)
    flow.request_finished(b, accept(b), 0.0)
    assert flow.commits(0.0) == {}
    flow.request_finished(a, accept(a), 0.0)
    assert flow.commits(0.0) == {0: 20}
    assert flow.commit_acknowledged(0, 20) == {"f0": 1019}, "the feed offsets for SSM come with the ack"


def test_filtered_and_dead_lettered_records_finish_the_prefix() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    gen = flow.consumed(0, 0, "f", 1)
    assert gen is not None
    flow.consumed(0, 1, "f", 2)
    flow.finished(0, gen, 1)
    assert flow.commits(0.0) == {}
    flow.finished(0, gen, 0)
    assert flow.commits(0.0) == {0: 2}


def test_rejected_entries_come_back_for_the_dlq() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(3))
    (send,) = flow.sends(1.0)
    assert send.batch is not None
    bad = send.batch.entries[1]
    rejected = flow.request_finished(
        send, Outcome(accepted=[send.batch.entries[0], send.batch.entries[2]], rejected=[(bad, "InvalidData", "x")]), 1
    )
    assert rejected == [(bad, "InvalidData", "x")]
    assert flow.commits(1.0) == {0: 1}


# ---- the channel -----------------------------------------------------------------------------------


def test_channel_down_with_held_batches_probes_the_oldest_one_with_capped_backoff_then_resumes_all() -> None:
    cfg = FlowConfig(max_in_flight=2, batch_max_events=10, probe_base_s=1.0, probe_cap_s=4.0)
    flow = FlowControl(cfg)
    flow.assigned([0, 1])
    feed(flow, 0, range(30))
    feed(flow, 1, range(30))
    out = flow.sends(1.0)
    assert len(out) == 4
    for send in out:
        flow.request_finished(send, down(send), 1.0)
    assert not flow.channel_up and flow.paused() == {0, 1} and flow.consume_budget() == 0
    assert flow.sends(1.5) == []
    probes_at = []
    now = 1.0
    while len(probes_at) < 5:
        now += 0.25
        for send in flow.sends(now):
            assert send.probe and flow.sends(now) == [], "one probe at a time"
            probes_at.append(now)
            flow.request_finished(send, down(send), now)
    gaps = [b - a for a, b in itertools.pairwise(probes_at)]
    assert gaps == [2.0, 4.0, 4.0, 4.0], "doubling, capped"
    now += 4.0
    (probe,) = flow.sends(now)
    assert probe.batch is not None and probe.batch.entries[0].offset == 0, "the oldest held batch"
    flow.request_finished(probe, accept(probe), now)
    assert flow.channel_up and flow.paused() == set()
    again = flow.sends(now)
    assert {s.partition for s in again} == {0, 1} and not any(s.probe for s in again)
    assert sum(len(s.batch or []) for s in again) == 30, "every held batch is sent again"


def test_channel_down_with_nothing_held_probes_with_a_request_that_stores_nothing() -> None:
    flow = FlowControl(FlowConfig(probe_base_s=1.0))
    flow.assigned([0])
    feed(flow, 0, range(1))
    (send,) = flow.sends(1.0)
    flow.request_finished(send, Outcome(channel_error="ChannelNotFound"), 1.0)  # nothing remained
    (probe,) = flow.sends(2.0)
    assert probe.probe and probe.batch is None
    flow.request_finished(probe, Outcome(), 2.0)
    assert flow.channel_up


def test_a_probe_abandoned_by_a_revocation_is_replaced_at_once() -> None:
    flow = FlowControl(FlowConfig(probe_base_s=1.0))
    flow.assigned([0, 1])
    feed(flow, 0, range(5))
    (send,) = flow.sends(1.0)
    flow.request_finished(send, down(send), 1.0)
    (probe,) = flow.sends(2.0)
    assert probe.partition == 0
    flow.revoked([0])
    flow.request_finished(probe, None, 2.1)
    (next_probe,) = flow.sends(2.1)
    assert next_probe.probe and next_probe.batch is None, "partition 1 holds nothing: the empty probe"


def test_a_late_success_from_before_the_outage_brings_the_channel_up() -> None:
    flow = FlowControl(FlowConfig())
    flow.assigned([0])
    feed(flow, 0, range(200))
    a, b, *_ = flow.sends(1.0)
    flow.request_finished(a, down(a), 1.0)
    flow.request_finished(b, accept(b), 1.1)
    assert flow.channel_up


# ---- rebalances ---------------------------------------------------------------------------------------

EVENTS = ["assign", "revoke", "lose", "down", "up", "finish", "ack"]


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS, 5)))
def test_any_order_of_rebalance_and_channel_events_ends_consuming_once_the_channel_works(
    order: tuple[str, ...],
) -> None:
    """Whatever happens in whatever order, once the partitions are assigned and the channel
    answers, every owned partition reads again and the held work goes out: no stall."""
    flow = FlowControl(FlowConfig(max_in_flight=2, batch_max_events=10, probe_base_s=1.0, probe_cap_s=2.0))
    flow.assigned([0, 1])
    feed(flow, 0, range(25))
    feed(flow, 1, range(25))
    now = 1.0
    out = flow.sends(now)
    for event in order:
        now += 0.5
        if event == "assign":
            flow.assigned([0])
            feed(flow, 0, range(10), now)
        elif event == "revoke":
            flow.revoked([0])
        elif event == "lose":
            flow.lost([1])
        elif event == "down" and out:
            send = out.pop(0)
            flow.request_finished(send, down(send), now)
        elif event == "up" and out:
            send = out.pop(0)
            flow.request_finished(send, accept(send), now)
        elif event == "finish":
            for send in out:
                flow.request_finished(send, accept(send), now)
            out = []
        elif event == "ack":
            settle(flow, now)
    for send in out:  # requests still out finish (abandoned when their partition is gone)
        current = flow.generation(send.partition) == send.generation
        flow.request_finished(send, down(send) if current else None, now)
    flow.assigned([p for p in (0, 1) if flow.generation(p) is None])
    for p in (0, 1):
        if flow.unfinished(p) == 0:
            feed(flow, p, range(100, 105), now)
    # The channel works again: probes and sends succeed from now on.
    for _ in range(20):
        now += 1.0
        for send in flow.sends(now, force=True):
            flow.request_finished(send, accept(send) if send.batch else Outcome(), now)
        settle(flow, now)
        flow.tick(now)
    assert flow.channel_up and flow.paused() == set()
    assert flow.unfinished() == 0, "everything held was delivered"
    assert flow.consume_budget() > 0
    assert flow.in_flight() == 0


def test_a_revoked_then_reassigned_partition_starts_fresh_and_late_results_are_ignored() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(10))
    (old,) = flow.sends(1.0)
    flow.revoked([0])
    flow.assigned([0])
    assert flow.request_finished(old, accept(old), 1.0) == []
    assert flow.unfinished() == 0 and flow.commits(1.0) == {}
    assert flow.in_flight() == 0


@pytest.mark.parametrize("order", list(itertools.permutations(["assign", "revoke", "lost", "commit_ack"])))
def test_commit_acknowledgements_in_any_order_with_rebalances_never_move_a_window_of_another_generation(
    order: tuple[str, ...],
) -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(20))
    for send in flow.sends(0.0):
        flow.request_finished(send, accept(send), 0.0)
    asked = flow.commits(0.0)
    reported: dict[str, int] = {}
    for event in order:
        if event == "assign":
            flow.assigned([0])
        elif event == "revoke":
            flow.revoked([0])
        elif event == "lost":
            flow.lost([0])
        else:
            for p, offset in asked.items():
                reported.update(flow.commit_acknowledged(p, offset))
    assert flow.window(0) <= CONFIG.max_in_flight
    assert flow.in_flight() == 0
    # The broker stored the commit, so SSM learns its feed offsets even when the ack comes
    # after the partition left (an async commit in flight at a revocation or a loss).
    assert reported == {"f0": 1019}


def test_a_late_acknowledgement_reports_the_feeds_of_every_commit_it_covers_once() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0])
    feed(flow, 0, range(10))
    (first,) = flow.sends(0.0)
    flow.request_finished(first, accept(first), 0.0)
    assert flow.commits(0.0) == {0: 10}
    flow.lost([0])  # the commit to 10 is in flight, unacknowledged
    flow.assigned([0])
    feed(flow, 0, range(10, 20))  # the new generation read on from 10
    (second,) = flow.sends(0.0)
    flow.request_finished(second, accept(second), 0.0)
    assert flow.commits(0.0) == {0: 20}
    assert flow.commit_acknowledged(0, 10) == {"f0": 1009}
    assert flow.commit_acknowledged(0, 20) == {"f0": 1019}
    assert flow.commit_acknowledged(0, 20) == {}, "reported once"
    assert flow.commit_acknowledged(1, 5) == {}, "a partition never owned reports nothing"


def test_stopping_pauses_everything_and_reads_nothing() -> None:
    flow = FlowControl(CONFIG)
    flow.assigned([0, 2])
    flow.stop()
    assert flow.paused() == {0, 2} and flow.consume_budget() == 0


# ---- the group's rate --------------------------------------------------------------------------------


def test_the_rate_follows_the_partitions_with_backlog() -> None:
    assert rate_share(95, {0, 1}, {0, 1, 2}, 3) == pytest.approx(95 * 2 / 3)
    assert rate_share(95, {2}, {0, 1, 2}, 3) == pytest.approx(95 / 3)
    assert rate_share(95, {0}, {0}, 3) == pytest.approx(95), "one feed with a backlog gets the whole budget"
    assert rate_share(95, {1, 2}, {0}, 3) == pytest.approx(0.95), "idle: only a small floor"
    assert rate_share(95, {1, 2}, {0}, 3, busy=True) == pytest.approx(47.5), "work the reading did not see"
    assert rate_share(95, set(), {0}, 3) == 0.0
    assert rate_share(95, {0}, set(), 3) == pytest.approx(95 / 3), "no backlog anywhere: by partitions owned"
    assert rate_share(95, {0}, None, 3) == pytest.approx(95 / 3), "before the first reading"


@pytest.mark.parametrize("members", [1, 2, 3, 5])
def test_the_shares_of_a_group_add_up_to_the_rate_within_the_floors(members: int) -> None:
    partitions = 6
    owned = [set(range(partitions)[m::members]) for m in range(members)]
    for backlog in ({0}, {0, 1}, {1, 4, 5}, set(range(partitions)), set()):
        total = sum(rate_share(95, mine, backlog, partitions) for mine in owned)
        assert 95 * 0.99 <= total <= 95 + 0.95 * (members - 1) + 1e-9 <= 100


def test_the_flow_control_recomputes_the_share_as_ownership_and_backlog_change() -> None:
    flow = FlowControl(CONFIG, total_partitions=3)
    flow.assigned([0])
    assert flow.rate_share(95) == pytest.approx(95 / 3)
    flow.group_backlog({0, 1}, 3)
    assert flow.rate_share(95) == pytest.approx(47.5)
    flow.assigned([1])
    assert flow.rate_share(95) == pytest.approx(95)
    flow.revoked([0, 1])
    assert flow.rate_share(95) == 0.0


def test_batches_keep_their_offsets_in_order() -> None:
    batch = AuditEventBatch(0)
    batch.add(BatchEntry("a", "{}", 0, 5, None, 1), 3.0)
    assert batch.opened_at == 3.0
