//! One master per run folder: the master holds an exclusive lock on the
//! folder's `lock` file while it runs (the kernel drops it when the
//! process dies, however it dies), so two `--resume`s cannot write one
//! journal, and `muster status` can tell a running master from one that
//! is gone.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::failure::Failure;

const LOCK_FILE: &str = "lock";

/// Held while the master runs; released when dropped or when the process
/// ends.
pub struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Takes the lock of the run folder `dir`, or says who holds it.
    pub fn take(dir: &Path, run_id: &str) -> Result<RunLock, Failure> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Failure::infrastructure(format!("cannot open {}: {e}", path.display())))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Failure::Usage(format!(
                    "run {run_id} is still running (master process {}): wait for it, or stop it first \
                     (`muster status {run_id}` shows how far it is)",
                    pid.trim()
                )));
            }
            Err((_, e)) => {
                return Err(Failure::infrastructure(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )))
            }
        };
        let _ = lock.set_len(0);
        let _ = write!(lock, "{}", std::process::id());
        Ok(RunLock { _lock: lock })
    }
}

/// True when a master holds the run folder's lock now.
pub fn is_running(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}
