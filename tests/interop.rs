//! Interop: workers written with the official SignalR JavaScript client
//! (`@microsoft/signalr`, run by node, scripts in `tests/interop`). One
//! joins the hub, registers, receives an Assign and completes it, and a
//! Rust worker then consumes its outputs; one checks that the answer to its
//! `Complete` comes before the run's `Shutdown`; one joins through a hub URL
//! with a trailing slash.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{pipeline, HubProcess};

#[test]
fn official_javascript_client_runs_a_module() {
    let worker = script("worker.mjs");
    let (_dir, file) = pipeline(
        r#"
[modules.greet]
requires = ["lang:js"]
env = { GREETING = "hello from node" }
run = "echo $GREETING via $MUSTER_WORKER"
[modules.check]
needs = ["greet"]
requires = ["os:linux"]
run = "echo answer=$MUSTER_NEEDS_GREET_ANSWER runtime=$MUSTER_NEEDS_GREET_RUNTIME"
"#,
    );
    let hub = HubProcess::start(&file, "interop-token", &["--workers", "1"]);
    let js = node(&worker, &hub.url, "interop-token");
    let out = hub.finish();
    let js = common::wait(js, common::LIMIT);
    assert_eq!(out.code(), 0, "{out}\n--- node\n{js}");
    assert_eq!(out.row("greet")[3], "js-worker", "{out}");
    assert_eq!(out.row("check")[3], "local-1", "{out}");
    assert!(
        out.stdout.contains("[greet] hello from node via js-worker"),
        "{out}"
    );
    assert!(
        out.stdout.contains("[check] answer=42 runtime=node-"),
        "{out}"
    );
    assert_eq!(js.code(), 0, "{js}");
    assert!(js.stdout.contains("registered as w"), "{js}");
    assert!(js.stdout.contains("shutdown: the run has finished"), "{js}");
}

/// The path of a script in `tests/interop`, after checking that
/// `@microsoft/signalr` is installed.
fn script(name: &str) -> PathBuf {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        interop.join("node_modules/@microsoft/signalr").exists(),
        "@microsoft/signalr is not installed: run scripts/test.sh, or `npm ci` in {}",
        interop.display()
    );
    interop.join(name)
}

/// `node SCRIPT HUB_URL TOKEN` with its output piped.
fn node(script: &Path, url: &str, token: &str) -> Child {
    Command::new("node")
        .arg(script)
        .arg(url)
        .arg(token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed")
}

/// The hub answers a worker's `Complete` before the `Shutdown` that follows
/// from it (docs/protocol.md §4), as the official client sees it: the
/// worker's `await invoke("Complete")` returns before its Shutdown handler
/// runs. The JS worker is the only one, so its module's end ends the run.
#[test]
fn official_javascript_client_gets_the_complete_answer_before_shutdown() {
    let order = script("order.mjs");
    let (_dir, file) = pipeline(
        r#"
[modules.only]
requires = ["lang:js"]
run = "true"
"#,
    );
    let hub = HubProcess::start(
        &file,
        "order-token",
        &["--workers", "0", "--capability-timeout", "30s"],
    );
    let js = node(&order, &hub.url, "order-token");
    let out = hub.finish();
    let js = common::wait(js, common::LIMIT);
    assert_eq!(out.code(), 0, "{out}\n--- node\n{js}");
    assert_eq!(out.row("only")[3], "js-order", "{out}");
    assert_eq!(js.code(), 0, "{js}\n--- hub\n{out}");
    let events: Vec<&str> = js
        .stdout
        .lines()
        .filter(|l| !l.starts_with("registered as "))
        .collect();
    assert_eq!(
        events,
        [
            "assigned only attempt 1",
            "started acknowledged",
            "complete acknowledged",
            "shutdown: the run has finished",
        ],
        "{js}"
    );
}

/// A hub URL given with a trailing slash (`…/hub/`) works like `…/hub`: the
/// official client negotiates at `/hub/negotiate` and opens its WebSocket
/// at `/hub/?id=…`.
#[test]
fn official_javascript_client_joins_a_hub_url_with_a_trailing_slash() {
    let worker = script("worker.mjs");
    let (_dir, file) = pipeline(
        r#"
[modules.greet]
requires = ["lang:js"]
run = "echo hello through the slash"
"#,
    );
    let hub = HubProcess::start(
        &file,
        "slash-token",
        &["--workers", "0", "--capability-timeout", "30s"],
    );
    let url = format!("{}/", hub.url);
    assert!(url.ends_with("/hub/"), "{url}");
    let js = node(&worker, &url, "slash-token");
    let out = hub.finish();
    let js = common::wait(js, common::LIMIT);
    assert_eq!(out.code(), 0, "{out}\n--- node\n{js}");
    assert_eq!(out.row("greet")[1], "succeeded", "{out}");
    assert_eq!(out.row("greet")[3], "js-worker", "{out}");
    assert!(
        out.stdout.contains("[greet] hello through the slash"),
        "{out}"
    );
    assert_eq!(js.code(), 0, "{js}");
    assert!(js.stdout.contains("registered as w"), "{js}");
    assert!(js.stdout.contains("shutdown: the run has finished"), "{js}");
}
