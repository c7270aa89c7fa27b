#!/usr/bin/env bash
# The benchmark (not a test: it asserts nothing, it reports). Builds muster
# in release mode, installs the peers it compares against (Dask and the
# Python Redis client from PyPI; redis-server and make from Debian; turbo
# from npm into bench/peers/turbo, with node, npm and git from Debian), runs
# every scenario, prints one JSON line each and writes docs/benchmarks.md.
#
#   scripts/bench.sh                      every scenario, 3 runs each
#   RUNS=5 scripts/bench.sh               more runs
#   scripts/bench.sh --only throughput    one scenario (throughput, chain,
#                                         journal, make, cache, workers,
#                                         plan, peers)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/bench.sh: installing ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/bench.sh: the benchmark needs ${missing[*]}; install them first" >&2
    exit 1
  fi
fi
if ! python3 -c 'import distributed, redis' 2>/dev/null; then
  echo "scripts/bench.sh: installing the peers (bench/peers/requirements.txt)" >&2
  python3 -m pip install -q -r bench/peers/requirements.txt
fi

# turbo, the cache scenario's peer, pinned by bench/peers/turbo's lockfile.
(cd bench/peers/turbo && npm ci --no-audit --no-fund --loglevel=error)

cargo build --release --locked -p muster -p muster-bench
exec target/release/muster-bench run --runs "${RUNS:-3}" --write docs/benchmarks.md "$@"
