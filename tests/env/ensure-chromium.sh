#!/usr/bin/env bash
# Debian's chromium: the status page's test drives it headless (Playwright's own browser downloads are not
# reachable here; the tests point Playwright at this one). As root it is installed when missing; without
# root this only says so and exits 0: that test then skips (or fails in CI).
set -euo pipefail

command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium: not root: cannot install chromium" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
