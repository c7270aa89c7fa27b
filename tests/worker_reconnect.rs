//! `muster worker --reconnect-timeout`: against a hub that refuses every
//! connection, the worker keeps trying until the deadline and gives up
//! within a second of it (exit 3), neither early (skipping its last wait)
//! nor late (an attempt running past it).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{muster, LIMIT};

/// A worker against `hub` giving up after `timeout`, started now.
fn worker(hub: &str, timeout: &str) -> (Child, Instant) {
    let child = muster(&[
        "worker",
        "--hub",
        hub,
        "--token",
        "t",
        "--name",
        "patient",
        "--reconnect-timeout",
        timeout,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn worker");
    (child, Instant::now())
}

#[test]
fn a_worker_gives_up_on_a_refusing_hub_at_its_deadline() {
    let port = common::free_port();
    let hub = format!("http://127.0.0.1:{port}/hub");
    // Both at once, each timed on its own thread: 4 s ends within the
    // backoff's first steps, 8 s reaches its 5 s cap, where skipping the
    // last wait cost up to 5 s.
    let runs: Vec<_> = [4u64, 8]
        .into_iter()
        .map(|secs| {
            let (child, start) = worker(&hub, &format!("{secs}s"));
            let timed = std::thread::spawn(move || {
                let out = common::wait(child, LIMIT);
                (out, start.elapsed())
            });
            (secs, timed)
        })
        .collect();
    for (secs, timed) in runs {
        let (out, took) = timed.join().expect("the waiting thread");
        let deadline = Duration::from_secs(secs);
        assert_eq!(out.code(), 3, "{out}");
        // The first failure is said once, with the whole limit.
        assert!(
            out.stderr.contains(&format!("retrying for up to {secs}s")),
            "{out}"
        );
        assert!(
            took + Duration::from_secs(1) >= deadline && took <= deadline + Duration::from_secs(1),
            "exited after {took:?}, expected {deadline:?} ± 1 s: {out}"
        );
        let waited = gave_up_after(&out.stderr);
        assert!(
            (waited - deadline.as_secs_f64()).abs() <= 1.0,
            "says it gave up after {waited}s, expected {deadline:?} ± 1 s: {out}"
        );
    }
}

/// The seconds in "gave up on the hub after trying for 4.0s".
fn gave_up_after(stderr: &str) -> f64 {
    let (_, rest) = stderr
        .split_once("gave up on the hub after trying for ")
        .expect("the worker says when it gave up");
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().expect("a number of seconds")
}
