"""What each heartbeat of a session carries: the whole truth every ``full_every`` beats, and in between
only what changed (the split of Kubernetes' cheap lease from the node status it sends when something
changes). A container whose status changed goes in full; one whose byte counters or rates moved goes as
its counters alone; one that did neither goes not at all; host metrics ride the full beats. Counters are
never held back, so bandwidth is counted as closely as with full beats: a container that stops has its
bytes up to the beat before.

Pure: the session hands each heartbeat over as it leaves for the coordinator, so what the next one leaves
out is measured against what really went, never against a beat the outbox replaced unsent.
"""

from __future__ import annotations

from collections.abc import Iterable

from protos import moorage_pb2 as pb

#: What a status change is: everything of a container's status but its counters and rates.
Key = tuple[str, int, int, bool, int, int, str, int, str]
#: Its counters and rates.
Meter = tuple[int, int, float, float]


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


def meter(s: pb.InstanceStatus) -> Meter:
    return (s.rx_bytes, s.tx_bytes, s.rx_mbps, s.tx_mbps)


class HeartbeatDiff:
    """One session's heartbeats, from its Hello on. The first after the Hello is full (the Hello carries
    neither counters nor host metrics), then every ``full_every``-th; ``phase`` beats of the first round
    are skipped, so that agents that connected at once (their coordinator restarted) do not all send their
    full heartbeats in the same interval ever after."""

    def __init__(self, full_every: int, hello: Iterable[pb.InstanceStatus], phase: int = 0) -> None:
        #: 1: every heartbeat is full (a coordinator that does not know partial ones says 0).
        self.full_every = max(full_every, 1)
        #: What the coordinator was last told of each container; None: nothing is known there (the last
        #: heartbeat said the engine did not answer), so the next one is full.
        self._sent: dict[str, tuple[Key, Meter]] | None = {s.instance_id: (key(s), meter(s)) for s in hello}
        self._since_full = 0
        #: Beats the round after the first full heartbeat starts with.
        self._phase = phase % self.full_every
        self._full_asked = True

    def ask_full(self) -> None:
        """The coordinator asked for the whole truth: the next heartbeat is full."""
        self._full_asked = True

    def shape(self, beat: pb.Heartbeat) -> pb.Heartbeat:
        """``beat`` as built (full) to the heartbeat that goes: itself, or the partial one it may be."""
        now = {s.instance_id: (key(s), meter(s)) for s in beat.instances}
        self._since_full += 1
        sent, self._sent = self._sent, None if beat.engine_error else now
        if sent is None or beat.engine_error or self._full_asked or self._since_full >= self.full_every:
            self._since_full, self._phase, self._full_asked = self._phase, 0, False
            return beat
        partial = pb.Heartbeat(seq=beat.seq, sent_at_ms=beat.sent_at_ms, partial=True)
        for status in beat.instances:
            last = sent.get(status.instance_id)
            known, counted = now[status.instance_id]
            if last is None or last[0] != known:
                partial.instances.append(status)
            elif last[1] != counted:
                partial.counters.add(
                    instance_id=status.instance_id,
                    rx_bytes=status.rx_bytes,
                    tx_bytes=status.tx_bytes,
                    rx_mbps=status.rx_mbps,
                    tx_mbps=status.tx_mbps,
                )
        absent = pb.CONTAINER_STATE_ABSENT
        partial.instances.extend(pb.InstanceStatus(instance_id=i, state=absent) for i in sent if i not in now)
        return partial
