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
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

cargo nextest run --workspace --no-fail-fast "$@"
