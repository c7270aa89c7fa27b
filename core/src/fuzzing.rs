//! The read paths of both roles, driven from arbitrary bytes. This exists so
//! that the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and the
//! regression replays in `core/tests/fuzz_regressions.rs` (stable, every
//! `cargo test`) run exactly the same code: an input that once crashed a
//! fuzz target is saved as a file and replayed here forever.
//!
//! A driver panics only when an invariant breaks; everything a peer can get
//! wrong (bad UTF-8, oversized records, malformed JSON, unknown methods,
//! wrong argument types) must come back as an error and is ignored.
//!
//! [`hub_input`] and [`worker_input`] read raw socket traffic:
//! - byte 0 picks the decoder's cap: `b * b` bytes (0 to 64,516), or for
//!   `0xFF` the hub's default of 1 MiB;
//! - the rest is cut at every `0xFF` byte (which never occurs in UTF-8) into
//!   WebSocket text messages, one `FrameDecoder::push` each. A message that
//!   is not UTF-8 ends the input, as the socket would refuse it.
//!
//! Unlike the real connection, they go on after an error (a refused
//! handshake, an oversized record, a malformed message), so one input
//! explores more than one outcome.
//!
//! [`message_input`] builds one well-formed JSON object from the bytes
//! instead, so that the fuzzer spends its time on combinations of fields
//! and argument values rather than on JSON syntax; see its doc.

use serde_json::{Map, Value};

use crate::wire::calls::{HubCall, WorkerCall};
use crate::wire::limits::MAX_RECORD_BYTES;
use crate::wire::signalr::{
    frame, FrameDecoder, HandshakeRequest, HandshakeResponse, Message, TooLarge, RECORD_SEPARATOR,
};

/// Cuts the WebSocket messages (or, in [`message_input`], the field values)
/// apart.
pub const MESSAGE_BREAK: u8 = 0xFF;

/// The cap used when byte 0 is `0xFF`: the hub's default `max_message_bytes`.
const DEFAULT_CAP: usize = MAX_RECORD_BYTES;

/// The hub's read path: bytes from a worker's socket, through the
/// [`FrameDecoder`], each record as a handshake and as a [`Message`], each
/// invocation as a [`WorkerCall`].
pub fn hub_input(data: &[u8]) {
    drive(data, hub_record);
}

/// The worker's read path: bytes from the hub's socket, through the
/// [`FrameDecoder`], each record as a handshake answer and as a
/// [`Message`], each invocation as a [`HubCall`].
pub fn worker_input(data: &[u8]) {
    drive(data, worker_record);
}

/// The fields [`message_input`] may put in its object, in mask-bit order.
const FIELDS: [&str; 8] = [
    "invocationId",
    "target",
    "arguments",
    "item",
    "result",
    "error",
    "allowReconnect",
    "unknownField",
];

/// Both read paths on one record built from the bytes:
/// - byte 0 is `"type"`: `b % 9` (so 0 and 8 are unknown types), except
///   `0xFE` (the string `"1"`) and `0xFD` (no `"type"` at all);
/// - byte 1 is a mask: bit `i` puts `FIELDS[i]` in the object;
/// - the rest, cut at every `0xFF`, gives the present fields' values in
///   order: a piece that is JSON is used as it is, any other piece as a
///   JSON string (so `Register` is the string "Register"); missing pieces
///   are `null`.
pub fn message_input(data: &[u8]) {
    let (Some(&kind), Some(&mask)) = (data.first(), data.get(1)) else {
        return;
    };
    let mut object = Map::new();
    match kind {
        0xFD => {}
        0xFE => {
            object.insert("type".into(), "1".into());
        }
        b => {
            object.insert("type".into(), (u64::from(b) % 9).into());
        }
    }
    let mut pieces = data[2..].split(|&b| b == MESSAGE_BREAK);
    for (bit, field) in FIELDS.iter().enumerate() {
        if mask & (1 << bit) != 0 {
            let value = match pieces.next() {
                None => Value::Null,
                Some(piece) => serde_json::from_slice(piece)
                    .unwrap_or_else(|_| String::from_utf8_lossy(piece).into_owned().into()),
            };
            object.insert((*field).to_owned(), value);
        }
    }
    let json = Value::Object(object).to_string();
    // serde_json escapes control characters, so the separator can only
    // ever end a record.
    let records = FrameDecoder::new(DEFAULT_CAP).push(&frame(&json));
    assert_eq!(records, Ok(vec![json]));
    for record in records.unwrap_or_default() {
        hub_record(&record);
        worker_record(&record);
    }
}

