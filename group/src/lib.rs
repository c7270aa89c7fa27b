//! A child started in its own process group (`Command::process_group(0)`)
//! is owned through a [`ProcessGroup`]: everything the child starts goes
//! with it, on purpose (`terminate`, `kill`) or when the owner is dropped
//! (a cancelled task, an unwinding run). This is the only place muster
//! signals a process group, so the guard against group ids 0 and 1 (our
//! own group, init's) lives once.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

/// The process group led by a child; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct ProcessGroup {
    /// `None` once the child was reaped before we learnt its id, or when
    /// the id cannot be a group of ours.
    leader: Option<Pid>,
}

impl ProcessGroup {
    /// The group of a child spawned with `process_group(0)`. Call it right
    /// after spawning: the leader is not reaped before this owner drops, so
    /// the id cannot be reused by anyone else meanwhile.
    pub fn of(child: &Child) -> ProcessGroup {
        let leader = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            // Never 0 or 1: those would hit our own group or init's.
            .filter(|&id| id > 1)
            .map(Pid::from_raw);
        ProcessGroup { leader }
    }

    /// Sends `signal` to every process in the group.
    pub fn signal(&self, signal: Signal) {
        if let Some(leader) = self.leader {
            let _ = killpg(leader, signal);
        }
    }

    /// SIGTERM to the group, then SIGKILL if the leader has not ended
    /// within `grace`; waits for the leader either way.
    pub async fn terminate(&self, child: &mut Child, grace: Duration) {
        if self.leader.is_none() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            self.signal(Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use tokio::process::Command;

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    /// A grandchild (started in the background by the shell) goes with the
    /// group when the owner drops.
    #[tokio::test]
    async fn dropping_the_owner_kills_the_whole_group() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = ProcessGroup::of(&child);
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        assert!(alive(grandchild));
        drop(group);
        let _ = child.wait().await;
        // The grandchild is reparented and reaped by init; give it a moment.
        for _ in 0..100 {
            if !alive(grandchild) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the grandchild {grandchild} outlived its group");
    }

    #[tokio::test]
    async fn terminate_waits_for_the_leader() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = ProcessGroup::of(&child);
        group.terminate(&mut child, Duration::from_secs(5)).await;
        assert!(child.try_wait().unwrap().is_some());
    }
}
