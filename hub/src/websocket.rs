//! The hub's end of a WebSocket (RFC 6455, server role, no extensions),
//! over the socket hyper hands over after the upgrade.
//!
//! Why not tungstenite here: its read buffer grows to hold the largest
//! frame a peer ever sent and keeps that allocation until the connection
//! closes, so a few hundred workers that each sent one large record held
//! hundreds of MiB. Here a frame's payload is read into its own buffer,
//! which leaves with the message; what stays per connection is one small
//! fixed read buffer. Frames are read through a `Stream` that owns the
//! read in progress, so a caller's timeout never cuts a frame in half.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use axum::http::{HeaderMap, HeaderValue};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The `Sec-WebSocket-Accept` value for a request that asks for a
/// WebSocket (RFC 6455 §4.2.1), or `None` when it does not: a GET with
/// `Connection: upgrade`, `Upgrade: websocket`, version 13 and a key.
pub(crate) fn accept_key(headers: &HeaderMap) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let connection = text(CONNECTION)?;
    let upgrades = connection
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = text(UPGRADE)?.trim().eq_ignore_ascii_case("websocket");
    let version = text(SEC_WEBSOCKET_VERSION)? == "13";
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    (upgrades && websocket && version)
        .then(|| tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Bytes read from the socket at a time. Records are small; a large
/// payload is read straight into its own buffer.
const READ_BUFFER: usize = 8 * 1024;

/// The largest part of a payload allocated before its bytes arrive, so a
/// header that announces a large frame costs nothing until it is sent.
const PAYLOAD_CHUNK: usize = 64 * 1024;

/// A control frame's payload is at most this long (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One message, as the hub reads or writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsMessage {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame; the hub sends its own without a code.
    Close,
}

/// Why the socket cannot be read or written any more.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("a WebSocket message of {size} bytes or more exceeds the {cap}-byte cap")]
    TooLarge { size: u64, cap: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn parse(bits: u8) -> Result<Opcode, WsError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return Err(WsError::Protocol("unknown opcode")),
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The first two bytes of a frame, checked.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    fin: bool,
    opcode: Opcode,
    /// The 7-bit length: the length itself, or 126/127 for a 2/8-byte one.
    short_len: u8,
}

/// Checks a client frame's first two bytes: no reserved bits (no extension
/// was negotiated), a known opcode, masked (clients must mask), and control
/// frames short and unfragmented.
fn parse_head(bytes: [u8; 2]) -> Result<Head, WsError> {
    let [first, second] = bytes;
    if first & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if second & 0x80 == 0 {
        return Err(WsError::Protocol("a client frame is not masked"));
    }
    let head = Head {
        fin: first & 0x80 != 0,
        opcode: Opcode::parse(first & 0x0F)?,
        short_len: second & 0x7F,
    };
    if head.opcode.is_control() && (!head.fin || u64::from(head.short_len) > MAX_CONTROL_PAYLOAD) {
        return Err(WsError::Protocol(
            "a control frame is fragmented or too long",
        ));
    }
    Ok(head)
}

