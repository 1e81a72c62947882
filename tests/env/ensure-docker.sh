#!/usr/bin/env bash
# Make a Docker engine reachable for the tests (`make test-env`, CI).
#
# CI machines start without a running engine, so as root this installs Debian's docker.io when dockerd is
# missing and starts dockerd detached from make (setsid + nohup) so it outlives the make process. Without
# root it only explains itself and exits 0: the Docker tests then skip (or fail under MOORAGE_REQUIRE_DOCKER=1).
# Idempotent and silent when the engine already answers.
set -euo pipefail

LOG=/var/log/moorage-dockerd.log
WAIT_S=60

engine_up() { docker info >/dev/null 2>&1; }
say() { echo "ensure-docker: $*" >&2; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "no reachable Docker engine and not root: cannot install or start one; Docker tests will skip"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "dockerd is missing and apt-get is not available to install docker.io"
        exit 1
    fi
    say "installing docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

# Only start a daemon when none runs (it may just be slow to answer): a second dockerd would fight over
# /var/lib/docker and the socket. dockerd writes its pid file on start; no procps needed to check it.
dockerd_running() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
if ! dockerd_running; then
    say "starting dockerd (log: $LOG)"
    # setsid: own session, so make's process group ending (or a Ctrl-C) does not take the daemon with it.
    setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
    disown || true
fi

for _ in $(seq 1 "$WAIT_S"); do
    if engine_up; then
        exit 0
    fi
    sleep 1
done

say "Docker engine did not answer 'docker info' within ${WAIT_S}s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1
