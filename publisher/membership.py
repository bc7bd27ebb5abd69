"""Noticing a consumer that fell out of its group and never came back.

After a session timeout (a broker restart that outlasted `session.timeout.ms`) librdkafka
revokes the partitions and rejoins the group by itself. Rarely it does not: a restart on a
loaded machine left the publisher's consumer with a coordinator request queued and never
sent, out of the group for good, while the broker had long removed it and the partitions'
records waited (seen twice in about twenty broker-restart runs under heavy load; librdkafka
has open reports of consumers stuck after coordinator failures, e.g. confluentinc/librdkafka
#5586). Nothing inside the process clears that state; a new process does at once.

`MembershipWatch` is the check, without I/O: fed with each reading of the group's members
(`publisher.group_lag`, every few seconds from the broker), it answers with a reason once this
member has owned no partition and been absent from the group's member list for
`OUT_OF_GROUP_S`. The loop then stops with exit code 1 so that its orchestrator (ECS, Kubernetes,
compose `restart: unless-stopped`) starts a fresh process. A member the group keeps without
partitions (more publishers than partitions) is listed, so it is never taken for stuck, and a
broker that cannot be asked is no evidence either way.
"""

from __future__ import annotations

import threading
from typing import Any

OUT_OF_GROUP_S = 60.0  # four session timeouts: a normal rejoin takes a few seconds


class MembershipWatch:
    def __init__(self, limit_s: float = OUT_OF_GROUP_S) -> None:
        self.limit_s = limit_s
        self._since: float | None = None

    def observe(
        self, now: float, owns_partitions: bool, member_id: str | None, members: frozenset[str] | None
    ) -> str | None:
        """A reason to restart when this member has been out of the group for `limit_s`, else None."""
        if members is None:
            return None
        if owns_partitions or (member_id and member_id in members):
            self._since = None
            return None
        if self._since is None:
            self._since = now
            return None
        if now - self._since < self.limit_s:
            return None
        return (
            f"out of consumer group for {now - self._since:.0f}s: this member ({member_id or 'no member id'}) is "
            f"not among the group's {len(members)} member(s) on the broker and the Kafka client has not "
            "rejoined; exiting so that a fresh process joins"
        )


def close_within(consumer: Any, timeout_s: float) -> bool:
    """Close a consumer whose group state may be stuck (its LeaveGroup can wait for a coordinator
    that never answers); True if it closed within `timeout_s`."""
    closing = threading.Thread(target=consumer.close, name="consumer-close", daemon=True)
    closing.start()
    closing.join(timeout_s)
    return not closing.is_alive()
