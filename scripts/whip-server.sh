#!/usr/bin/env bash
# The SFU test's WHIP server (tests/test_janus_egress.py): Debian's simple-whip-server; where its
# Debian dependencies conflict with the node installed (NodeSource's nodejs conflicts with
# Debian's node-* packages), the same package unpacked into /opt and its node modules from
# tests/simple_whip_server (pinned by its lock file). Run as root (or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ! -e /usr/share/simple-whip-server/src/server.js ] && [ ! -e /opt/simple-whip-server/usr/share/simple-whip-server/src/server.js ]; then
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends simple-whip-server >/dev/null 2>&1; then
    echo "simple-whip-server's Debian dependencies conflict here: unpacking the package into /opt/simple-whip-server"
    deb_dir="$(mktemp -d)"
    (cd "$deb_dir" && apt-get download simple-whip-server && $sudo dpkg-deb -x simple-whip-server_*_all.deb /opt/simple-whip-server)
    rm -rf "$deb_dir"
  fi
fi
if [ -e /opt/simple-whip-server ] && [ ! -d tests/simple_whip_server/node_modules ] && command -v npm >/dev/null; then
  (cd tests/simple_whip_server && npm ci --no-audit --no-fund --silent)
fi
