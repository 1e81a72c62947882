"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

from bench import deploy


def main() -> None:
    deploy.main()


if __name__ == "__main__":
    main()
