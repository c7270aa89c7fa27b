//! A second Ctrl-C (or SIGTERM) on the master: it exits at once with 130,
//! and still cleans up after itself, since its destructors run: every
//! module's process group is killed and the temporary folders are removed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{muster, pipeline};

/// Modules whose processes ignore SIGTERM, so only the kill grace's
/// SIGKILL (5 s after a cancel) or a dropped process group ends them.
const STUBBORN: &str = r#"
[modules.one]
run = "trap '' TERM; sleep 60 & echo $! > one.pid; wait"
[modules.two]
run = "trap '' TERM; sleep 60 & echo $! > two.pid; wait"
"#;

fn sigterm(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

#[test]
fn a_second_sigterm_exits_at_once_and_still_kills_every_module() {
    let (dir, file) = pipeline(STUBBORN);
    let temporary = tempfile::tempdir().unwrap();
    let child = muster(&["run", file.to_str().unwrap(), "--workers", "2"])
        .env("TMPDIR", temporary.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pids: Vec<i32> = ["one.pid", "two.pid"]
        .map(|f| common::wait_for_line(&dir.path().join(f)).parse().unwrap())
        .into();
    let started = Instant::now();
    sigterm(child.id());
    std::thread::sleep(Duration::from_millis(500));
    sigterm(child.id());
    let out = common::wait(child, common::LIMIT);
    assert_eq!(out.code(), 130, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exited only after {:?}, the kill grace: {out}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&pid| common::alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(!common::alive(pid), "process {pid} survived: {out}");
    }
    let left: Vec<_> = std::fs::read_dir(temporary.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "temporary folders left behind: {left:?}");
}
