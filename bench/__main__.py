"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

from bench import (
    agent_soak,
    cluster,
    coordinator_restart,
    deploy,
    events,
    heartbeats,
    heartbeats_ceilings,
    heartbeats_cluster,
    placement,
    tls,
)


def main() -> None:
    deploy.main()
    print()
    tls.main()
    print()
    placement.main([])
    print()
    cluster.main([])
    print()
    heartbeats.main()
    print()
    heartbeats_ceilings.main((1_000, 3_000))
    print()
    heartbeats_cluster.main([])
    print()
    events.main()
    print()
    coordinator_restart.main([])
    print()
    agent_soak.main(["--idle"])
    print()
    agent_soak.main([])


if __name__ == "__main__":
    main()
