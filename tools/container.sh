#!/usr/bin/env bash
# Build, once, the Debian 12 tree that tests/test_container.py boots with systemd-nspawn to run
# systemd/zflood@.service under a real systemd, and refresh the wheels zflood installs from.
#
#   tools/container.sh            # as root; about 3-5 minutes the first time, seconds after
#
# The tree lives in $ZFLOOD_CONTAINER (default /var/cache/zflood-container/bookworm) and is
# never written by the test, which boots it with --volatile=overlay (every change in a tmpfs
# thrown away at exit). $ZFLOOD_CONTAINER/../wheels holds wheels of zflood's dependencies
# (and of the build backend), so the test installs the checkout into /opt/zflood inside the
# container with `pip install --no-index`: no network while tests run. Needs debootstrap and
# systemd-container (apt-get install debootstrap systemd-container) and a Debian mirror (the one
# this machine's apt uses, or $DEBIAN_MIRROR).
set -euo pipefail
cd "$(dirname "$0")/.."

tree=${ZFLOOD_CONTAINER:-/var/cache/zflood-container/bookworm}
wheels=$(dirname "$tree")/wheels
# The mirror this machine's own apt uses (deb822 sources, else sources.list), unless given.
host_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "$uri"
}
mirror=${DEBIAN_MIRROR:-$(host_mirror)}
if [ -z "$mirror" ]; then
    echo "tools/container.sh: no Debian mirror in this machine's apt sources: set DEBIAN_MIRROR" >&2
    exit 1
fi

if [ "$(id -u)" != 0 ]; then
    echo "tools/container.sh: must run as root (debootstrap, systemd-nspawn)" >&2
    exit 1
fi
for tool in debootstrap systemd-nspawn; do
    if ! command -v "$tool" >/dev/null; then
        echo "tools/container.sh: $tool missing: apt-get install debootstrap systemd-container" >&2
        exit 1
    fi
done

if [ ! -e "$tree/.zflood-tree" ]; then
    rm -rf "$tree.tmp"
    mkdir -p "$(dirname "$tree")"
    # minbase plus what a booted system with a Python service needs; python3-venv is how the
    # README installs zflood on Debian 12 (PEP 668 forbids pip into the system Python).
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,python3,python3-venv \
        bookworm "$tree.tmp" "$mirror"
    # A booted container needs no getty on its console, and nothing that waits for a network
    # it may not have.
    rm -f "$tree.tmp"/etc/systemd/system/getty.target.wants/*
    ln -sf /dev/null "$tree.tmp/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$tree.tmp/etc/systemd/system/systemd-networkd-wait-online.service"
    echo zflood-test > "$tree.tmp/etc/hostname"
    apt_cache="$tree.tmp/var/cache/apt/archives"
    find "$apt_cache" -name '*.deb' -delete
    touch "$tree.tmp/.zflood-tree"
    rm -rf "$tree"
    mv "$tree.tmp" "$tree"
fi

# The wheels: zflood's dependencies with the fast extra, and the build backend its
# pyproject.toml names, for the tree's Python (3.11). Fetched from the package index by the
# checkout's venv (the system Python of Debian has no pip); the checkout itself is built
# inside the container by the test.
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
mkdir -p "$wheels"
deps=$("$py" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join([*p["build-system"]["requires"], *p["project"]["dependencies"],
                 *p["project"]["optional-dependencies"]["fast"], "wheel"]))
PY
)
# shellcheck disable=SC2086
"$py" -m pip download -q --only-binary=:all: --python-version 3.11 -d "$wheels" $deps
echo "tools/container.sh: tree $tree, wheels $wheels"
