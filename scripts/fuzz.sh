#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the SignalR read paths:
#   frames     the hub's: WebSocket text -> FrameDecoder -> Message::parse
#              -> WorkerCall::from_invocation (and the handshake)
#   hub_calls  the worker's: the same framing -> HubCall::from_invocation
#   messages   both, on one well-formed JSON record built from the bytes,
#              so the fuzzer works on fields and argument values, not syntax
# The drivers are muster_core::fuzzing::{hub_input, worker_input,
# message_input}; its doc says how an input's bytes are read.
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
#   FUZZ_SECONDS  time per target (default 60)
#   FUZZ_MAX_LEN  largest input libFuzzer makes (default 8192)
#   FUZZ_ARGS     more libFuzzer flags, e.g. "-jobs=2 -workers=2"
#   FUZZ_SANITIZER  none (default) or address: the code under test is safe
#                   Rust, and AddressSanitizer makes it about 6 times slower
#
# Builds with overflow checks and debug assertions on (-a), so an
# arithmetic overflow in the decoder is a crash too.
#
# Needs a nightly toolchain in rustup (libFuzzer builds with sanitizer
# flags only nightly has); installs cargo-fuzz from crates.io if missing.
# Each target runs as one process. The corpus grows in fuzz/corpus/TARGET
# (git-ignored), seeded with core/tests/fuzz_regressions/stream/ (for
# messages: .../messages/). A crash stops the script and leaves the input
# in fuzz/artifacts/TARGET/: minimise it with
#   cargo +nightly fuzz tmin TARGET fuzz/artifacts/TARGET/crash-...
# fix the cause, then copy the minimised input into the target's folder in
# core/tests/fuzz_regressions/ under a telling name, where
# core/tests/fuzz_regressions.rs replays it in every `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "scripts/fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

for target in "${targets[@]}"; do
  corpus="$root/fuzz/corpus/$target"
  mkdir -p "$corpus"
  case "$target" in
    messages) seeds="$root/core/tests/fuzz_regressions/messages" ;;
    *) seeds="$root/core/tests/fuzz_regressions/stream" ;;
  esac
  echo "scripts/fuzz.sh: fuzzing $target for ${FUZZ_SECONDS:-60}s" >&2
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  cargo +nightly fuzz run -a -s "${FUZZ_SANITIZER:-none}" "$target" "$corpus" "$seeds" -- \
    -max_total_time="${FUZZ_SECONDS:-60}" \
    -max_len="${FUZZ_MAX_LEN:-8192}" \
    -dict="$root/fuzz/signalr.dict" \
    -print_final_stats=1 \
    ${FUZZ_ARGS:-}
done
