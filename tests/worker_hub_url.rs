//! The hub URL a `muster worker` is given, end to end: a token in its
//! query (or a password in it) is never printed, not even in debug logs or
//! errors, and a trailing slash names the same hub, artifacts included.

mod common;

use std::path::Path;

use common::{muster, pipeline, HubProcess, Output};

const TOKEN: &str = "url-token-f00dfeed";

/// One module producing a file and one consuming it, both for a worker
/// with the `url-test` capability: the run goes over the socket and the
/// artifact store.
const HANDOFF: &str = r#"
[modules.make]
requires = ["url-test"]
produces = ["out/made.txt"]
run = "mkdir -p out && echo made > out/made.txt"

[modules.use]
requires = ["url-test"]
needs = ["make"]
consumes = ["make"]
run = "cat out/made.txt"
"#;

/// A worker joined to `hub` with debug logs on; waits for it to end.
fn run_worker(hub: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = muster(&[
        "worker",
        "--hub",
        hub,
        "--name",
        "url-worker",
        "-c",
        "url-test",
        "--workdir",
        dir.path().to_str().unwrap(),
    ]);
    command
        .args(extra)
        .env("MUSTER_TOKEN", TOKEN)
        .env("MUSTER_LOG", "debug");
    common::run(command)
}

/// A hub for [`HANDOFF`] keeping its artifacts in `state`; a worker that
/// never joins fails the run soon.
fn handoff_hub(file: &Path, state: &Path) -> HubProcess {
    let state = state.to_str().unwrap();
    let extra = ["--state-dir", state, "--capability-timeout", "15s"];
    HubProcess::start(file, TOKEN, &extra)
}

fn assert_hidden(out: &Output, secret: &str) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "{secret} was printed: {out}"
    );
}

/// A run through a hub URL carrying the token in its query: the hub takes
/// it, and the worker's debug log (which names the hub) shows `***`.
#[test]
fn a_token_in_the_hub_url_is_never_printed() {
    let (_dir, file) = pipeline(HANDOFF);
    let state = tempfile::tempdir().expect("temp dir");
    let hub = handoff_hub(&file, state.path());
    let url = format!("{}?access_token={TOKEN}", hub.url);
    let worker = run_worker(&url, &[]);
    let master = hub.finish();
    assert!(
        worker.stderr.contains("DEBUG"),
        "debug logs were on: {worker}"
    );
    assert_hidden(&worker, TOKEN);
    assert!(
        worker.stderr.contains("access_token=***"),
        "the log names the hub, redacted: {worker}"
    );
    // The run used the URL: the socket and the artifact store (whose URLs
    // keep the query after `/artifacts/…`).
    assert_eq!(master.code(), 0, "{master}");
    assert_eq!(master.status_of("use"), "succeeded", "{master}");
    assert_eq!(worker.code(), 0, "{worker}");

    // A hub that refuses connections: the retry line and the final error
    // name the URL, redacted.
    let nowhere = format!(
        "http://127.0.0.1:{}/hub?access_token={TOKEN}",
        common::free_port()
    );
    let out = run_worker(&nowhere, &["--reconnect-timeout", "1s"]);
    assert_eq!(out.code(), 3, "{out}");
    assert!(out.stderr.contains("/hub?access_token=***"), "{out}");
    assert_hidden(&out, TOKEN);

    // A password in the URL, refused or not understood, is hidden too.
    let with_password = format!(
        "http://user:pw-{TOKEN}@127.0.0.1:{}/hub?token={TOKEN}",
        common::free_port()
    );
    let out = run_worker(&with_password, &["--reconnect-timeout", "1s"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("user:***@127.0.0.1"), "{out}");
    assert_hidden(&out, TOKEN);

    // Not a hub URL at all: refused at once, still redacted.
    let out = run_worker(&format!("ftp://h/hub?access_token={TOKEN}"), &[]);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("ftp://h/hub?access_token=***"), "{out}");
    assert_hidden(&out, TOKEN);
}

/// `…/hub/` joins the same hub as `…/hub`, and the artifacts go to
/// `…/hub/artifacts/…`, not `…/hub//artifacts/…`.
#[test]
fn a_trailing_slash_on_the_hub_url_is_the_same_hub() {
    let (_dir, file) = pipeline(HANDOFF);
    let state = tempfile::tempdir().expect("temp dir");
    let hub = handoff_hub(&file, state.path());
    let url = format!("{}/", hub.url);
    let worker = run_worker(&url, &["--reconnect-timeout", "10s"]);
    let master = hub.finish();
    assert_eq!(master.code(), 0, "{master}");
    assert_eq!(master.status_of("make"), "succeeded", "{master}");
    assert_eq!(master.status_of("use"), "succeeded", "{master}");
    assert_eq!(worker.code(), 0, "{worker}");
    assert!(!worker.stderr.contains("hub//"), "{worker}");
}
