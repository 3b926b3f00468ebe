#!/bin/sh
# Install the Debian packages Starling needs to build, run and test, and the
# npm packages of the xmpp.js interop test (tests/integration/js, pinned by
# its package-lock.json). Idempotent and quiet when everything is present;
# needs root (or sudo) only when a Debian package is missing.
set -e
PKGS="gcc make pkg-config clang libclang-rt-14-dev openssl
libexpat1-dev libssl-dev libsodium-dev libsqlite3-dev libidn-dev
libcmocka-dev python3-pytest python3-slixmpp libstrophe-dev profanity tmux procps adduser"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# node may come from elsewhere than Debian (nvm, NodeSource): only ask apt
# for it when there is none at all.
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"

if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The unprivileged user starlingd becomes when started as root (the config
# key `user`, default "starling"; server.c drop_privileges): a system user
# with its own group, no home and no login shell.
if ! getent passwd starling >/dev/null 2>&1; then
    echo "creating: system user starling"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO adduser --system --group --no-create-home --quiet starling
fi

# npm ci only when node_modules is missing or older than the lock file
# (npm keeps its own copy of the lock in node_modules/.package-lock.json).
JS="$(dirname "$0")/../tests/integration/js"
if [ ! -f "$JS/node_modules/.package-lock.json" ] ||
    [ "$JS/package-lock.json" -nt "$JS/node_modules/.package-lock.json" ]; then
    echo "installing: xmpp.js test packages (npm ci in tests/integration/js)"
    npm ci --prefix "$JS" --no-audit --no-fund --loglevel=error >/dev/null
fi
