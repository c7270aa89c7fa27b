//! Failures with real processes and sockets: a worker killed mid-module, a
//! connection cut under a worker, a zombie worker that comes back late, a
//! module that kills every worker it lands on, a run cancelled from another
//! terminal, and a capability nobody has. Hubs run with shortened timeouts
//! so each case takes seconds.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{alive, muster, pipeline, wait_for_line, HubProcess, LIMIT};

const TOKEN: &str = "failures-token";

/// Hub timeouts short enough for tests: pings every 300 ms, lost after 1.5 s.
const FAST: &[&str] = &["--ping-interval", "300ms", "--client-timeout", "1500ms"];

/// A `muster worker` process whose module cwds are relative to `dir`.
fn worker(url: &str, name: &str, dir: &Path) -> Child {
    let dir = dir.to_str().unwrap();
    common::worker(
        url,
        TOKEN,
        name,
        &["--reconnect-timeout", "20s", "--workdir", dir],
    )
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits (bounded) for a process to be gone.
fn assert_dies(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_worker_s_module_runs_again_on_another_worker() {
    let (dir, file) = pipeline(
        r#"
[modules.victim]
run = '''
echo "$MUSTER_WORKER" > on-$MUSTER_ATTEMPT
if [ "$MUSTER_ATTEMPT" = 1 ]; then sleep 60 & echo $! > orphan.pid; wait; fi
echo "victim done on attempt $MUSTER_ATTEMPT"
'''
"#,
    );
    let hub = HubProcess::start(&file, TOKEN, FAST);
    let mut workers = [
        worker(&hub.url, "alpha", dir.path()),
        worker(&hub.url, "beta", dir.path()),
    ];
    let first = wait_for_line(&dir.path().join("on-1"));
    let (killed, survivor) = if first == "alpha" { (0, 1) } else { (1, 0) };
    signal(workers[killed].id(), "-KILL");
    let _ = workers[killed].wait();

    let out = hub.finish();
    // SIGKILL gave the worker no chance to stop its module's processes.
    let orphan: i32 = wait_for_line(&dir.path().join("orphan.pid"))
        .parse()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .arg(orphan.to_string())
        .status();
    let survivor_name = ["alpha", "beta"][survivor];
    assert_eq!(out.code(), 0, "{out}");
    let row = out.row("victim");
    assert_eq!(
        (row[1].as_str(), row[3].as_str()),
        ("succeeded", survivor_name),
        "{out}"
    );
    assert!(out.stdout.contains("victim done on attempt 2"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("worker {first} was lost during attempt 1")),
        "{out}"
    );
    let rest = common::wait(workers.into_iter().nth(survivor).unwrap(), LIMIT);
    assert_eq!(rest.code(), 0, "{rest}");
}

/// A TCP proxy between workers and the hub that can cut every connection
/// it carries, as a network drop would.
struct Proxy {
    port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(Mutex::new(Vec::new()));
        let streams = open.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut kept = streams.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy { port, open }
    }

    /// Shuts every carried connection down in both directions.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_cut_connection_reconnects_and_the_module_carries_on() {
    let (dir, file) = pipeline(
        r#"
[modules.long]
run = '''
echo "$MUSTER_ATTEMPT" > started
until [ -f go-on ]; do sleep 0.05; done
echo "long finished on attempt $MUSTER_ATTEMPT"
'''
"#,
    );
    // A window long enough that the reconnect, not the loss, decides.
    let hub = HubProcess::start(
        &file,
        TOKEN,
        &["--ping-interval", "500ms", "--client-timeout", "10s"],
    );
    let hub_port: u16 = hub
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches("/hub").parse().ok())
        .unwrap();
    let proxy = Proxy::start(hub_port);
    let through = format!("http://127.0.0.1:{}/hub", proxy.port);
    let child = worker(&through, "behind-proxy", dir.path());
    wait_for_line(&dir.path().join("started"));
    proxy.cut();
    // Let the worker notice and come back before the module ends.
    thread::sleep(Duration::from_millis(500));
    std::fs::write(dir.path().join("go-on"), "").unwrap();

    let out = hub.finish();
    let worker_out = common::wait(child, LIMIT);
    assert_eq!(out.code(), 0, "{out}\n{worker_out}");
    assert!(
        out.stdout.contains("long finished on attempt 1"),
        "{out}\n{worker_out}"
    );
    assert!(
        out.stdout
            .contains("worker behind-proxy reconnected and kept 1 module"),
        "{out}\n{worker_out}"
    );
    assert!(!out.stdout.contains("attempt 2"), "{out}");
    assert!(worker_out.stderr.contains("lost the hub"), "{worker_out}");
    assert_eq!(worker_out.code(), 0, "{worker_out}");
}

