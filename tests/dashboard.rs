//! The live dashboard in a real headless Chromium (Debian's `chromium`,
//! driven by `tests/browser/live.js` through puppeteer-core) against a real
//! `muster hub` process and its local worker: refused without a token,
//! opened with the viewer token (which then leaves the address bar), a
//! module's state change on the page within a second, its log streaming,
//! no Cancel for a viewer and a working one for the run token, and a
//! 2,000-module run rendered without errors, and an approver approving a
//! gate from the page. Screenshots are kept under
//! `target/tmp/dashboard-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pipeline, HubProcess};

const TOKEN: &str = "dashboard-run-token";
const VIEW: &str = "dashboard-view-token";

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tests/browser/live.js` with `env`; returns what it printed, and
/// fails the test with its reasons when a check failed.
fn browser(hub: &HubProcess, scenario: &str, env: &[(&str, String)]) -> serde_json::Value {
    let base = hub.url.trim_end_matches("/hub").to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/live.js");
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("BASE", base)
        .env("VIEW", VIEW)
        .env("TOKEN", TOKEN)
        .env("SCENARIO", scenario)
        .env("SCREENSHOT_DIR", screenshots());
    for (name, value) in env {
        command.env(name, value);
    }
    let out = common::run(command);
    let result = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("the browser script said nothing: {out}"));
    assert_eq!(out.code(), 0, "the browser checks failed: {out}");
    eprintln!("browser ({scenario}): {result}");
    serde_json::from_str(result).unwrap()
}

const LIVE: &str = r#"
[modules.setup]
run = "echo set up"

[modules.gate]
needs = ["setup"]
run = 'i=0; while [ ! -f release ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done; echo released'

[modules.after]
needs = ["gate"]
run = "sleep 60"
"#;

#[test]
fn a_browser_watches_a_run_live_and_the_run_token_cancels_it() {
    let (dir, file) = pipeline(LIVE);
    let hub = HubProcess::start(&file, TOKEN, &["--view-token", VIEW, "--workers", "1"]);
    let result = browser(
        &hub,
        "live",
        &[("RELEASE", dir.path().join("release").display().to_string())],
    );
    let out = hub.finish();
    assert_eq!(out.code(), 130, "{out}");
    assert!(out.stdout.contains("cancelled from the dashboard"), "{out}");
    assert!(result["releaseToDomMs"].as_u64().unwrap() < 1100);
    for shot in result["screenshots"].as_array().unwrap() {
        assert!(Path::new(shot.as_str().unwrap()).is_file());
    }
}

#[test]
fn a_browser_renders_a_two_thousand_module_run_without_errors() {
    use std::fmt::Write as _;
    let mut text = String::new();
    for layer in 0..20 {
        for i in 0..100 {
            // The last one holds the run open until the page has seen the
            // rest (the hub stops when its run ends).
            let run = if (layer, i) == (19, 99) {
                "while [ ! -f release ]; do sleep 0.1; done"
            } else {
                "true"
            };
            let _ = writeln!(text, "[modules.m{layer}_{i}]\nrun = '{run}'");
            if layer > 0 {
                let _ = writeln!(text, "needs = [\"m{}_{i}\"]", layer - 1);
            }
        }
    }
    let (dir, file) = pipeline(&text);
    let hub = HubProcess::start(&file, TOKEN, &["--view-token", VIEW, "--workers", "4"]);
    let release = dir.path().join("release").display().to_string();
    let result = browser(
        &hub,
        "large",
        &[("MODULES", "2000".to_owned()), ("RELEASE", release)],
    );
    assert_eq!(result["boxes"], 2000);
    let out = hub.finish();
    assert_eq!(out.code(), 0, "{out}");
}

#[test]
fn an_approver_approves_a_gate_from_the_page_and_a_viewer_cannot() {
    use sha2::{Digest, Sha256};
    let approver = "alice-dashboard-token";
    let digest = format!("alice={:x}", Sha256::digest(approver.as_bytes()));
    let (dir, file) = pipeline(
        "[modules.build]\nrun = \"true\"\n\
         [modules.deploy]\nneeds = [\"build\"]\nrun = \"echo $MUSTER_APPROVAL_TICKET > ticket\"\n\
         approval = { approvers = [\"alice\"], inputs = [\"ticket\"] }\n",
    );
    let hub = HubProcess::start(
        &file,
        TOKEN,
        &[
            "--view-token",
            VIEW,
            "--workers",
            "1",
            "--approver",
            &digest,
        ],
    );
    browser(&hub, "approve", &[("APPROVER", approver.to_owned())]);
    let out = hub.finish();
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout.contains("[deploy] ** approved by alice"),
        "{out}"
    );
    let ticket = std::fs::read_to_string(dir.path().join("ticket")).unwrap();
    assert_eq!(ticket.trim(), "OPS-77");
}