/// A frame header for the hub's own (unmasked, final) frames.
fn encode_head(opcode: Opcode, len: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(10 + len);
    head.push(0x80 | opcode.bits());
    match len {
        0..=125 => head.push(len as u8),
        126..=0xFFFF => {
            head.push(126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            head.push(127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    head
}

/// Reads client messages: control frames as they come, data frames joined
/// across continuations, never more than `max_message` bytes of payload.
pub(crate) struct FrameReader<R> {
    io: BufReader<R>,
    max_message: usize,
    /// A fragmented data message still missing its final frame.
    partial: Option<(Opcode, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_message: usize) -> Self {
        FrameReader {
            io: BufReader::with_capacity(READ_BUFFER, io),
            max_message,
            partial: None,
        }
    }

    /// The next message; `None` when the socket ended between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            let mut first = [0u8; 2];
            match self.io.read_exact(&mut first[..1]).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            self.io.read_exact(&mut first[1..]).await?;
            let head = parse_head(first)?;
            let len = match head.short_len {
                126 => u64::from(self.io.read_u16().await?),
                127 => self.io.read_u64().await?,
                short => u64::from(short),
            };
            let mut mask = [0u8; 4];
            self.io.read_exact(&mut mask).await?;
            if !head.opcode.is_control() {
                let held = self.partial.as_ref().map_or(0, |(_, bytes)| bytes.len());
                let size = (held as u64).saturating_add(len);
                if size > self.max_message as u64 {
                    return Err(WsError::TooLarge {
                        size,
                        cap: self.max_message,
                    });
                }
            }
            let payload = self.payload(len, mask).await?;
            if let Some(message) = self.assemble(head, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Reads and unmasks `len` bytes (already checked against the cap),
    /// growing the buffer as they arrive rather than trusting the header.
    async fn payload(&mut self, len: u64, mask: [u8; 4]) -> Result<Vec<u8>, WsError> {
        let expected = usize::try_from(len).map_err(|_| WsError::Protocol("frame too long"))?;
        let mut payload = Vec::new();
        while payload.len() < expected {
            let start = payload.len();
            let chunk = (expected - start).min(PAYLOAD_CHUNK);
            payload.reserve_exact(chunk);
            payload.resize(start + chunk, 0);
            self.io.read_exact(&mut payload[start..]).await?;
        }
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        Ok(payload)
    }

    /// Joins data frames into messages; control frames pass straight through.
    fn assemble(&mut self, head: Head, payload: Vec<u8>) -> Result<Option<WsMessage>, WsError> {
        let (opcode, payload) = match (head.opcode, self.partial.take()) {
            (Opcode::Ping, partial) => {
                self.partial = partial;
                return Ok(Some(WsMessage::Ping(payload)));
            }
            (Opcode::Pong, partial) => {
                self.partial = partial;
                return Ok(Some(WsMessage::Pong(payload)));
            }
            (Opcode::Close, _) => return Ok(Some(WsMessage::Close)),
            (Opcode::Continuation, None) => {
                return Err(WsError::Protocol(
                    "a continuation frame with nothing to continue",
                ))
            }
            (Opcode::Continuation, Some((opcode, mut held))) => {
                held.extend_from_slice(&payload);
                (opcode, held)
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(WsError::Protocol("a new message inside a fragmented one"))
            }
            (opcode, None) => (opcode, payload),
        };
        if !head.fin {
            self.partial = Some((opcode, payload));
            return Ok(None);
        }
        Ok(Some(match opcode {
            Opcode::Text => WsMessage::Text(
                String::from_utf8(payload)
                    .map_err(|_| WsError::Protocol("a text message is not UTF-8"))?,
            ),
            _ => WsMessage::Binary(payload),
        }))
    }
}

/// Writes the hub's messages, one write per frame.
pub(crate) struct FrameWriter<W> {
    io: W,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W) -> Self {
        FrameWriter { io, closed: false }
    }

    /// Sends one message; after a `Close` the socket's write side is shut
    /// and anything more is refused.
    pub(crate) async fn send(&mut self, message: WsMessage) -> Result<(), WsError> {
        if self.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        }
        let (opcode, payload) = match &message {
            WsMessage::Text(text) => (Opcode::Text, text.as_bytes()),
            WsMessage::Binary(bytes) => (Opcode::Binary, bytes.as_slice()),
            WsMessage::Ping(bytes) => (Opcode::Ping, bytes.as_slice()),
            WsMessage::Pong(bytes) => (Opcode::Pong, bytes.as_slice()),
            WsMessage::Close => (Opcode::Close, &[][..]),
        };
        let mut frame = encode_head(opcode, payload.len());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await?;
        self.io.flush().await?;
        if opcode == Opcode::Close {
            self.closed = true;
            self.io.shutdown().await?;
        }
        Ok(())
    }
}

/// The two halves of an upgraded socket as a `Sink` and a `Stream` of
/// messages, so a connection can be served (and unit-tested) over either.
/// The stream ends after an error.
pub(crate) fn split<IO>(
    io: IO,
    max_message: usize,
) -> (
    impl Sink<WsMessage, Error = WsError> + Send + Unpin + 'static,
    impl Stream<Item = Result<WsMessage, WsError>> + Send + Unpin + 'static,
)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let reader = FrameReader::new(read, max_message);
    let stream = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next().await {
            Ok(Some(message)) => Some((Ok(message), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    let sink =
        futures_util::sink::unfold(FrameWriter::new(write), |mut writer, message| async move {
            writer.send(message).await?;
            Ok::<_, WsError>(writer)
        });
    (Failing::new(Box::pin(sink)), Box::pin(stream))
}

/// A sink that, once it failed, fails every later call. futures' `unfold`
/// sink loses its writer with the error and panics on the next send, and
/// a caller (a viewer saying goodbye on a socket that just broke) may well
/// send again.
struct Failing<K> {
    inner: K,
    failed: bool,
}

impl<K: Sink<WsMessage, Error = WsError> + Unpin> Failing<K> {
    fn new(inner: K) -> Self {
        Failing {
            inner,
            failed: false,
        }
    }

    /// `step` on the inner sink, unless it failed before; a failure is
    /// remembered.
    fn guard(&mut self, cx: &mut Context<'_>, step: PollStep<K>) -> Poll<Result<(), WsError>> {
        if self.failed {
            return Poll::Ready(Err(broken()));
        }
        let result = std::task::ready!(step(Pin::new(&mut self.inner), cx));
        self.failed |= result.is_err();
        Poll::Ready(result)
    }
}

/// One of a sink's `poll_*` methods.
type PollStep<K> = fn(Pin<&mut K>, &mut Context<'_>) -> Poll<Result<(), WsError>>;

fn broken() -> WsError {
    io::Error::from(io::ErrorKind::BrokenPipe).into()
}

impl<K: Sink<WsMessage, Error = WsError> + Unpin> Sink<WsMessage> for Failing<K> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.get_mut().guard(cx, K::poll_ready)
    }

    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.failed {
            return Err(broken());
        }
        let sent = Pin::new(&mut this.inner).start_send(item);
        this.failed |= sent.is_err();
        sent
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.get_mut().guard(cx, K::poll_flush)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.get_mut().guard(cx, K::poll_close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            0..=125 => frame.push(0x80 | payload.len() as u8),
            126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    async fn read_all(bytes: Vec<u8>, cap: usize) -> Vec<Result<WsMessage, String>> {
        let mut reader = FrameReader::new(&bytes[..], cap);
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(message)) => out.push(Ok(message)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn accepts_only_a_websocket_request() {
        let request = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            accept_key(&headers)
        };
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // The example of RFC 6455 §1.3.
        assert_eq!(
            request(&good).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        for skip in 0..good.len() {
            let mut partial = good.to_vec();
            partial.remove(skip);
            assert_eq!(request(&partial), None, "without {}", good[skip].0);
        }
        let mut old = good;
        old[2].1 = "8";
        assert_eq!(request(&old), None);
    }

    #[tokio::test]
    async fn a_send_after_a_failed_one_fails_too() {
        use futures_util::SinkExt;
        let (ours, theirs) = tokio::io::duplex(64);
        let (mut sink, _stream) = split(ours, 1 << 20);
        drop(theirs);
        let big = WsMessage::Text("x".repeat(1 << 16));
        assert!(sink.send(big).await.is_err(), "the peer is gone");
        // What a viewer does on its way out: no panic, an error.
        assert!(sink.send(WsMessage::Close).await.is_err());
        assert!(sink.send(WsMessage::Pong(Vec::new())).await.is_err());
    }

    #[tokio::test]
    async fn reads_text_of_every_length_encoding() {
        for size in [0, 5, 125, 126, 65_535, 65_536, 300_000] {
            let text = "x".repeat(size);
            let got = read_all(client_frame(true, 1, text.as_bytes()), 1 << 20).await;
            assert_eq!(got, vec![Ok(WsMessage::Text(text))], "size {size}");
        }
    }

    #[tokio::test]
    async fn joins_fragments_around_a_ping() {
        let mut bytes = client_frame(false, 1, b"hel");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, b"lo"));
        bytes.extend(client_frame(true, 8, b""));
        let got = read_all(bytes, 100).await;
        assert_eq!(
            got,
            vec![
                Ok(WsMessage::Ping(b"p".to_vec())),
                Ok(WsMessage::Text("hello".into())),
                Ok(WsMessage::Close),
            ]
        );
    }

    #[tokio::test]
    async fn refuses_what_breaks_the_protocol() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", vec![0x81, 0x01, b'a']),
            ("reserved bits", {
                let mut f = client_frame(true, 1, b"a");
                f[0] |= 0x40;
                f
            }),
            ("unknown opcode", client_frame(true, 3, b"a")),
            ("fragmented ping", client_frame(false, 9, b"a")),
            ("long ping", client_frame(true, 9, &[0; 126])),
            ("stray continuation", client_frame(true, 0, b"a")),
            ("nested message", {
                let mut f = client_frame(false, 1, b"a");
                f.extend(client_frame(true, 1, b"b"));
                f
            }),
            ("bad utf-8", client_frame(true, 1, &[0xff, 0xfe])),
        ];
        for (name, bytes) in cases {
            let got = read_all(bytes, 100).await;
            let last = got.last().expect(name);
            assert!(
                matches!(last, Err(e) if e.starts_with("WebSocket protocol error")),
                "{name}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_a_message_over_the_cap_before_reading_it() {
        // The header alone announces too much: no payload follows.
        let mut header = client_frame(true, 1, &[0; 200]);
        header.truncate(2 + 2 + 4);
        let got = read_all(header, 100).await;
        assert_eq!(
            got,
            vec![Err(
                "a WebSocket message of 200 bytes or more exceeds the 100-byte cap".into()
            )]
        );
        // Fragments count together.
        let mut bytes = client_frame(false, 1, &[b'a'; 60]);
        bytes.extend(client_frame(true, 0, &[b'a'; 60]));
        let got = read_all(bytes, 100).await;
        assert!(
            matches!(got.last(), Some(Err(e)) if e.contains("120 bytes")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_socket_cut_inside_a_frame_is_an_error_and_between_frames_an_end() {
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.truncate(bytes.len() - 2);
        let got = read_all(bytes, 100).await;
        assert!(matches!(got.as_slice(), [Err(_)]), "{got:?}");
        assert_eq!(read_all(Vec::new(), 100).await, vec![]);
    }

    #[tokio::test]
    async fn the_payload_buffer_fits_the_message_it_holds() {
        let text = "y".repeat(900_000);
        let got = read_all(client_frame(true, 1, text.as_bytes()), 1 << 20).await;
        let Some(Ok(WsMessage::Text(read))) = got.first() else {
            panic!("{got:?}")
        };
        assert_eq!(read.len(), text.len());
        assert_eq!(read.capacity(), text.len());
    }

    #[tokio::test]
    async fn what_stays_after_a_large_message_is_the_fixed_read_buffer() {
        let bytes = client_frame(true, 1, "y".repeat(900_000).as_bytes());
        let mut reader = FrameReader::new(&bytes[..], 1 << 20);
        assert!(matches!(reader.next().await, Ok(Some(WsMessage::Text(_)))));
        assert!(reader.io.buffer().is_empty());
        assert!(reader.partial.is_none());
    }

    #[tokio::test]
    async fn writes_unmasked_final_frames() {
        let mut out = Vec::new();
        let mut writer = FrameWriter::new(&mut out);
        writer.send(WsMessage::Text("hi".into())).await.unwrap();
        writer.send(WsMessage::Text("z".repeat(300))).await.unwrap();
        writer.send(WsMessage::Close).await.unwrap();
        assert!(writer.send(WsMessage::Text("late".into())).await.is_err());
        assert_eq!(&out[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&out[4..8], &[0x81, 126, 1, 44]);
        assert_eq!(&out[out.len() - 2..], &[0x88, 0]);
    }
}