#[test]
fn a_zombie_worker_s_late_report_is_ignored_and_its_copy_stopped() {
    let (dir, file) = pipeline(
        r#"
[modules.z]
run = '''
echo "$MUSTER_WORKER" > on-$MUSTER_ATTEMPT
if [ "$MUSTER_ATTEMPT" = 1 ]; then echo $$ > one.pid; sleep 30; echo late > late-1; fi
sleep 2
echo "z done on attempt $MUSTER_ATTEMPT"
'''
"#,
    );
    let hub = HubProcess::start(&file, TOKEN, FAST);
    let workers = [
        worker(&hub.url, "alpha", dir.path()),
        worker(&hub.url, "beta", dir.path()),
    ];
    let first = wait_for_line(&dir.path().join("on-1"));
    let (zombie, other) = if first == "alpha" { (0, 1) } else { (1, 0) };
    let attempt_one: i32 = wait_for_line(&dir.path().join("one.pid")).parse().unwrap();
    signal(workers[zombie].id(), "-STOP");
    // The hub loses the silent worker and runs attempt 2 elsewhere.
    let second = wait_for_line(&dir.path().join("on-2"));
    signal(workers[zombie].id(), "-CONT");

    let out = hub.finish();
    let [a, b] = workers.map(|w| common::wait(w, LIMIT));
    let (zombie_out, _other_out) = if zombie == 0 { (a, b) } else { (b, a) };
    assert_eq!(second, ["alpha", "beta"][other]);
    assert_eq!(out.code(), 0, "{out}\n{zombie_out}");
    assert_eq!(out.row("z")[3], second, "{out}");
    assert!(out.stdout.contains("z done on attempt 2"), "{out}");
    assert!(!out.stdout.contains("z done on attempt 1"), "{out}");
    // Back from the dead, the zombie learns attempt 1 is no longer its own
    // and stops it; its report for attempt 1 is refused as stale.
    assert_dies(attempt_one);
    assert!(!dir.path().join("late-1").exists());
    assert!(
        zombie_out
            .stderr
            .contains("the hub no longer counts this attempt as ours"),
        "{zombie_out}"
    );
    assert!(
        out.stderr
            .contains("stale report for attempt 1 (current attempt 2)"),
        "{out}\n{zombie_out}"
    );
}

#[test]
fn a_module_that_kills_its_workers_fails_as_poison() {
    let (dir, file) = pipeline(
        r#"
[modules.poison]
run = "kill -9 $PPID; sleep 5"
"#,
    );
    let hub = HubProcess::start(&file, TOKEN, FAST);
    let workers: Vec<Child> = ["one", "two", "three"]
        .iter()
        .map(|name| worker(&hub.url, name, dir.path()))
        .collect();
    let out = hub.finish();
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("poison"), "failed", "{out}");
    assert!(out.stdout.contains("lost its worker 3 times ("), "{out}");
}

#[test]
fn muster_cancel_stops_every_module_on_every_worker() {
    let (dir, file) = pipeline(common::SLEEPERS);
    let hub = HubProcess::start(&file, TOKEN, &[]);
    let workers: Vec<Child> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| worker(&hub.url, name, dir.path()))
        .collect();
    let pids: Vec<i32> = ["one.pid", "two.pid", "three.pid"]
        .iter()
        .map(|f| wait_for_line(&dir.path().join(f)).parse().unwrap())
        .collect();

    let wrong = common::run(muster(&["cancel", "--hub", &hub.url, "--token", "nope"]));
    assert_eq!(wrong.code(), 2, "{wrong}");
    assert!(wrong.stderr.contains("refused the token"), "{wrong}");
    assert!(
        !wrong.stderr.contains("nope"),
        "the token is never printed: {wrong}"
    );

    let mut cancel = muster(&[
        "cancel",
        "--hub",
        &hub.url,
        "--reason",
        "the test says stop",
    ]);
    cancel.env("MUSTER_TOKEN", TOKEN);
    let cancel = common::run(cancel);
    assert_eq!(cancel.code(), 0, "{cancel}");
    assert!(cancel.stdout.contains("being cancelled"), "{cancel}");

    let out = hub.finish();
    assert_eq!(out.code(), 130, "{out}");
    for module in ["one", "two", "three", "after"] {
        assert_eq!(out.status_of(module), "cancelled", "{out}");
    }
    assert!(
        out.stdout
            .contains("cancelled: cancelled by `muster cancel` from 127.0.0.1: the test says stop"),
        "{out}"
    );
    for pid in pids {
        assert_dies(pid);
    }
    for w in workers {
        let done = common::wait(w, LIMIT);
        assert_eq!(done.code(), 0, "{done}");
    }
}

#[test]
fn a_capability_nobody_has_fails_after_the_wait_naming_what_is_missing() {
    let (dir, file) = pipeline(
        r#"
[modules.train]
requires = ["gpu"]
run = "echo never"
[modules.plain]
run = "echo plain ran"
"#,
    );
    let hub = HubProcess::start(&file, TOKEN, &["--capability-timeout", "1s"]);
    let child = worker(&hub.url, "cpu-only", dir.path());
    let out = hub.finish();
    let _ = common::wait(child, LIMIT);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("plain"), "succeeded", "{out}");
    assert_eq!(out.status_of("train"), "failed", "{out}");
    assert!(
        out.stdout
            .contains("no worker offers gpu (waited 1s); workers seen: cpu-only (os:"),
        "{out}"
    );

    // With no worker at all, the run still ends.
    let hub = HubProcess::start(&file, TOKEN, &["--capability-timeout", "1s"]);
    let out = hub.finish();
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stdout.contains("no worker joined within 1s"), "{out}");
}
