//! `muster ci` as separate processes against a real `redis-server`: three
//! instances split a run and all exit with its status, a worker that starts
//! before the master waits for it, a worker that comes after the run exits
//! 0, every instance waits for a Redis that starts late, and bad Redis
//! URLs, a missing tunnel binary and a discovery timeout each end in one
//! clear line.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{muster, pipeline, RedisServer, LIMIT};

const TOKEN: &str = "ci-mode-token";

/// `muster ci FILE --instance I --total N --run-id RUN` on loopback plus
/// `extra`, with the Redis URL and token in the environment as CI secrets
/// would be.
fn ci_command(
    file: &Path,
    redis: &str,
    run: &str,
    index: u32,
    total: u32,
    extra: &[&str],
) -> Command {
    let (index, total) = (index.to_string(), total.to_string());
    let mut command = muster(&[
        "ci",
        file.to_str().unwrap(),
        "--instance",
        &index,
        "--total",
        &total,
        "--run-id",
        run,
        "--listen",
        "127.0.0.1:0",
    ]);
    command
        .args(extra)
        .env("MUSTER_REDIS_URL", redis)
        .env("MUSTER_TOKEN", TOKEN);
    command
}

/// [`ci_command`], started with its output captured.
fn instance(file: &Path, redis: &str, run: &str, index: u32, total: u32, extra: &[&str]) -> Child {
    ci_command(file, redis, run, index, total, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn muster ci")
}

/// Three modules that each wait until all three have started, so they run
/// at once on three different workers; `fails` fails after that, and
/// `after` is skipped for it.
const SPLIT: &str = r#"
[defaults]
timeout = "40s"

[modules.one]
run = "touch arrived-one; until [ $(ls arrived-* | wc -l) -ge 3 ]; do sleep 0.05; done; echo one on $MUSTER_WORKER"
[modules.two]
run = "touch arrived-two; until [ $(ls arrived-* | wc -l) -ge 3 ]; do sleep 0.05; done; echo two on $MUSTER_WORKER"
[modules.fails]
run = "touch arrived-fails; until [ $(ls arrived-* | wc -l) -ge 3 ]; do sleep 0.05; done; echo fails on $MUSTER_WORKER; exit 4"
[modules.after]
needs = ["fails"]
run = "echo never"
"#;

#[test]
fn three_instances_split_a_run_and_all_exit_with_its_status() {
    let redis = RedisServer::start();
    let (dir, file) = pipeline(SPLIT);
    // The workers start first: they wait for the master's record.
    let workers: Vec<Child> = (1..=2)
        .map(|i| instance(&file, &redis.url(), "split-run", i, 3, &[]))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let master = instance(&file, &redis.url(), "split-run", 0, 3, &[]);
    let mut all = common::wait_all(std::iter::once(master).chain(workers).collect(), LIMIT);
    let workers = all.split_off(1);
    let master = all.remove(0);

    assert_eq!(master.code(), 1, "the run failed: {master}");
    assert!(
        master
            .stdout
            .contains("instance 0 of 3 (from --instance 0 --total 3): master"),
        "{master}"
    );
    let mut ran_on = Vec::new();
    for module in ["one", "two", "fails"] {
        ran_on.push(master.row(module)[3].clone());
    }
    ran_on.sort();
    assert_eq!(
        ran_on,
        ["instance-0-1", "instance-1", "instance-2"],
        "a module ran on each instance: {master}"
    );
    assert_eq!(master.status_of("fails"), "failed", "{master}");
    assert_eq!(master.status_of("after"), "skipped", "{master}");
    for worker in &workers {
        assert_eq!(
            worker.code(),
            1,
            "every instance exits with the run's status: {worker}"
        );
        assert!(worker.stdout.contains("): worker"), "{worker}");
        assert!(
            worker.stdout.contains("the run has finished: failed"),
            "{worker}"
        );
    }
    drop(dir);

    // A worker that arrives after the run finished has nothing to do.
    let late = common::wait(instance(&file, &redis.url(), "split-run", 2, 3, &[]), LIMIT);
    assert_eq!(late.code(), 0, "{late}");
    assert!(
        late.stdout.contains("has already finished (failed)"),
        "{late}"
    );
}

/// In CI, Redis is often a service container still starting when the job
/// does: all three instances, the master too, wait for it (saying so once)
/// and the run goes on as usual, one module on each instance.
#[test]
fn every_instance_waits_for_a_redis_that_starts_late() {
    let (_dir, file) = pipeline(
        r#"
[modules.zero]
requires = ["on-0"]
run = "echo zero on $MUSTER_WORKER"
[modules.one]
requires = ["on-1"]
run = "echo one on $MUSTER_WORKER"
[modules.two]
requires = ["on-2"]
run = "echo two on $MUSTER_WORKER"
"#,
    );
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let instances: Vec<Child> = (0..3)
        .map(|i| {
            let capability = format!("on-{i}");
            let extra = ["--discover-timeout", "40s", "-c", &capability];
            instance(&file, &url, "late-redis", i, 3, &extra)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let _redis = RedisServer::start_late(port, &[]);
    let mut all = common::wait_all(instances, LIMIT);
    let master = all.remove(0);
    assert_eq!(master.code(), 0, "{master}");
    assert_eq!(master.row("zero")[3], "instance-0-1", "{master}");
    assert_eq!(master.row("one")[3], "instance-1", "{master}");
    assert_eq!(master.row("two")[3], "instance-2", "{master}");
    let waiting = format!(
        "muster: Redis at {url} is not answering yet (connection refused); retrying for up to 40s"
    );
    for out in std::iter::once(&master).chain(&all) {
        assert_eq!(out.code(), 0, "{out}");
        assert_eq!(
            out.stdout.matches(&waiting).count(),
            1,
            "each instance says once that it waits: {out}"
        );
    }
    for worker in &all {
        assert!(
            worker.stdout.contains("the run has finished: succeeded"),
            "{worker}"
        );
    }
}

#[test]
fn a_run_that_succeeds_ends_every_instance_with_zero() {
    let redis = RedisServer::start();
    // Each module waits for the other to start: both instances take part.
    let (_dir, file) = pipeline(
        r#"
[modules.a]
run = "touch arrived-a; until [ $(ls arrived-* | wc -l) -ge 2 ]; do sleep 0.05; done"
[modules.b]
run = "touch arrived-b; until [ $(ls arrived-* | wc -l) -ge 2 ]; do sleep 0.05; done"
"#,
    );
    let worker = instance(&file, &redis.url(), "ok-run", 1, 2, &[]);
    let master = instance(&file, &redis.url(), "ok-run", 0, 2, &[]);
    let mut all = common::wait_all(vec![master, worker], LIMIT);
    let (worker, master) = (all.pop().unwrap(), all.pop().unwrap());
    assert_eq!(master.code(), 0, "{master}");
    assert_eq!(worker.code(), 0, "{worker}");
    assert!(
        worker.stdout.contains("the run has finished: succeeded"),
        "{worker}"
    );
}

/// The last line of stderr, which must say everything.
fn last_line(out: &common::Output) -> &str {
    out.stderr.lines().last().unwrap_or_default()
}

#[test]
fn discovery_problems_end_in_one_clear_line() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    let (_dir, file) = pipeline("[modules.a]\nrun = \"true\"\n");
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}", redis.port);

    // Nobody publishes: the worker gives up after --discover-timeout.
    let out = common::wait(
        instance(&file, &url, "lonely", 1, 2, &["--discover-timeout", "1s"]),
        LIMIT,
    );
    assert_eq!(out.code(), 3, "{out}");
    assert!(
        out.stderr
            .contains("no discovery record under key muster:run:lonely"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("redis://:***@127.0.0.1:{}", redis.port)),
        "{out}"
    );
    assert!(
        !format!("{out}").contains("s3cret-pass"),
        "the password leaked: {out}"
    );

    // Not a Redis URL at all.
    let out = common::wait(instance(&file, "http://:pw@host", "x", 1, 2, &[]), LIMIT);
    assert_eq!(out.code(), 2, "{out}");
    assert!(last_line(&out).contains("http://:***@host"), "{out}");

    // Nothing listens there: the worker says it keeps trying, then gives
    // up at --discover-timeout.
    let nowhere = format!("redis://127.0.0.1:{}", common::free_port());
    let out = common::wait(
        instance(&file, &nowhere, "x", 1, 2, &["--discover-timeout", "2s"]),
        LIMIT,
    );
    assert_eq!(out.code(), 3, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "Redis at {nowhere} is not answering yet (connection refused); retrying for up to 2s"
        )),
        "{out}"
    );
    assert!(
        last_line(&out).contains(&format!("cannot reach Redis at {nowhere}")),
        "{out}"
    );

    // A wrong password will not change by waiting: refused at once, named
    // without it.
    let wrong = format!("redis://:not-{}@127.0.0.1:{}", "s3cret-pass", redis.port);
    let started = std::time::Instant::now();
    let out = common::wait(instance(&file, &wrong, "x", 1, 2, &[]), LIMIT);
    assert_eq!(out.code(), 3, "{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    assert!(
        last_line(&out).contains(&format!(
            "Redis at redis://:***@127.0.0.1:{} refused",
            redis.port
        )),
        "{out}"
    );
    assert!(!format!("{out}").contains("s3cret-pass"), "{out}");

    // A tunnel whose binary is missing.
    let mut command = ci_command(
        &file,
        &url,
        "tunnel-less",
        0,
        2,
        &["--tunnel", "cloudflared"],
    );
    command.env("PATH", "/nonexistent");
    let out = common::run(command);
    assert_eq!(out.code(), 3, "{out}");
    assert!(out.stderr.contains("cloudflared is not installed"), "{out}");

    // Without a token the master refuses to open a hub to the network.
    let mut command = ci_command(&file, &url, "no-token", 0, 2, &[]);
    command.env_remove("MUSTER_TOKEN");
    let out = common::run(command);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("muster ci needs a token"), "{out}");
}

