#!/usr/bin/env bash
# ensure-debian-package.sh COMMAND PACKAGE WHY: install Debian's PACKAGE when COMMAND is missing (as root;
# without root this only says so and exits 0: the tests that need it then skip, or fail in CI).
set -euo pipefail

command="$1" package="$2" why="$3"
command -v "$command" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ensure: not root: cannot install $package ($why)" >&2
    exit 0
fi
echo "ensure: installing Debian's $package ($why)" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null; }
