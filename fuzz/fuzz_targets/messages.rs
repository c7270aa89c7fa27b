//! Both read paths on one well-formed record built from the fuzzer's bytes
//! (message type, which fields are present, their values), so that the
//! fuzzer explores combinations of fields and argument values instead of
//! JSON syntax. The input layout is `muster_core::fuzzing::message_input`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muster_core::fuzzing::message_input(data));
