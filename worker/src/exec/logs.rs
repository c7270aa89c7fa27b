//! The module's output on its way to the hub: each pipe is read to its
//! end, cut into lines and sent as batched `Log` calls with every secret
//! masked, over bounded channels so a slow connection slows the module's
//! output instead of filling memory. Also muster's own notes in a module's
//! log.

use std::time::Duration;

use muster_core::mask::Masker;
use muster_core::wire::calls::WorkerCall;
use muster_core::wire::types::{Assignment, LogStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::timeout_at;

/// How long a batch of log lines may wait before it is sent.
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// A batch is sent at once when it reaches this size.
const LOG_BATCH: usize = 32 * 1024;
/// A line longer than this is cut and sent in pieces (never inside a
/// secret, see [`pump`]).
const LOG_LINE: usize = 16 * 1024;

/// A line from muster itself in the module's log (stderr).
pub(super) async fn note_in_log(
    assignment: &Assignment,
    out: &mpsc::Sender<WorkerCall>,
    text: String,
) {
    let log = WorkerCall::Log {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
        stream: LogStream::Stderr,
        text: format!("[muster] {text}"),
    };
    let _ = out.send(log).await;
}

/// Streams one of the module's pipes to the hub as `Log` calls on
/// `stream`, in its own task.
pub(super) fn spawn_pump(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: LogStream,
    assignment: &Assignment,
    out: &mpsc::Sender<WorkerCall>,
    masker: &Masker,
) -> tokio::task::JoinHandle<()> {
    let masker = masker.clone();
    let module_id = assignment.module_id.clone();
    let attempt = assignment.attempt;
    let (batches, mut texts) = mpsc::channel::<String>(1);
    let out = out.clone();
    tokio::spawn(async move {
        let forward = async {
            while let Some(text) = texts.recv().await {
                let log = WorkerCall::Log {
                    module_id: module_id.clone(),
                    attempt,
                    stream,
                    text,
                };
                if out.send(log).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(pump(pipe, batches, &masker), forward);
    })
}

/// Reads a pipe to its end, cutting it into lines and sending them in
/// batches: at most [`LOG_FLUSH`] late, at most [`LOG_BATCH`] large, with
/// every secret masked. The channels are bounded, so a slow connection
/// slows the module's output instead of filling memory.
///
/// A batch only ever holds whole lines, so a secret is always within one
/// batch, except in a line longer than [`LOG_LINE`]: that is cut in pieces,
/// and the cut is moved past any secret it would split (holding back the
/// longest secret's length, so a secret that straddles the cut is complete
/// in the buffer) and off the middle of a UTF-8 character.
async fn pump(mut pipe: impl AsyncRead + Unpin, send: mpsc::Sender<String>, masker: &Masker) {
    let mut buf = vec![0u8; 8192];
    let mut partial: Vec<u8> = Vec::new();
    let mut batch = LineBatch::default();
    let mut deadline = None;
    loop {
        let read = match deadline {
            Some(at) => match timeout_at(at, pipe.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    batch.flush(&send, masker).await;
                    deadline = None;
                    continue;
                }
            },
            None => pipe.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        partial.extend_from_slice(&buf[..n]);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            batch.push(&line[..line.len() - 1]);
        }
        while partial.len() > LOG_LINE + masker.longest() {
            let mut cut = masker.cut_outside(&partial, LOG_LINE);
            while partial.get(cut).is_some_and(|&b| b & 0xC0 == 0x80) {
                cut += 1;
            }
            let piece: Vec<u8> = partial.drain(..cut).collect();
            batch.push(&piece);
        }
        if batch.len() >= LOG_BATCH {
            batch.flush(&send, masker).await;
            deadline = None;
        } else if !batch.is_empty() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + LOG_FLUSH);
        }
    }
    if !partial.is_empty() {
        batch.push(&partial);
    }
    batch.flush(&send, masker).await;
}

/// Lines joined by `\n`, without a trailing newline.
#[derive(Default)]
struct LineBatch(String);

impl LineBatch {
    fn push(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(&String::from_utf8_lossy(line));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sends the batch with every secret masked. A secret never holds a
    /// line break, so masking the joined lines is masking each line.
    async fn flush(&mut self, send: &mpsc::Sender<String>, masker: &Masker) {
        if !self.0.is_empty() {
            let text = masker.mask_owned(std::mem::take(&mut self.0));
            let _ = send.send(text).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `pump` sends for `input`.
    async fn batches(input: &[u8]) -> Vec<String> {
        masked_batches(input, &Masker::default()).await
    }

    /// Everything `pump` sends for `input` with `masker`.
    async fn masked_batches(input: &[u8], masker: &Masker) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(1);
        let collect = async {
            let mut sent = Vec::new();
            while let Some(text) = rx.recv().await {
                sent.push(text);
            }
            sent
        };
        let ((), sent) = tokio::join!(pump(input, tx, masker), collect);
        sent
    }

    #[tokio::test]
    async fn pump_batches_lines_and_keeps_the_last_partial_line() {
        assert_eq!(batches(b"one\r\ntwo\nthree").await, ["one\ntwo\nthree"]);
    }

    #[tokio::test]
    async fn pump_cuts_huge_lines() {
        let sent = batches(&vec![b'x'; LOG_LINE * 3]).await;
        let total: usize = sent.iter().map(|t| t.replace('\n', "").len()).sum();
        assert_eq!(total, LOG_LINE * 3);
    }

    #[tokio::test]
    async fn pump_masks_secrets() {
        let masker = Masker::new(["hunter2-very-secret"]);
        let sent = masked_batches(b"pw hunter2-very-secret\nhunter2-very-secret", &masker).await;
        assert_eq!(sent, ["pw ***\n***"]);
    }

    #[tokio::test]
    async fn a_huge_line_is_never_cut_inside_a_secret() {
        let secret = "S".repeat(100);
        let masker = Masker::new([&secret]);
        // Every possible place of the secret around the first cut.
        for start in LOG_LINE - 100..=LOG_LINE {
            let mut line = vec![b'x'; LOG_LINE * 2];
            line[start..start + 100].copy_from_slice(secret.as_bytes());
            let sent = masked_batches(&line, &masker).await.concat();
            assert!(!sent.contains('S'), "secret at {start} leaked");
            assert_eq!(sent.matches("***").count(), 1, "secret at {start}");
        }
        // Nor inside a UTF-8 character.
        let mut line = vec![b'x'; LOG_LINE - 1];
        line.extend_from_slice("é".repeat(10).as_bytes());
        let sent = batches(&line).await.concat();
        assert!(!sent.contains('\u{FFFD}'), "a character was split");
    }
}
