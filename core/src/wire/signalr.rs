//! SignalR JSON hub protocol framing (dotnet/aspnetcore `HubProtocol.md`):
//! every record is a JSON text ending in the record separator `0x1E`; the
//! first record each way is the handshake. Both the hub and the worker frame
//! through this module, so there is one decoder to fuzz and test.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::limits::MAX_INVOCATION_ID_BYTES;

/// Ends every SignalR JSON record.
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// Splits a stream of text into records, keeping an incomplete tail until
/// the rest arrives. A record (or a tail) longer than the cap is refused, so
/// a peer cannot make the decoder buffer without bound.
#[derive(Debug)]
pub struct FrameDecoder {
    pending: String,
    cap: usize,
}

/// A record that cannot be accepted at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("message of {size} bytes or more exceeds the {cap}-byte cap")]
pub struct TooLarge {
    pub size: usize,
    pub cap: usize,
}

impl FrameDecoder {
    pub fn new(cap: usize) -> Self {
        FrameDecoder {
            pending: String::new(),
            cap,
        }
    }

    /// Feeds text and returns the records it completed, without separators.
    pub fn push(&mut self, text: &str) -> Result<Vec<String>, TooLarge> {
        let mut records = Vec::new();
        let mut rest = text;
        while let Some(end) = rest.find(RECORD_SEPARATOR) {
            let size = self.pending.len() + end;
            if size > self.cap {
                self.pending.clear();
                return Err(TooLarge {
                    size,
                    cap: self.cap,
                });
            }
            let mut record = std::mem::take(&mut self.pending);
            record.push_str(&rest[..end]);
            records.push(record);
            rest = &rest[end + RECORD_SEPARATOR.len_utf8()..];
        }
        if self.pending.len() + rest.len() > self.cap {
            let size = self.pending.len() + rest.len();
            self.pending.clear();
            return Err(TooLarge {
                size,
                cap: self.cap,
            });
        }
        self.pending.push_str(rest);
        Ok(records)
    }

    /// True when part of a record is waiting for its separator. For the
    /// tests and the fuzz drivers, which check the decoder against a model.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Appends the record separator to a serialized record.
pub fn frame(json: &str) -> String {
    let mut framed = String::with_capacity(json.len() + 1);
    framed.push_str(json);
    framed.push(RECORD_SEPARATOR);
    framed
}

/// The client's first record: `{"protocol":"json","version":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    pub protocol: String,
    pub version: u32,
}

impl HandshakeRequest {
    pub fn json() -> Self {
        HandshakeRequest {
            protocol: "json".into(),
            version: 1,
        }
    }
}

/// The server's answer: `{}` on success, `{"error": "..."}` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Why a record is not a message this protocol understands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("message has no integer \"type\" field")]
    NoType,
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("message type {kind} is missing the \"{field}\" field")]
    Missing { kind: u8, field: &'static str },
    #[error("message type {kind}: \"invocationId\" is longer than {max} bytes")]
    LongInvocationId { kind: u8, max: usize },
}

/// One hub-protocol message, by its `type` number.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 1: call `target` with `arguments`; an `invocation_id` asks for a Completion.
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
    },
    /// 2: one item of a stream.
    StreamItem { invocation_id: String, item: Value },
    /// 3: the end of an invocation, with a result or an error.
    Completion {
        invocation_id: String,
        result: Option<Value>,
        error: Option<String>,
    },
    /// 4: call `target` expecting a stream back.
    StreamInvocation {
        invocation_id: String,
        target: String,
        arguments: Vec<Value>,
    },
    /// 5: stop a stream invocation.
    CancelInvocation { invocation_id: String },
    /// 6: keep-alive.
    Ping,
    /// 7: the sender is closing the connection, with an optional reason.
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
}

