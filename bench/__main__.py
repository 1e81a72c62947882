"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

from bench import deploy, placement, tls


def main() -> None:
    deploy.main()
    print()
    tls.main()
    print()
    placement.main()


if __name__ == "__main__":
    main()
