//! The tunnel program as a child process: spawned in its own process group
//! (so everything it starts dies with it), its stdout and stderr read line
//! by line, and the last lines kept so every failure can say what the
//! tunnel printed.

use std::collections::VecDeque;
use std::io;
use std::process::Stdio;
use std::time::Duration;

use muster_group::ProcessGroup;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::launch::Launch;
use super::output::clean_line;
use super::TunnelError;

/// How many of the tunnel's last output lines an error shows.
const LAST_LINES: usize = 8;

/// A tunnel process whose URL and readiness are still awaited: the child,
/// its group, and its output lines.
pub(super) struct TunnelProcess {
    /// How errors name the tunnel.
    pub(super) name: &'static str,
    group: ProcessGroup,
    child: Child,
    /// Output lines from both pipes, while starting.
    lines: mpsc::UnboundedReceiver<String>,
    lines_open: bool,
    recent: VecDeque<String>,
}

/// The tunnel process once it is open: nobody reads its lines any more
/// (they only go to the debug log). Dropping it kills the whole group.
pub(super) struct ProcessGuard {
    // Dropped in this order: the group is killed before the child handle
    // (whose own kill-on-drop then finds it dead) is released.
    _group: ProcessGroup,
    _child: Child,
}

/// Tries of a spawn whose program is busy, and the pause between them.
const BUSY_TRIES: u32 = 5;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

impl TunnelProcess {
    pub(super) fn spawn(launch: Launch) -> Result<TunnelProcess, TunnelError> {
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in &launch.env_remove {
            command.env_remove(name);
        }
        #[cfg(unix)]
        command.process_group(0);
        let program = launch.program.to_string_lossy().into_owned();
        // A program written a moment ago (an installer's, a test's) is
        // busy while another process forked meanwhile still holds it open
        // for writing: tried again a few times, briefly.
        let mut busy = 0;
        let spawned = loop {
            match command.spawn() {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && busy < BUSY_TRIES => {
                    busy += 1;
                    std::thread::sleep(BUSY_PAUSE);
                }
                spawned => break spawned,
            }
        };
        let mut child = spawned.map_err(|source| match launch.alternatives {
            Some(alternatives) if source.kind() == io::ErrorKind::NotFound => {
                TunnelError::NotInstalled {
                    program,
                    alternatives,
                }
            }
            _ => TunnelError::Spawn { program, source },
        })?;
        // Right after spawning: the group leader is our child, which is
        // never reaped before the guard drops, so the id stays ours.
        let group = ProcessGroup::of(&child);
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            forward(out, launch.name, launch.secret.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, launch.name, launch.secret, tx);
        }
        Ok(TunnelProcess {
            name: launch.name,
            group,
            child,
            lines,
            lines_open: true,
            recent: VecDeque::new(),
        })
    }

    /// Waits for the next output line (`Some`), or until `wake` (`None`);
    /// fails if the deadline passes or the process exits.
    pub(super) async fn step(
        &mut self,
        waiting_for: &str,
        deadline: Instant,
        timeout: Duration,
        wake: Instant,
    ) -> Result<Option<String>, TunnelError> {
        tokio::select! {
            biased;
            line = self.lines.recv(), if self.lines_open => match line {
                Some(line) => {
                    self.remember(&line);
                    Ok(Some(line))
                }
                None => {
                    self.lines_open = false;
                    Ok(None)
                }
            },
            status = self.child.wait() => {
                let status = match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("its status is unknown: {e}"),
                };
                self.drain().await;
                Err(TunnelError::Exited {
                    tunnel: self.name.to_owned(),
                    status,
                    waiting_for: waiting_for.to_owned(),
                    output: self.output(),
                })
            }
            _ = sleep_until(wake.min(deadline)) => {
                if Instant::now() < deadline {
                    return Ok(None);
                }
                self.drain().await;
                Err(TunnelError::Timeout {
                    tunnel: self.name.to_owned(),
                    waiting_for: waiting_for.to_owned(),
                    timeout,
                    output: self.output(),
                })
            }
        }
    }

    /// Takes in what the process printed last, waiting briefly for the
    /// pipes to close after an exit.
    async fn drain(&mut self) {
        let grace = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(grace);
        while self.lines_open {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Some(line) => self.remember(&line),
                    None => self.lines_open = false,
                },
                _ = &mut grace => break,
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.recent.len() == LAST_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_owned());
    }

    /// The last lines, for an error message.
    fn output(&self) -> String {
        if self.recent.is_empty() {
            return "it printed nothing".to_owned();
        }
        let mut out = "its last output:".to_owned();
        for line in &self.recent {
            out.push_str("\n    ");
            out.push_str(line);
        }
        out
    }

    /// Stops collecting output: dropping the receiver leaves the readers
    /// only logging.
    pub(super) fn into_guard(self) -> ProcessGuard {
        ProcessGuard {
            _group: self.group,
            _child: self.child,
        }
    }
}

/// Reads one pipe line by line: to the channel while the tunnel starts,
/// and to the debug log for as long as the process runs (the pipe must be
/// drained, or the tunnel blocks on a full pipe).
fn forward(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    secret: Option<String>,
    tx: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = clean_line(&buf, secret.as_deref());
            tracing::debug!(tunnel = name, "{line}");
            // Fails once the tunnel is open and nobody listens any more.
            let _ = tx.send(line);
        }
    });
}
