"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

from bench import coordinator_restart, deploy, heartbeats, placement, tls


def main() -> None:
    deploy.main()
    print()
    tls.main()
    print()
    placement.main([])
    print()
    heartbeats.main()
    print()
    coordinator_restart.main([])


if __name__ == "__main__":
    main()
