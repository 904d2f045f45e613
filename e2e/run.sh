#!/usr/bin/env bash
# End-to-end tests: the dashboard in headless Chromium and the Python example, both
# against target/debug/stockalert (as `cargo test` leaves it; `cargo build` here makes
# sure it is current). Installs what is missing: Debian's chromium, the node packages from
# the committed lockfile, and a Python venv with `websockets`. Any missing piece that
# cannot be installed fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

fail() {
    echo "e2e: $*" >&2
    exit 1
}

echo "== e2e: binary"
# A no-op right after `cargo test`; rebuilds a stale binary when run by hand.
cargo build --locked --quiet
[ -x target/debug/stockalert ] || fail "target/debug/stockalert was not built"

echo "== e2e: chromium"
if [ ! -x /usr/bin/chromium ]; then
    command -v apt-get >/dev/null || fail "/usr/bin/chromium is missing and apt-get is not here"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
[ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is still missing after apt-get"
/usr/bin/chromium --version 2>/dev/null || true

echo "== e2e: node packages"
command -v node >/dev/null || fail "node is not installed"
command -v npm >/dev/null || fail "npm is not installed"
(cd e2e && npm ci --no-audit --no-fund)

echo "== e2e: python venv"
VENV="$ROOT/target/e2e-venv"
if [ ! -x "$VENV/bin/python" ]; then
    command -v python3 >/dev/null || fail "python3 is not installed"
    if ! python3 -m venv "$VENV"; then
        command -v apt-get >/dev/null || fail "python3 -m venv failed and apt-get is not here"
        rm -rf "$VENV"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$VENV" || fail "python3 -m venv failed"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "websockets==17.4"
"$VENV/bin/python" -c "import websockets.asyncio.client" || fail "websockets did not install"

echo "== e2e: tests"
cd e2e
exec node --test --test-concurrency=1 dashboard.test.mjs python-client.test.mjs
