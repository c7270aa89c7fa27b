//! Replays every saved fuzz input through the driver it was made for
//! (`muster_core::fuzzing`, on through core's self dev-dependency with the
//! `fuzzing` feature), so an input that once crashed a fuzz target,
//! or a hand-made nasty one, is checked by every `cargo test` without
//! nightly or libFuzzer:
//! - `tests/fuzz_regressions/stream/`: socket traffic, for the `frames` and
//!   `hub_calls` targets; replayed through `hub_input` and `worker_input`;
//! - `tests/fuzz_regressions/messages/`: for the `messages` target;
//!   replayed through `message_input`.
//!
//! To add one, copy a crash from `fuzz/artifacts/TARGET/` into the folder
//! for its target, under a name saying what it is.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use muster_core::fuzzing::{hub_input, message_input, worker_input, MESSAGE_BREAK};

fn inputs(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(folder);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("readable folder").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("readable file"))
        })
        .collect();
    inputs.sort();
    inputs
}

/// Runs `driver` on every input in `folder` and names each one that panics.
fn replay(folder: &str, driver: fn(&[u8])) {
    let inputs = inputs(folder);
    assert!(
        inputs.len() >= 5,
        "{folder}: the regression folder lost its inputs ({} left)",
        inputs.len()
    );
    let failed: Vec<&str> = inputs
        .iter()
        .filter(|(_, data)| catch_unwind(AssertUnwindSafe(|| driver(data))).is_err())
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(failed.is_empty(), "{folder}: inputs that panic: {failed:?}");
}

#[test]
fn saved_inputs_pass_the_hub_read_path() {
    replay("stream", hub_input);
}

#[test]
fn saved_inputs_pass_the_worker_read_path() {
    replay("stream", worker_input);
}

#[test]
fn saved_messages_pass_both_read_paths() {
    replay("messages", message_input);
}

/// Too big to keep as a file: a 3 MiB record against the hub's default
/// 1 MiB cap (byte 0 = 0xFF), in one WebSocket message and then growing
/// over many.
#[test]
fn records_over_the_default_cap_are_refused_not_buffered() {
    let mut data = vec![0xFF];
    data.extend_from_slice(b"{\"type\":1,\"target\":\"Log\",\"arguments\":[\"m\",1,\"stdout\",\"");
    data.resize(data.len() + (3 << 20), b'x');
    data.extend_from_slice(b"\"]}\x1e");
    hub_input(&data);

    let mut pieces = vec![0xFF];
    for _ in 0..48 {
        pieces.resize(pieces.len() + (64 << 10), b'y');
        pieces.push(MESSAGE_BREAK);
    }
    pieces.extend_from_slice(b"\x1e{\"type\":6}\x1e");
    hub_input(&pieces);
    worker_input(&pieces);
}