/// What the hub does with one record: a handshake, or a message whose
/// invocation is a [`WorkerCall`].
fn hub_record(record: &str) {
    if let Ok(request) = serde_json::from_str::<HandshakeRequest>(record) {
        let json = serde_json::to_string(&request).expect("handshakes serialize");
        assert_eq!(
            serde_json::from_str::<HandshakeRequest>(&json).ok(),
            Some(request)
        );
    }
    if let Some((invocation_id, target, arguments)) = message(record) {
        if let Ok(call) = WorkerCall::from_invocation(&target, arguments) {
            worker_call_round_trips(call, invocation_id);
        }
    }
}

/// What a worker does with one record: a handshake answer, or a message
/// whose invocation is a [`HubCall`].
fn worker_record(record: &str) {
    if let Ok(response) = serde_json::from_str::<HandshakeResponse>(record) {
        let json = serde_json::to_string(&response).expect("handshakes serialize");
        assert_eq!(
            serde_json::from_str::<HandshakeResponse>(&json).ok(),
            Some(response)
        );
    }
    if let Some((_, target, arguments)) = message(record) {
        if let Ok(call) = HubCall::from_invocation(&target, arguments) {
            let (name, arguments) = call.clone().into_invocation();
            assert_eq!(
                HubCall::from_invocation(name, arguments).as_ref(),
                Ok(&call)
            );
            let (target, arguments) = reparse_invocation(&call.clone().to_message());
            assert_eq!(HubCall::from_invocation(&target, arguments), Ok(call));
        }
    }
}

/// Splits the input as the module doc says and feeds every record to
/// `record`, checking the decoder against a plain model of its contract.
fn drive(data: &[u8], record: fn(&str)) {
    let Some((&cap, rest)) = data.split_first() else {
        return;
    };
    let cap = match cap {
        0xFF => DEFAULT_CAP,
        b => usize::from(b) * usize::from(b),
    };
    let mut decoder = FrameDecoder::new(cap);
    let mut model = String::new();
    for chunk in rest.split(|&b| b == MESSAGE_BREAK) {
        let Ok(text) = std::str::from_utf8(chunk) else {
            return;
        };
        let got = decoder.push(text);
        let expected = model_push(&mut model, cap, text);
        assert_eq!(got, expected, "decoder and model disagree on {text:?}");
        assert_eq!(decoder.has_partial(), !model.is_empty());
        for r in got.unwrap_or_default() {
            record(&r);
        }
    }
}

/// What `FrameDecoder::push` promises, written the obvious way: whatever
/// was pending plus the new text, split at every separator; every piece
/// but the last is a record, the last is kept. If any piece exceeds the cap
/// (the first one that does is reported), the whole push fails and nothing
/// is kept.
fn model_push(pending: &mut String, cap: usize, text: &str) -> Result<Vec<String>, TooLarge> {
    let joined = std::mem::take(pending) + text;
    let mut pieces: Vec<&str> = joined.split(RECORD_SEPARATOR).collect();
    if let Some(big) = pieces.iter().find(|p| p.len() > cap) {
        return Err(TooLarge {
            size: big.len(),
            cap,
        });
    }
    *pending = pieces.pop().unwrap_or_default().to_owned();
    Ok(pieces.into_iter().map(str::to_owned).collect())
}

