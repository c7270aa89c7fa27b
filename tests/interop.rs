//! Interop: a worker written with the official SignalR JavaScript client
//! (`@microsoft/signalr`, run by node) joins the hub, registers, receives an
//! Assign and completes it; a Rust worker then consumes its outputs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{pipeline, HubProcess};

#[test]
fn official_javascript_client_runs_a_module() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        interop.join("node_modules/@microsoft/signalr").exists(),
        "@microsoft/signalr is not installed: run scripts/test.sh, or `npm ci` in {}",
        interop.display()
    );
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
    let node = Command::new("node")
        .arg(interop.join("worker.mjs"))
        .arg(&hub.url)
        .arg("interop-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let out = hub.finish();
    let js = common::wait(node, common::LIMIT);
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
