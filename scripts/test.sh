#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# Tests that need Redis start their own redis-server on a free loopback port.
# (redis-cli, from redis-tools, builds the test cluster.)
{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || apt_install redis-server redis-tools
# The /metrics test checks the exposition with promtool (Debian's prometheus package); the
# server it also installs is stopped right away, nothing here uses it.
if ! command -v promtool >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
  (systemctl stop prometheus || service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi
# tests/paths.rs sends every path in its corpus through keygate to real upstream parsers:
# nginx, aiohttp, Flask, Starlette on uvicorn, and Node.js.
if ! command -v nginx >/dev/null 2>&1; then
  apt_install nginx-light
  # The package starts a server on :80; nothing here uses it.
  (systemctl stop nginx || service nginx stop || pkill -x nginx) >/dev/null 2>&1 || true
fi
command -v node >/dev/null 2>&1 || apt_install nodejs
python3 -c 'import aiohttp, flask, starlette, uvicorn' >/dev/null 2>&1 ||
  python3 -m pip install --quiet --disable-pip-version-check aiohttp flask starlette uvicorn
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

cargo nextest run --workspace --no-fail-fast "$@"
