#!/usr/bin/env sh
# The real-browser test (tests/test_browser.py) needs Chromium, its driver and CJK fonts from Debian.
# Idempotent: a no-op (well under a second) when they are installed. It never fails the build: when the packages
# cannot be installed (not root, no apt, no package index) it says why, and the browser test skips with that reason.
PACKAGES="chromium chromium-driver fonts-noto-cjk"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser: apt-get not found; cannot install$missing (the browser test will be skipped)" >&2; exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "setup_browser: not root; cannot install$missing (the browser test will be skipped)" >&2; exit 0
fi
echo "setup_browser: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq $missing; } >/tmp/setup_browser.log 2>&1; then
    echo "setup_browser: apt-get could not install$missing (the browser test will be skipped); last lines of /tmp/setup_browser.log:" >&2
    tail -5 /tmp/setup_browser.log >&2
fi
exit 0
