#!/usr/bin/env bash
# Make the development PKI used by conf/ccnet.ini (only when it does not exist yet).
# Keys land in DIR/private (0600) and are never committed (.gitignore).
set -eu
dir=${1:-pki/dev}
pki() { .venv/bin/ccnet-pki --dir "$dir" "$@" >/dev/null; }
if [ -f "$dir/ca.crt" ] && [ -f "$dir/localhost.crt" ]; then
    exit 0
fi
host=$(hostname 2>/dev/null || echo localhost)
pki init --force
# The daemon's own certificate: HTTPS server and client of other ccnet daemons.
pki issue server localhost --san DNS:localhost --san IP:127.0.0.1 --san IP:::1 --san "DNS:$host" --text-preamble
pki issue client client --text-preamble
pki issue client admin --text-preamble
pki issue component component --text-preamble
pki issue service ccservice
echo "dev PKI ready in $dir (CA $dir/ca.crt; client cert $dir/client.crt, key $dir/private/client.key)"
