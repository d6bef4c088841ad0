#!/usr/bin/env sh
# What the tests start as real processes, from Debian's packages: Chromium, its driver and CJK fonts (the browser
# test), PostgreSQL and Redis (the store on PostgreSQL, the scale-out test), buildah, podman, runc and mmdebstrap
# (building and running the image without a Docker engine). One apt-get for everything missing; a no-op (well under
# a second) when all are installed. It never fails the build: when packages cannot be installed (not root, no apt,
# no package index) it says why, and the tests that need them are skipped with that reason.
PACKAGES="chromium chromium-driver fonts-noto-cjk postgresql redis-server buildah podman runc mmdebstrap"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_system: apt-get not found; cannot install$missing (the tests that need them will be skipped)" >&2; exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "setup_system: not root; cannot install$missing (the tests that need them will be skipped)" >&2; exit 0
fi
echo "setup_system: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >/tmp/setup_system.log 2>&1; then
    echo "setup_system: apt-get could not install$missing (the tests that need them will be skipped); last lines of /tmp/setup_system.log:" >&2
    tail -5 /tmp/setup_system.log >&2
fi
exit 0
