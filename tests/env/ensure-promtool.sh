#!/usr/bin/env bash
# promtool (Debian's prometheus package) checks both daemons' /metrics in tests/integration/test_agent_metrics.py.
# As root it is installed when missing (the package's server is not started); without root this only says
# so and exits 0: that check then skips (or fails in CI).
set -euo pipefail

command -v promtool >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ensure-promtool: not root: cannot install prometheus (promtool)" >&2
    exit 0
fi
echo "ensure-promtool: installing Debian's prometheus for promtool" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
