//! The hub's read path: bytes from a worker's WebSocket, cut into text
//! messages at fuzzer-chosen points, through `FrameDecoder` (with a
//! fuzzer-chosen cap), `Message::parse` and `WorkerCall::from_invocation`.
//! The input layout is documented in `muster_core::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muster_core::fuzzing::hub_input(data));
