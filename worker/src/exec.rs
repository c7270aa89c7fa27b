//! Runs one assigned module as a process: its own process group, the
//! given shell, cwd and env, stdout and stderr streamed as batched `Log`
//! calls, the timeout and cancellation enforced on the whole group, and the
//! outcome reported with outputs and timing. The values of the module's
//! `secrets` (and of the hub token) are masked in every log batch, in the
//! report's error and in its output values, before they leave the worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use muster_core::mask::Masker;
use muster_core::outputs::{parse_outputs, OUTPUT_CAP};
use muster_core::protocol::{Artifact, Assignment, LogStream, Report, ReportStatus, WorkerCall};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

use crate::transfer::{
    describe as describe_file, find_produced, Fetched, Transfer, Uploaded, LARGE_TRANSFER,
};

/// How long a batch of log lines may wait before it is sent.
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// A batch is sent at once when it reaches this size.
const LOG_BATCH: usize = 32 * 1024;
/// A line longer than this is cut and sent in pieces (never inside a
/// secret, see [`pump`]).
const LOG_LINE: usize = 16 * 1024;
/// muster's own secrets, which a module never inherits: with the hub's
/// token a module could cancel the run or join it as a worker.
const WITHHELD: [&str; 3] = ["MUSTER_TOKEN", "MUSTER_REDIS_URL", "BORE_SECRET"];
/// Time between SIGTERM and SIGKILL when a module is stopped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the pipes to drain after the process ended.
const DRAIN: Duration = Duration::from_secs(2);

/// Who is running the module, for its environment.
pub(crate) struct Context<'a> {
    pub worker_name: &'a str,
    pub workdir: &'a Path,
    /// Masked in everything the module prints.
    pub hub_token: &'a str,
    /// Moves the module's artifacts to and from the hub.
    pub transfer: &'a Transfer,
}

