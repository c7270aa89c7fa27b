//! The worker's read path: bytes from the hub's WebSocket through the same
//! `FrameDecoder` and `Message::parse`, then `HubCall::from_invocation`.
//! The input layout is documented in `muster_core::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muster_core::fuzzing::worker_input(data));
