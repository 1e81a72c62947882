#!/usr/bin/env bash
# A throw-away PostgreSQL for the tests (`make test-env`, CI): every store and concurrency test runs on it
# as well as on SQLite.
#
# As root this installs Debian's postgresql when no server binaries are there, and starts a cluster of its
# own (data directory under /tmp, 127.0.0.1 only, run as the postgres user: initdb refuses root) when none
# answers on the port. The cluster outlives make (like dockerd) and is reused by the next run; its data is
# scratch (fsync off). The URL the tests use is written to tests/env/.cache/postgres.url. Without root it
# only explains itself and exits 0: the PostgreSQL variants then skip (or fail in CI).
set -euo pipefail

PORT=${MOORAGE_TEST_PG_PORT:-55432}
ROOT=${MOORAGE_TEST_PG_DIR:-/tmp/moorage-pg}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="$HERE/.cache"
URL="postgresql://postgres@127.0.0.1:$PORT/postgres"

say() { echo "ensure-postgres: $*" >&2; }
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
answers() { [ -n "$(bindir)" ] && "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

mkdir -p "$CACHE"
if answers; then
    echo "$URL" > "$CACHE/postgres.url"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "no PostgreSQL answers on 127.0.0.1:$PORT and not root: cannot start one; its tests will skip"
    rm -f "$CACHE/postgres.url"
    exit 0
fi

if [ -z "$(bindir)" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no PostgreSQL server binaries and no apt-get to install Debian's postgresql"
        exit 1
    fi
    say "installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(bindir)

mkdir -p "$ROOT"
chown postgres: "$ROOT"
if [ ! -f "$ROOT/data/PG_VERSION" ]; then
    rm -rf "$ROOT/data"
    su postgres -s /bin/sh -c "'$BIN/initdb' -D '$ROOT/data' -U postgres -A trust --no-sync -E UTF8" >/dev/null
fi
# setsid: the server must not belong to make's process group (it would be stopped with it).
setsid su postgres -s /bin/sh -c "'$BIN/pg_ctl' -D '$ROOT/data' -l '$ROOT/server.log' -w -t 60 start \
    -o \"-h 127.0.0.1 -p $PORT -k '$ROOT' -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=300\"" >/dev/null
if ! answers; then
    say "PostgreSQL did not come up; see $ROOT/server.log"
    tail -n 20 "$ROOT/server.log" >&2 || true
    exit 1
fi
echo "$URL" > "$CACHE/postgres.url"
say "PostgreSQL ready on 127.0.0.1:$PORT"