/// Runs the assignment to its end and sends `Started`, `Log`s and the
/// `Complete` report through `out`.
pub(crate) async fn execute(
    assignment: Assignment,
    context: Context<'_>,
    out: mpsc::Sender<WorkerCall>,
    cancel: CancellationToken,
) {
    let begun = Instant::now();
    let masker = secret_masker(&assignment, context.hub_token);
    let report = |status, exit_code, error: Option<String>, outputs: BTreeMap<_, _>| {
        // An output that carries a secret is passed on masked, not refused:
        // the module succeeded, and its dependents see `***`.
        let outputs = outputs
            .into_iter()
            .map(|(key, value): (String, String)| (key, masker.mask_owned(value)))
            .collect();
        WorkerCall::Complete(Report {
            module_id: assignment.module_id.clone(),
            attempt: assignment.attempt,
            status,
            exit_code,
            outputs,
            error: error.map(|e| masker.mask_owned(e)),
            duration_ms: begun.elapsed().as_millis() as u64,
            artifacts: Vec::new(),
        })
    };
    let fail = |status, error: String| report(status, None, Some(error), Default::default());
    if cancel.is_cancelled() {
        // Cancelled before it was spawned: nothing to start or to kill.
        let _ = out
            .send(fail(
                ReportStatus::Cancelled,
                "cancelled before it started".into(),
            ))
            .await;
        return;
    }
    // The hand-off: from here the worker owns the attempt. Said before the
    // artifacts are fetched, since the hub takes back an assignment that
    // is not started within its start timeout, and downloads can be long.
    let started = WorkerCall::Started {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
    };
    let _ = out.send(started).await;
    let cwd = context.workdir.join(&assignment.cwd);
    let fetched = tokio::select! {
        fetched = fetch_consumed(&assignment, &cwd, context.transfer, &out) => fetched,
        () = cancel.cancelled() => Err("cancelled while fetching its artifacts".into()),
    };
    if let Err(error) = fetched {
        let status = match cancel.is_cancelled() {
            true => ReportStatus::Cancelled,
            false => ReportStatus::Failed,
        };
        let _ = out.send(fail(status, error)).await;
        return;
    }
    let output_file = match tempfile::Builder::new().prefix("muster-output-").tempfile() {
        Ok(file) => file,
        Err(e) => {
            let error = format!("could not create the $MUSTER_OUTPUT file: {e}");
            let _ = out.send(fail(ReportStatus::Failed, error)).await;
            return;
        }
    };
    let mut child = match spawn(&assignment, &context, &cwd, output_file.path()) {
        Ok(child) => child,
        Err(e) => {
            let shell = assignment.shell.first().map(String::as_str).unwrap_or("");
            let error = format!("could not start {shell:?} in {}: {e}", cwd.display());
            let _ = out.send(fail(ReportStatus::Failed, error)).await;
            return;
        }
    };
    let group = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
    let pumps = [
        child
            .stdout
            .take()
            .map(|pipe| spawn_pump(pipe, LogStream::Stdout, &assignment, &out, &masker)),
        child
            .stderr
            .take()
            .map(|pipe| spawn_pump(pipe, LogStream::Stderr, &assignment, &out, &masker)),
    ];
    let timeout = Duration::from_millis(assignment.timeout_ms);
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        () = tokio::time::sleep(timeout) => Ended::TimedOut,
        () = cancel.cancelled() => Ended::Cancelled,
    };
    if !matches!(ended, Ended::Exited(_)) {
        stop_group(&mut child, group.0).await;
    }
    // Whatever the module left running in its group goes with it.
    drop(group);
    for pump in pumps.into_iter().flatten() {
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN, pump).await.is_err() {
            abort.abort();
        }
    }
    let path = output_file.path().to_owned();
    let outputs = tokio::task::spawn_blocking(move || read_outputs(&path))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
        .and_then(|bytes| parse_outputs(&bytes).map_err(|e| e.to_string()));
    let call = match ended {
        Ended::TimedOut => fail(
            ReportStatus::TimedOut,
            format!("timed out after {}", humanize(timeout)),
        ),
        Ended::Cancelled => fail(ReportStatus::Cancelled, "cancelled".into()),
        Ended::Exited(Err(e)) => fail(ReportStatus::Failed, format!("lost the process: {e}")),
        Ended::Exited(Ok(status)) if !status.success() => report(
            ReportStatus::Failed,
            status.code(),
            Some(describe(status)),
            Default::default(),
        ),
        Ended::Exited(Ok(_)) => match outputs {
            Ok(outputs) => {
                let uploaded = tokio::select! {
                    uploaded = upload_produced(&assignment, &cwd, context.transfer, &out) => uploaded,
                    () = cancel.cancelled() => Err("cancelled while uploading its artifacts".into()),
                };
                match uploaded {
                    Ok(artifacts) => {
                        let mut call = report(ReportStatus::Succeeded, Some(0), None, outputs);
                        if let WorkerCall::Complete(report) = &mut call {
                            report.artifacts = artifacts;
                        }
                        call
                    }
                    Err(e) if cancel.is_cancelled() => fail(ReportStatus::Cancelled, e),
                    Err(e) => report(ReportStatus::Failed, Some(0), Some(e), Default::default()),
                }
            }
            Err(e) => report(ReportStatus::Failed, Some(0), Some(e), Default::default()),
        },
    };
    let _ = out.send(call).await;
}

/// Downloads what the module consumes into its cwd before it starts, and
/// says so in its log for large files.
async fn fetch_consumed(
    assignment: &Assignment,
    cwd: &Path,
    transfer: &Transfer,
    out: &mpsc::Sender<WorkerCall>,
) -> Result<(), String> {
    if assignment.consumes.is_empty() {
        return Ok(());
    }
    tokio::fs::create_dir_all(cwd)
        .await
        .map_err(|e| format!("could not create its folder {}: {e}", cwd.display()))?;
    for consumed in &assignment.consumes {
        let fetched = transfer
            .download(cwd, consumed)
            .await
            .map_err(|e| e.to_string())?;
        let note = match fetched {
            Fetched::Downloaded(moved) if moved.bytes > LARGE_TRANSFER => Some(format!(
                "fetched {} from {}: {moved}",
                consumed.artifact.path, consumed.from
            )),
            _ => None,
        };
        if let Some(note) = note {
            note_in_log(assignment, out, note).await;
        }
    }
    Ok(())
}

