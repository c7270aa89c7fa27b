//! The result cache over the Turborepo remote-cache protocol, against the
//! real `turborepo-remote-cache` server from npm: a run fills it, a copy
//! of the pipeline elsewhere hits it, a wrong token is said once and the
//! run goes on without the cache, and so does a server that is down.

mod common;
#[path = "support/turbo_server.rs"]
mod turbo_server;

use std::path::Path;

use common::{effects, muster, pipeline, run, Output};
use turbo_server::{free_port, TurboServer, TOKEN};

const PIPELINE: &str = r#"
[modules.build]
run = "mkdir -p out && cat src/a.txt > out/app && echo version=3 >> $MUSTER_OUTPUT && echo build >> effects.log"
inputs = ["src/**"]
produces = ["out/app"]
[modules.test]
run = "test \"$MUSTER_NEEDS_BUILD_VERSION\" = 3 && grep -q hi out/app && echo test >> effects.log"
inputs = ["src/**"]
needs = ["build"]
consumes = ["build"]
"#;

fn checkout() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, file) = pipeline(PIPELINE);
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/a.txt"), "hi\n").unwrap();
    (dir, file)
}

fn remote_run(file: &Path, url: &str, token: &str) -> Output {
    let mut command = muster(&["run", file.to_str().unwrap(), "--workers", "2"]);
    command
        .env("MUSTER_CACHE_URL", url)
        .env("MUSTER_CACHE_TOKEN", token)
        .env("MUSTER_CACHE_TEAM", "team_muster")
        .env("MUSTER_CACHE_SIGNING_KEY", "shared entry key");
    run(command)
}

#[test]
fn the_turborepo_protocol_store_hits_misses_and_fails_open() {
    let server = TurboServer::start();
    let url = server.url();
    // A miss: everything runs, and is stored.
    let (first, first_file) = checkout();
    let out = remote_run(&first_file, &url, TOKEN);
    assert_eq!(out.code(), 0, "{out}\n{}", server.log());
    assert_eq!(effects(first.path()).len(), 2);
    // Another checkout, another folder: both from the server.
    let (second, second_file) = checkout();
    let out = remote_run(&second_file, &url, TOKEN);
    assert_eq!(out.code(), 0, "{out}\n{}", server.log());
    assert!(effects(second.path()).is_empty(), "nothing ran: {out}");
    assert_eq!(
        std::fs::read_to_string(second.path().join("out/app")).unwrap(),
        "hi\n",
        "the artifact is restored"
    );
    // A wrong token: said once, the run goes on without the cache.
    let (third, third_file) = checkout();
    let out = remote_run(&third_file, &url, "not the token");
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(effects(third.path()).len(), 2, "{out}");
    assert_eq!(
        out.stderr.matches("cannot be used").count(),
        1,
        "said once: {out}"
    );
    assert!(out.stderr.contains("MUSTER_CACHE_TOKEN"), "{out}");
    assert!(
        !out.stderr.contains("not the token"),
        "never printed: {out}"
    );
    // A server that is down: the same.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (fourth, fourth_file) = checkout();
    let out = remote_run(&fourth_file, &down, TOKEN);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(effects(fourth.path()).len(), 2, "{out}");
    assert_eq!(out.stderr.matches("cannot be used").count(), 1, "{out}");
}
