#!/bin/sh
# `make run`: start starlingd in the foreground for localhost with a local
# config (./starling.conf) and data directory (./data), created on first run.
set -e
cd "$(dirname "$0")/.."
if [ ! -f starling.conf ]; then
    cat > starling.conf <<CONF
# Created by \`make run\`. The reference is docs/config.md.
data_dir = $(pwd)/data
bind = 127.0.0.1 ::1
c2s_ports = 5222
c2s_tls_ports = 5223

[host localhost]
modules = disco version ping time register
CONF
    echo "wrote starling.conf (data in ./data; a certificate is generated on first start)"
fi
echo
echo "starlingd is starting for localhost on 5222 (STARTTLS) and 5223 (direct TLS)."
echo "Next, in another terminal in $(pwd):"
echo "    build/starlingctl adduser alice@localhost"
echo "then log in as alice@localhost with any XMPP client (accept the self-signed certificate)."
echo "Stop the server with Ctrl-C."
echo
exec build/starlingd -c starling.conf