/// Finds, hashes and uploads what the module produced, after it succeeded.
async fn upload_produced(
    assignment: &Assignment,
    cwd: &Path,
    transfer: &Transfer,
    out: &mpsc::Sender<WorkerCall>,
) -> Result<Vec<Artifact>, String> {
    if assignment.produces.is_empty() {
        return Ok(Vec::new());
    }
    let (folder, patterns) = (cwd.to_owned(), assignment.produces.clone());
    let found = tokio::task::spawn_blocking(move || find_produced(&folder, &patterns))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut artifacts = Vec::with_capacity(found.len());
    for file in &found {
        let artifact = describe_file(file).await.map_err(|e| e.to_string())?;
        let uploaded = transfer
            .upload(&assignment.module_id, cwd, &artifact)
            .await
            .map_err(|e| e.to_string())?;
        if let Uploaded::Sent(moved) = uploaded {
            if moved.bytes > LARGE_TRANSFER {
                note_in_log(
                    assignment,
                    out,
                    format!("uploaded {}: {moved}", artifact.path),
                )
                .await;
            }
        }
        artifacts.push(artifact);
    }
    Ok(artifacts)
}

/// A line from muster itself in the module's log (stderr).
async fn note_in_log(assignment: &Assignment, out: &mpsc::Sender<WorkerCall>, text: String) {
    let log = WorkerCall::Log {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
        stream: LogStream::Stderr,
        text: format!("[muster] {text}"),
    };
    let _ = out.send(log).await;
}

/// `Started` for [`crate::WorkerConfig::noop`], which runs nothing.
pub(crate) fn noop_started(assignment: &Assignment) -> WorkerCall {
    WorkerCall::Started {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
    }
}

/// A succeeded `Complete` for [`crate::WorkerConfig::noop`].
pub(crate) fn noop_complete(assignment: &Assignment) -> WorkerCall {
    WorkerCall::Complete(Report {
        module_id: assignment.module_id.clone(),
        attempt: assignment.attempt,
        status: ReportStatus::Succeeded,
        exit_code: Some(0),
        outputs: BTreeMap::new(),
        error: None,
        duration_ms: 0,
        artifacts: Vec::new(),
    })
}

/// Masks what the module could print that it must not: each of its
/// `secrets` as the module sees it (its `env`) and as the worker has it (its
/// own environment, which the module inherits), and the hub token when the
/// worker got it from the environment.
fn secret_masker(assignment: &Assignment, hub_token: &str) -> Masker {
    let from_worker =
        |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    let mut values = Vec::new();
    for name in &assignment.secrets {
        values.extend(assignment.env.get(name).cloned());
        values.extend(from_worker(name));
    }
    values.extend(WITHHELD.iter().filter_map(|name| from_worker(name)));
    values.push(hub_token.to_owned());
    Masker::new(values)
}

