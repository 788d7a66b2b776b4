#!/usr/bin/env bash
# Installs the Debian packages that are missing: for `serve`, the libraries OpenCV (needed by
# MediaPipe) loads; for `test`, also a real browser and its driver for the browser tests,
# HAProxy for tests/test_haproxy.py, and Janus, iproute2 and simple-whip-server for the SFU test.
set -euo pipefail
missing=()
ldconfig -p | grep -q "libGL.so.1 " || missing+=(libgl1)
ldconfig -p | grep -q "libglib-2.0.so.0 " || missing+=(libglib2.0-0)
if [ "${1:-test}" = test ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  command -v janus >/dev/null || missing+=(janus)
  command -v ip >/dev/null || missing+=(iproute2)
fi
if [ ${#missing[@]} -eq 0 ]; then
  [ "${1:-test}" = test ] && exec "$(dirname "$0")/whip-server.sh"
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "${1:-test}" = test ]; then exec "$(dirname "$0")/whip-server.sh"; fi
