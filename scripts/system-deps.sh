#!/usr/bin/env bash
# Installs the Debian packages that are missing: for `serve`, the libraries OpenCV (needed by
# MediaPipe) loads; for `test`, also a real browser and its driver for the browser tests, and
# HAProxy for tests/test_haproxy.py.
set -euo pipefail
missing=()
ldconfig -p | grep -q "libGL.so.1 " || missing+=(libgl1)
ldconfig -p | grep -q "libglib-2.0.so.0 " || missing+=(libglib2.0-0)
if [ "${1:-test}" = test ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