/// Kills the module's whole process group when dropped, so nothing it
/// started outlives it, even if the execution task itself is dropped.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// Reads at most one byte past the cap of `$MUSTER_OUTPUT`, refusing
/// anything the module put in the file's place that is not a regular file
/// (a FIFO would block, a link to /dev/zero would never end).
fn read_outputs(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let unreadable = |e: std::io::Error| format!("cannot read $MUSTER_OUTPUT: {e}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err("$MUSTER_OUTPUT was replaced by something that is not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(OUTPUT_CAP as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(bytes)
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

fn spawn(
    assignment: &Assignment,
    context: &Context<'_>,
    cwd: &Path,
    output: &Path,
) -> std::io::Result<Child> {
    if let Some(words) = plain_words(&assignment.shell, &assignment.command) {
        match command(words[0], &words[1..], assignment, context, cwd, output).spawn() {
            // Not a program after all (a function in the shell's profile?):
            // let the shell run it, and say "not found" itself if it must.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            spawned => return spawned,
        }
    }
    let (program, args) = assignment
        .shell
        .split_first()
        .ok_or_else(|| std::io::Error::other("the assignment names no shell"))?;
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push(&assignment.command);
    command(program, &args, assignment, context, cwd, output).spawn()
}

/// Words the shell would only split, never interpret, in front of which a
/// shell adds nothing but a process: letters, digits and `_./-+,:@%`.
const PLAIN: &[u8] = b"_./-+,:@%";

/// Shell builtins and keywords with no program of the same name, or whose
/// program behaves differently (`echo`, `printf`): these need the shell.
const SHELL_ONLY: &[&str] = &[
    ".", "alias", "break", "case", "cd", "command", "continue", "do", "done", "echo", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "fi", "for", "function", "getopts", "hash",
    "if", "local", "printf", "read", "readonly", "return", "set", "shift", "source", "then",
    "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// A command simple enough to run without the shell, split into words, as
/// make does: only with the default `sh -c`, only plain words, and not a
/// shell builtin. It saves starting a shell for every `true` or `cargo
/// test --release`; anything else goes through the shell.
fn plain_words<'a>(shell: &[String], command: &'a str) -> Option<Vec<&'a str>> {
    if shell != ["sh", "-c"] {
        return None;
    }
    let words: Vec<&str> = command.split_ascii_whitespace().collect();
    let plain = |w: &&str| {
        w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || PLAIN.contains(&b))
    };
    let first = *words.first()?;
    (words.iter().all(plain) && !SHELL_ONLY.contains(&first)).then_some(words)
}

/// The module's process: its environment, cwd, pipes and process group.
fn command(
    program: &str,
    args: &[&str],
    assignment: &Assignment,
    context: &Context<'_>,
    cwd: &Path,
    output: &Path,
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .envs(&assignment.env)
        .env_remove(WITHHELD[0])
        .env_remove(WITHHELD[1])
        .env_remove(WITHHELD[2])
        .env("MUSTER_MODULE", &assignment.module_id)
        .env("MUSTER_ATTEMPT", assignment.attempt.to_string())
        .env("MUSTER_WORKER", context.worker_name)
        .env("MUSTER_OUTPUT", output)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// SIGTERM to the whole group, then SIGKILL if it has not ended in time.
async fn stop_group(child: &mut Child, group: Option<Pid>) {
    let Some(group) = group else {
        return;
    };
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without an exit code".into(),
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{secs}s")
    }
}

fn spawn_pump(
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

    #[test]
    fn plain_commands_skip_the_shell() {
        let sh = ["sh".to_owned(), "-c".to_owned()];
        assert_eq!(plain_words(&sh, "true"), Some(vec!["true"]));
        assert_eq!(
            plain_words(&sh, " cargo  test --release -p a/b "),
            Some(vec!["cargo", "test", "--release", "-p", "a/b"])
        );
        for shell_needed in [
            "",
            "echo hi",
            "cd x",
            "a && b",
            "FOO=1 make",
            "ls *.rs",
            "echo $HOME",
            "x > y",
            "'quoted'",
            "a; b",
            "exit 1",
        ] {
            assert_eq!(plain_words(&sh, shell_needed), None, "{shell_needed:?}");
        }
        let bash = [
            "bash".to_owned(),
            "-eo".to_owned(),
            "pipefail".to_owned(),
            "-c".to_owned(),
        ];
        assert_eq!(plain_words(&bash, "true"), None, "only the default shell");
    }

    #[test]
    fn secrets_come_from_the_module_env_and_the_worker_env() {
        let assignment = Assignment {
            module_id: "m".into(),
            attempt: 1,
            command: String::new(),
            shell: vec![],
            cwd: ".".into(),
            env: BTreeMap::from([
                ("FROM_ENV".into(), "module-env-secret".into()),
                ("PLAIN".into(), "plain-value".into()),
            ]),
            timeout_ms: 1000,
            needs: BTreeMap::new(),
            secrets: vec!["FROM_ENV".into(), "PATH".into(), "UNSET_X_Y_Z".into()],
            produces: vec![],
            consumes: vec![],
        };
        let masker = secret_masker(&assignment, "the-hub-token");
        let path = std::env::var("PATH").unwrap();
        let text = format!("module-env-secret plain-value {path} the-hub-token");
        assert_eq!(masker.mask(&text), "*** plain-value *** ***");
    }

    #[test]
    fn outputs_must_stay_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_outputs(&fifo)
            .unwrap_err()
            .contains("not a regular file"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_outputs(&link).unwrap_err().contains("cannot read"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; OUTPUT_CAP * 2]).unwrap();
        assert_eq!(read_outputs(&big).unwrap().len(), OUTPUT_CAP + 1);
    }
}
