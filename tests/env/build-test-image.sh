#!/usr/bin/env bash
# Build the local test image moorage-test/busybox:latest from Debian's busybox-static.
#
# No registry is reachable from the dev machines or CI, so the image is imported from a tiny rootfs instead
# of pulled. Its default command serves /www (index.html says "moorage-test-ok") with busybox httpd on
# $SERVER_PORT (default 8080), the way a hosted server listens on its allocation. It also carries the host's
# openssl binary (with the shared libraries it links), so a test can run a mutual-TLS `openssl s_server` in a
# container. Bump IMAGE_REV when the
# contents change so existing machines rebuild instead of keeping a stale image.
set -euo pipefail

IMAGE=moorage-test/busybox:latest
IMAGE_REV=3
BUSYBOX=/bin/busybox

say() { echo "build-test-image: $*" >&2; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    say "no reachable Docker engine; skipping (Docker tests will skip)"
    exit 0
fi

have_rev=$(docker image inspect --format '{{ index .Config.Labels "moorage.test-image-rev" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have_rev" = "$IMAGE_REV" ]; then
    exit 0
fi

# The image has no libc, so the binary must be static: Debian's plain `busybox` package is dynamic
# (ldd succeeds on it), busybox-static replaces it.
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "need a static $BUSYBOX (Debian package busybox-static) and cannot install it without root/apt-get"
        exit 1
    fi
    say "installing busybox-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "need openssl (Debian package openssl) and cannot install it without root/apt-get"
        exit 1
    fi
    say "installing openssl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/www" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
install -m 0755 "$BUSYBOX" "$root/bin/busybox"
# Every applet as /bin/<name>; PATH=/bin in the image, so sbin applets (httpd, ...) live there too.
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
for required in sh httpd nc ls cat echo sleep wget dd head kill ps env mkdir rm true false yes seq; do
    [ -e "$root/bin/$required" ] || { say "busybox lacks the applet $required"; exit 1; }
done
# openssl and exactly the shared objects it links (ldd's resolved paths), at the same paths, plus its config.
OPENSSL=$(command -v openssl)
install -D -m 0755 "$OPENSSL" "$root/bin/openssl"
for lib in $(ldd "$OPENSSL" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
if [ -f /usr/lib/ssl/openssl.cnf ]; then
    install -D -m 0644 "$(readlink -f /usr/lib/ssl/openssl.cnf)" "$root/usr/lib/ssl/openssl.cnf"
fi
printf 'moorage-test-ok\n' >"$root/www/index.html"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

say "importing $IMAGE"
# Single quotes: ${SERVER_PORT:-8080} must reach the image literally and expand in the container's shell.
# sh traps TERM and ends httpd, so a stop is immediate (httpd as PID 1 would ignore TERM until the timeout).
# No STOPSIGNAL: engine 20.10's import rejects it ("stopsignal is not a valid change command"), and SIGTERM is
# already what the engine sends when an image names none (the agent also sets it per container).
tar --numeric-owner --owner=0 --group=0 -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh","-c","trap \"kill $pid; exit 0\" TERM; httpd -f -v -p ${SERVER_PORT:-8080} -h /www & pid=$!; wait $pid"]' \
    --change 'ENV PATH=/bin' \
    --change "LABEL moorage.test-image-rev=$IMAGE_REV" \
    - "$IMAGE" >/dev/null

out=$(docker run --rm "$IMAGE" sh -c 'openssl version >/dev/null && echo ok')
if [ "$out" != ok ]; then
    say "the new image does not run: expected 'ok', got '$out'"
    exit 1
fi
