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

cargo test --workspace --locked "$@"