impl Message {
    /// Parses one record (without its separator).
    pub fn parse(record: &str) -> Result<Message, MessageError> {
        let value: Value =
            serde_json::from_str(record).map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(MessageError::Json("a message must be a JSON object".into()));
        };
        let kind = object
            .get("type")
            .and_then(Value::as_u64)
            .ok_or(MessageError::NoType)?;
        let message = match kind {
            1 => Message::Invocation {
                invocation_id: match object.contains_key("invocationId") {
                    true => Some(text(&mut object, "invocationId", 1)?),
                    false => None,
                },
                target: text(&mut object, "target", 1)?,
                arguments: arguments(&mut object, 1)?,
            },
            2 => Message::StreamItem {
                invocation_id: text(&mut object, "invocationId", 2)?,
                item: object.remove("item").unwrap_or(Value::Null),
            },
            3 => {
                let invocation_id = text(&mut object, "invocationId", 3)?;
                let error = object
                    .remove("error")
                    .and_then(|e| e.as_str().map(str::to_owned));
                // A Completion carries an error or a result, never both. If a
                // peer sends both, the error wins, as in `to_json` and in the
                // worker: keeping the result too gave a message that
                // `to_json` could not reproduce (found by fuzzing; see
                // core/tests/fuzz_regressions/*/completion-with-result-and-error).
                let result = match error {
                    Some(_) => None,
                    None => object.remove("result"),
                };
                Message::Completion {
                    invocation_id,
                    result,
                    error,
                }
            }
            4 => Message::StreamInvocation {
                invocation_id: text(&mut object, "invocationId", 4)?,
                target: text(&mut object, "target", 4)?,
                arguments: arguments(&mut object, 4)?,
            },
            5 => Message::CancelInvocation {
                invocation_id: text(&mut object, "invocationId", 5)?,
            },
            6 => Message::Ping,
            7 => Message::Close {
                error: object
                    .remove("error")
                    .and_then(|e| e.as_str().map(str::to_owned)),
                allow_reconnect: object
                    .get("allowReconnect")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            other => return Err(MessageError::UnknownType(other)),
        };
        Ok(message)
    }

    /// Serializes to JSON text, without the separator.
    pub fn to_json(&self) -> String {
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            object.insert(key.to_owned(), value);
        };
        match self {
            Message::Invocation {
                invocation_id,
                target,
                arguments,
            } => {
                put("type", 1.into());
                if let Some(id) = invocation_id {
                    put("invocationId", id.as_str().into());
                }
                put("target", target.as_str().into());
                put("arguments", Value::Array(arguments.clone()));
            }
            Message::StreamItem {
                invocation_id,
                item,
            } => {
                put("type", 2.into());
                put("invocationId", invocation_id.as_str().into());
                put("item", item.clone());
            }
            Message::Completion {
                invocation_id,
                result,
                error,
            } => {
                put("type", 3.into());
                put("invocationId", invocation_id.as_str().into());
                if let Some(error) = error {
                    put("error", error.as_str().into());
                } else if let Some(result) = result {
                    put("result", result.clone());
                }
            }
            Message::StreamInvocation {
                invocation_id,
                target,
                arguments,
            } => {
                put("type", 4.into());
                put("invocationId", invocation_id.as_str().into());
                put("target", target.as_str().into());
                put("arguments", Value::Array(arguments.clone()));
            }
            Message::CancelInvocation { invocation_id } => {
                put("type", 5.into());
                put("invocationId", invocation_id.as_str().into());
            }
            Message::Ping => put("type", 6.into()),
            Message::Close {
                error,
                allow_reconnect,
            } => {
                put("type", 7.into());
                if let Some(error) = error {
                    put("error", error.as_str().into());
                }
                if *allow_reconnect {
                    put("allowReconnect", true.into());
                }
            }
        }
        Value::Object(object).to_string()
    }

    /// Serializes and appends the record separator.
    pub fn to_frame(&self) -> String {
        frame(&self.to_json())
    }
}

fn text(
    object: &mut Map<String, Value>,
    field: &'static str,
    kind: u8,
) -> Result<String, MessageError> {
    match object.remove(field) {
        Some(Value::String(s)) if field == "invocationId" && s.len() > MAX_INVOCATION_ID_BYTES => {
            Err(MessageError::LongInvocationId {
                kind,
                max: MAX_INVOCATION_ID_BYTES,
            })
        }
        Some(Value::String(s)) => Ok(s),
        _ => Err(MessageError::Missing { kind, field }),
    }
}