#[test]
fn a_published_hub_that_never_answers_ends_in_one_clear_line() {
    use muster_discovery::record::{record_key, DiscoveryRecord, RunState};
    use redis::Commands;

    let redis = RedisServer::start();
    let (_dir, file) = pipeline("[modules.a]\nrun = \"true\"\n");
    // A master that published and then vanished without marking the run.
    let dead = format!("http://127.0.0.1:{}/hub", common::free_port());
    let record = DiscoveryRecord {
        run_id: "silent".into(),
        urls: vec![dead.clone()],
        protocol_version: 1,
        state: RunState::Running,
        outcome: None,
        started_at: 1,
        epoch: 1,
        token: None,
    };
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = connection
        .set(
            record_key("silent"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();

    let out = common::wait(
        instance(
            &file,
            &redis.url(),
            "silent",
            1,
            2,
            &["--discover-timeout", "3s"],
        ),
        LIMIT,
    );
    assert_eq!(out.code(), 3, "{out}");
    assert!(
        out.stdout.contains("does not answer yet; trying again"),
        "the worker keeps probing a hub that may still be starting: {out}"
    );
    let error = out.stderr.lines().find(|l| l.contains("error:"));
    assert!(
        error.is_some_and(|l| l.contains("none of the master's hub URLs answered within 3s")),
        "{out}"
    );
    assert!(out.stderr.contains(&dead), "the error names the URL: {out}");
}

/// A real `bore server` on a loopback address of its own (bore's control
/// port is fixed at 7835; all of 127.0.0.0/8 is loopback on Linux).
struct BoreServer {
    child: Child,
    host: String,
}

impl BoreServer {
    fn start() -> BoreServer {
        let pid = std::process::id();
        let host = format!("127.100.{}.{}", (pid >> 8) as u8, (pid as u8).clamp(1, 254));
        let bore = std::env::var("MUSTER_BORE").unwrap_or_else(|_| "bore".into());
        let child = std::process::Command::new(bore)
            .args(["server", "--bind-addr", &host])
            .env("NO_COLOR", "1")
            .env_remove("BORE_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bore is installed: cargo install bore-cli --version 0.6.0 --locked");
        let deadline = std::time::Instant::now() + LIMIT;
        while std::net::TcpStream::connect((host.as_str(), 7835)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "bore server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        BoreServer { child, host }
    }
}

impl Drop for BoreServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_run_goes_through_a_bore_tunnel() {
    let redis = RedisServer::start();
    let bore = BoreServer::start();
    let (_dir, file) = pipeline(SPLIT.replace("exit 4", "exit 0").as_str());
    let tunnel = format!("bore:{}", bore.host);
    let workers: Vec<Child> = (1..=2)
        .map(|i| instance(&file, &redis.url(), "bored", i, 3, &[]))
        .collect();
    // The master listens on loopback only: its first URL is the tunnel's.
    let master = common::wait(
        instance(&file, &redis.url(), "bored", 0, 3, &["--tunnel", &tunnel]),
        LIMIT,
    );
    let workers: Vec<common::Output> = workers
        .into_iter()
        .map(|w| common::wait(w, LIMIT))
        .collect();
    assert_eq!(master.code(), 0, "{master}");
    assert!(
        master.stdout.contains(&format!(": http://{}:", bore.host)),
        "the tunnel's URL is published first: {master}"
    );
    for worker in &workers {
        assert_eq!(worker.code(), 0, "{worker}");
        assert!(
            worker
                .stdout
                .contains(&format!("joining the hub at http://{}:", bore.host)),
            "the worker joins through the tunnel: {worker}"
        );
    }
    assert_eq!(master.status_of("after"), "succeeded", "{master}");
}
