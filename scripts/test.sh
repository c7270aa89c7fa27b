#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (node and the official SignalR client from npm), then runs every
# test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing node and npm" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "scripts/test.sh: node and npm are needed for the SignalR interop test; install them first" >&2
    exit 1
  fi
fi

(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)

# Run every test, then close with one line that totals all test binaries,
# so the last line speaks for the whole run (doc-test runners print 0).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