/// Parses one record; checks that a message survives `to_json` and
/// `to_frame`; returns an invocation's parts.
fn message(record: &str) -> Option<(Option<String>, String, Vec<Value>)> {
    let message = Message::parse(record).ok()?;
    let again = Message::parse(&message.to_json())
        .unwrap_or_else(|e| panic!("{message:?} does not parse back: {e}"));
    assert!(
        same_message(&message, &again),
        "{message:?} came back as {again:?}"
    );
    let framed = message.to_frame();
    assert_eq!(
        framed.strip_suffix(RECORD_SEPARATOR),
        Some(&*message.to_json())
    );
    assert!(!message.to_json().contains(RECORD_SEPARATOR));
    match message {
        Message::Invocation {
            invocation_id,
            target,
            arguments,
        } => Some((invocation_id, target, arguments)),
        _ => None,
    }
}

/// A decoded worker call encodes back to the same call, both as bare
/// arguments and through a whole serialized message.
fn worker_call_round_trips(call: WorkerCall, invocation_id: Option<String>) {
    let (name, arguments) = call.clone().into_invocation();
    assert_eq!(
        WorkerCall::from_invocation(name, arguments).as_ref(),
        Ok(&call)
    );
    let (target, arguments) = reparse_invocation(&call.clone().to_message(invocation_id));
    assert_eq!(WorkerCall::from_invocation(&target, arguments), Ok(call));
}

fn reparse_invocation(message: &Message) -> (String, Vec<Value>) {
    match Message::parse(&message.to_json()) {
        Ok(Message::Invocation {
            target, arguments, ..
        }) => (target, arguments),
        other => panic!("{message:?} came back as {other:?}"),
    }
}

/// Equality, except that floating-point numbers may differ in the last
/// bits: serde_json's default float parsing is not exact (its
/// `float_roundtrip` feature is off), so printing and parsing a float can
/// move it by an ulp. Everything else must be identical.
fn same_message(a: &Message, b: &Message) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    let (values_a, values_b) = (take_values(&mut a), take_values(&mut b));
    a == b
        && values_a.len() == values_b.len()
        && values_a
            .iter()
            .zip(&values_b)
            .all(|(x, y)| same_value(x, y))
}

/// Moves the free-form JSON out of a message, leaving its skeleton.
fn take_values(message: &mut Message) -> Vec<Value> {
    match message {
        Message::Invocation { arguments, .. } | Message::StreamInvocation { arguments, .. } => {
            std::mem::take(arguments)
        }
        Message::StreamItem { item, .. } => vec![item.take()],
        Message::Completion {
            result: Some(result),
            ..
        } => vec![result.take()],
        _ => Vec::new(),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x.signum() == y.signum() && x.to_bits().abs_diff(y.to_bits()) <= 2)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| same_value(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_matches_the_decoder_on_a_few_cases() {
        let mut pending = String::new();
        assert_eq!(
            model_push(&mut pending, 4, "ab\u{1e}c"),
            Ok(vec!["ab".into()])
        );
        assert_eq!(pending, "c");
        assert_eq!(
            model_push(&mut pending, 4, "defg"),
            Err(TooLarge { size: 5, cap: 4 })
        );
        assert_eq!(pending, "");
    }

    #[test]
    fn floats_may_differ_in_the_last_bit_only() {
        let one = Value::from(1.0_f64);
        let next = Value::from(f64::from_bits(1.0_f64.to_bits() + 1));
        assert!(same_value(&one, &next));
        assert!(!same_value(&one, &Value::from(1.001_f64)));
        assert!(!same_value(&Value::from(1_u64), &Value::from(2_u64)));
    }

    #[test]
    fn drivers_accept_empty_and_valid_input() {
        hub_input(b"");
        worker_input(b"");
        let session = b"\xff{\"protocol\":\"json\",\"version\":1}\x1e\xff\
            {\"type\":1,\"invocationId\":\"0\",\"target\":\"Register\",\"arguments\":[{\"name\":\"w\"}]}\x1e";
        hub_input(session);
        worker_input(session);
        message_input(b"\x01\x07\"0\"\xffRegister\xff[{\"name\":\"w\"}]");
        message_input(b"");
    }
}
