#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only when something is missing.
set -eu
need=()
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v rrdtool >/dev/null 2>&1 || need+=(rrdtool)
# M2Crypto (DIRAC's client, tests/test_rpc_cs_dirac.py) builds from source with these
command -v swig >/dev/null 2>&1 || need+=(swig)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
# the web console test drives a real headless Chromium over mutual TLS (NSS db tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v pk12util >/dev/null 2>&1 || need+=(libnss3-tools)
# prometheus + promtool: the shipped monitoring config (tests/test_ops_monitoring.py)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${need[*]} (install them; tests needing them will skip)" >&2
    exit 0
fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || \
    echo "system-deps: apt-get failed; tests needing ${need[*]} will skip" >&2
