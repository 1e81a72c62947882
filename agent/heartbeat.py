"""What each heartbeat of a session carries: the whole truth every ``full_every`` beats, and in between
only that the node lives and which containers changed (the split of Kubernetes' cheap lease from the node
status it sends when something changes). A fleet of thousands of idle containers then costs the
coordinator a few bytes a beat instead of every container's report; byte counters, rates and the host's
metrics ride the full beats.

Pure: the session hands each heartbeat over as it leaves for the coordinator, so what the next one leaves
out is measured against what really went, never against a beat the outbox replaced unsent.
"""

from __future__ import annotations

from collections.abc import Iterable

from protos import moorage_pb2 as pb

#: What a partial heartbeat compares: everything of a container's status but its counters and rates.
Key = tuple[str, int, int, bool, int, int, str, int, str]


def key(s: pb.InstanceStatus) -> Key:
    return (
        s.container_id,
        s.state,
        s.exit_code,
        s.oom_killed,
        s.restarts,
        s.started_at_ms,
        s.health,
        s.remove_at_ms,
        s.limit_error,
    )


class HeartbeatDiff:
    """One session's heartbeats, from its Hello (the first full report) on."""

    def __init__(self, full_every: int, hello: Iterable[pb.InstanceStatus]) -> None:
        #: 1: every heartbeat is full (a coordinator that does not know partial ones says 0).
        self.full_every = max(full_every, 1)
        #: What the coordinator was last told of each container; None: nothing is known there (the last
        #: heartbeat said the engine did not answer), so the next one is full.
        self._sent: dict[str, Key] | None = {s.instance_id: key(s) for s in hello}
        self._since_full = 0
        self._full_asked = False

    def ask_full(self) -> None:
        """The coordinator asked for the whole truth: the next heartbeat is full."""
        self._full_asked = True

    def shape(self, beat: pb.Heartbeat) -> pb.Heartbeat:
        """``beat`` as built (full) to the heartbeat that goes: itself, or the partial one it may be."""
        now = {s.instance_id: key(s) for s in beat.instances}
        self._since_full += 1
        sent, self._sent = self._sent, None if beat.engine_error else now
        if sent is None or beat.engine_error or self._full_asked or self._since_full >= self.full_every:
            self._since_full, self._full_asked = 0, False
            return beat
        partial = pb.Heartbeat(seq=beat.seq, sent_at_ms=beat.sent_at_ms, partial=True)
        partial.instances.extend(s for s in beat.instances if sent.get(s.instance_id) != now[s.instance_id])
        absent = pb.CONTAINER_STATE_ABSENT
        partial.instances.extend(pb.InstanceStatus(instance_id=i, state=absent) for i in sent if i not in now)
        return partial
