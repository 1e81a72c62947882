#!/usr/bin/env bash
# A name that resolves to several loopback addresses, as one DNS name with several A records for a cluster of
# coordinators would (tests/integration/test_cluster.py gives it to an agent). Appended to /etc/hosts once,
# as root; without root it only says so and exits 0: that test then skips (or fails in CI).
set -euo pipefail

NAME=coordinators.moorage.test
say() { echo "ensure-test-names: $*" >&2; }

if getent ahostsv4 "$NAME" | awk '{print $1}' | sort -u | tr '\n' ' ' | grep -q '127.0.0.2 127.0.0.3'; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "not root: $NAME stays unresolved"
    exit 0
fi
printf '127.0.0.2 %s\n127.0.0.3 %s\n' "$NAME" "$NAME" >> /etc/hosts
say "$NAME resolves to 127.0.0.2 and 127.0.0.3"
