#!/bin/sh
# Install the Debian packages Starling needs to build, run and test.
# Idempotent and quiet when everything is present; needs root (or sudo) only
# when something is missing.
set -e
PKGS="gcc make pkg-config clang libclang-rt-14-dev openssl
libexpat1-dev libssl-dev libsqlite3-dev libidn-dev
libcmocka-dev python3-pytest python3-slixmpp libstrophe-dev profanity tmux procps"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