fn arguments(object: &mut Map<String, Value>, kind: u8) -> Result<Vec<Value>, MessageError> {
    match object.remove("arguments") {
        Some(Value::Array(args)) => Ok(args),
        None => Ok(Vec::new()),
        Some(_) => Err(MessageError::Missing {
            kind,
            field: "arguments",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decoder_splits_joins_and_caps() {
        let mut decoder = FrameDecoder::new(16);
        assert_eq!(decoder.push("{}\u{1e}{\"a\"").unwrap(), vec!["{}"]);
        assert!(decoder.has_partial());
        assert_eq!(decoder.push(":1}\u{1e}").unwrap(), vec!["{\"a\":1}"]);
        assert!(!decoder.has_partial());
        let err = decoder.push(&"x".repeat(17)).unwrap_err();
        assert_eq!(err.cap, 16);
        let err = decoder
            .push(&format!("{}\u{1e}", "y".repeat(20)))
            .unwrap_err();
        assert_eq!(err.size, 20);
        assert_eq!(decoder.push("{}\u{1e}").unwrap(), vec!["{}"]);
    }

    fn check(record: &str, expected: Result<Message, MessageError>) {
        assert_eq!(Message::parse(record), expected, "record: {record}");
        if let Ok(message) = expected {
            assert_eq!(Message::parse(&message.to_json()).unwrap(), message);
        }
    }

    #[test]
    fn parses_every_message_type() {
        check(
            r#"{"type":1,"invocationId":"7","target":"Register","arguments":[{"name":"w"}]}"#,
            Ok(Message::Invocation {
                invocation_id: Some("7".into()),
                target: "Register".into(),
                arguments: vec![json!({"name":"w"})],
            }),
        );
        check(
            r#"{"type":1,"target":"Log","arguments":[]}"#,
            Ok(Message::Invocation {
                invocation_id: None,
                target: "Log".into(),
                arguments: vec![],
            }),
        );
        check(
            r#"{"type":2,"invocationId":"1","item":3}"#,
            Ok(Message::StreamItem {
                invocation_id: "1".into(),
                item: json!(3),
            }),
        );
        check(
            r#"{"type":3,"invocationId":"1","result":{"ok":true}}"#,
            Ok(Message::Completion {
                invocation_id: "1".into(),
                result: Some(json!({"ok":true})),
                error: None,
            }),
        );
        check(
            r#"{"type":3,"invocationId":"1","error":"boom"}"#,
            Ok(Message::Completion {
                invocation_id: "1".into(),
                result: None,
                error: Some("boom".into()),
            }),
        );
        check(
            r#"{"type":3,"invocationId":"1","result":1,"error":"boom"}"#,
            Ok(Message::Completion {
                invocation_id: "1".into(),
                result: None,
                error: Some("boom".into()),
            }),
        );
        check(
            r#"{"type":4,"invocationId":"2","target":"S","arguments":[1]}"#,
            Ok(Message::StreamInvocation {
                invocation_id: "2".into(),
                target: "S".into(),
                arguments: vec![json!(1)],
            }),
        );
        check(
            r#"{"type":5,"invocationId":"2"}"#,
            Ok(Message::CancelInvocation {
                invocation_id: "2".into(),
            }),
        );
        check(r#"{"type":6}"#, Ok(Message::Ping));
        check(
            r#"{"type":7,"error":"bye","allowReconnect":true}"#,
            Ok(Message::Close {
                error: Some("bye".into()),
                allow_reconnect: true,
            }),
        );
    }

    #[test]
    fn refuses_malformed_records() {
        assert!(matches!(
            Message::parse("{not json"),
            Err(MessageError::Json(_))
        ));
        assert!(matches!(Message::parse("[1]"), Err(MessageError::Json(_))));
        check(r#"{"target":"x"}"#, Err(MessageError::NoType));
        check(r#"{"type":"1"}"#, Err(MessageError::NoType));
        check(r#"{"type":99}"#, Err(MessageError::UnknownType(99)));
        check(
            r#"{"type":1,"arguments":[]}"#,
            Err(MessageError::Missing {
                kind: 1,
                field: "target",
            }),
        );
        check(
            r#"{"type":1,"target":"x","arguments":5}"#,
            Err(MessageError::Missing {
                kind: 1,
                field: "arguments",
            }),
        );
        check(
            r#"{"type":1,"invocationId":7,"target":"x","arguments":[]}"#,
            Err(MessageError::Missing {
                kind: 1,
                field: "invocationId",
            }),
        );
        check(
            r#"{"type":3}"#,
            Err(MessageError::Missing {
                kind: 3,
                field: "invocationId",
            }),
        );
        // The hub echoes an invocationId: a long one is refused.
        let long = "9".repeat(MAX_INVOCATION_ID_BYTES + 1);
        check(
            &format!(r#"{{"type":1,"invocationId":"{long}","target":"x","arguments":[]}}"#),
            Err(MessageError::LongInvocationId {
                kind: 1,
                max: MAX_INVOCATION_ID_BYTES,
            }),
        );
        let longest = "9".repeat(MAX_INVOCATION_ID_BYTES);
        assert!(Message::parse(&format!(
            r#"{{"type":1,"invocationId":"{longest}","target":"x","arguments":[]}}"#
        ))
        .is_ok());
    }
}
