//! `muster run` end to end: the real binary, its hub on loopback, local
//! workers over real WebSockets, modules as real processes.

mod common;

use common::{muster, pipeline, run};

fn muster_run(text: &str, extra: &[&str]) -> (common::Output, tempfile::TempDir) {
    let (dir, file) = pipeline(text);
    let mut args = vec!["run", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    (run(muster(&args)), dir)
}

/// The process whose pid a module wrote to `file` no longer exists.
fn assert_gone(file: &std::path::Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let pid: i32 = text.trim().parse().unwrap();
    assert!(
        !common::alive(pid),
        "process {pid} from {} survived",
        file.display()
    );
}

#[test]
fn diamond_runs_in_dependency_order() {
    let (out, dir) = muster_run(
        r#"
[modules.top]
run = "echo top >> order.txt"
[modules.left]
needs = ["top"]
run = "sleep 0.2; echo left >> order.txt"
[modules.right]
needs = ["top"]
run = "echo right >> order.txt"
[modules.bottom]
needs = ["left", "right"]
run = "echo bottom >> order.txt"
"#,
        &["--workers", "2"],
    );
    assert_eq!(out.code(), 0, "{out}");
    let order = std::fs::read_to_string(dir.path().join("order.txt")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], "top");
    assert_eq!(order[3], "bottom");
    for module in ["top", "left", "right", "bottom"] {
        assert_eq!(out.status_of(module), "succeeded", "{out}");
    }
    assert!(
        out.stdout
            .contains("run succeeded: 4 of 4 modules succeeded"),
        "{out}"
    );
}

#[test]
fn failing_module_skips_dependents_and_others_go_on() {
    let (out, _dir) = muster_run(
        r#"
[modules.broken]
run = "echo about to fail; exit 3"
[modules.after]
needs = ["broken"]
run = "echo must not run"
[modules.later]
needs = ["after"]
run = "echo must not run either"
[modules.independent]
run = "sleep 0.3; echo still ran"
"#,
        &["--workers", "2"],
    );
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("broken"), "failed");
    assert_eq!(out.status_of("after"), "skipped");
    assert_eq!(out.status_of("later"), "skipped");
    assert_eq!(out.status_of("independent"), "succeeded");
    assert!(out.stdout.contains("[broken] ** failed"), "{out}");
    assert!(out.stdout.contains("exited with code 3"), "{out}");
    assert!(
        out.stdout
            .contains("[after] ** skipped: need 'broken' failed"),
        "{out}"
    );
    assert!(out.stdout.contains("[independent] still ran"), "{out}");
    assert!(!out.stdout.contains("must not run"), "{out}");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let (out, dir) = muster_run(
        r#"
[modules.slow]
timeout = "1s"
run = "sleep 30 & echo $! > child.pid; wait"
[modules.fast]
run = "echo quick"
"#,
        &["--workers", "2"],
    );
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("slow"), "timed out", "{out}");
    assert!(out.stdout.contains("timed out after 1s"), "{out}");
    assert_eq!(out.status_of("fast"), "succeeded");
    assert_gone(&dir.path().join("child.pid"));
}

#[test]
fn outputs_reach_dependents_as_environment() {
    let (out, _dir) = muster_run(
        r#"
[modules.version]
run = '''
echo "semver=1.4.2" >> "$MUSTER_OUTPUT"
echo "sha-256=abc123" >> "$MUSTER_OUTPUT"
'''
[modules.release]
needs = ["version"]
run = 'echo "releasing $MUSTER_NEEDS_VERSION_SEMVER ($MUSTER_NEEDS_VERSION_SHA_256) as $MUSTER_MODULE attempt $MUSTER_ATTEMPT on $MUSTER_WORKER"'
"#,
        &["--workers", "1"],
    );
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout
            .contains("[release] releasing 1.4.2 (abc123) as release attempt 1 on local-1"),
        "{out}"
    );
}

#[test]
fn oversized_outputs_fail_the_module() {
    let (out, _dir) = muster_run(
        r#"
[modules.big]
run = 'head -c 70000 /dev/zero | tr "\0" "a" | sed "s/^/k=/" >> "$MUSTER_OUTPUT"'
"#,
        &["--workers", "1"],
    );
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("big"), "failed");
    assert!(
        out.stdout.contains("larger than the 65536-byte cap"),
        "{out}"
    );
}

#[test]
fn matrix_instances_run_with_their_values_and_retries_apply() {
    let (out, dir) = muster_run(
        r#"
[modules.test]
matrix = { shard = [1, 2, 3] }
env = { SHARD = "${matrix.shard}" }
run = "echo shard $SHARD; touch shard-${matrix.shard}"
[modules.flaky]
retries = 1
run = 'if [ "$MUSTER_ATTEMPT" = 1 ]; then echo first try fails; exit 1; fi; echo second try works'
"#,
        &["--workers", "2"],
    );
    assert_eq!(out.code(), 0, "{out}");
    for shard in 1..=3 {
        assert!(dir.path().join(format!("shard-{shard}")).exists(), "{out}");
        assert_eq!(out.status_of(&format!("test[shard={shard}]")), "succeeded");
    }
    assert!(
        out.stdout
            .contains("[flaky] ** will retry: attempt 1 exited with code 1; retrying"),
        "{out}"
    );
    assert!(out.stdout.contains("[flaky] second try works"), "{out}");
}

#[test]
fn fail_fast_cancels_the_rest() {
    let (out, dir) = muster_run(
        r#"
[modules.boom]
run = "until [ -s long.pid ]; do sleep 0.05; done; exit 1"
[modules.long]
run = "sleep 20 & echo $! > long.pid; wait"
[modules.queued]
run = "echo queued"
needs = ["long"]
"#,
        &["--workers", "2", "--fail-fast"],
    );
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("boom"), "failed");
    assert_eq!(out.status_of("long"), "cancelled");
    assert!(
        out.stdout.contains("--fail-fast: 'boom' did not succeed"),
        "{out}"
    );
    assert_gone(&dir.path().join("long.pid"));
}

#[test]
fn bad_pipeline_is_refused_with_its_location() {
    let (out, _dir) = muster_run(
        "[modules.build]\nrun = \"make\"\n\n[modules.test]\nrun = \"make test\"\nneeds = [\"biuld\"]\n",
        &[],
    );
    assert_eq!(out.code(), 2, "{out}");
    assert!(
        out.stderr
            .contains("muster.toml:6:10: module 'test' needs 'biuld', which is not defined"),
        "{out}"
    );
    assert!(out.stderr.contains("did you mean 'build'?"), "{out}");
    assert!(out.stdout.is_empty(), "nothing ran: {out}");
}

#[test]
fn validate_prints_the_expanded_dag() {
    let (dir, file) = pipeline(
        r#"
[modules.build]
run = "make"
[modules.test]
needs = ["build"]
matrix = { os = ["linux", "macos"] }
requires = ["os:${matrix.os}"]
run = "make test"
"#,
    );
    let out = run(muster(&["validate", file.to_str().unwrap()]));
    drop(dir);
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout
            .contains("test[os=macos]  needs: build  requires: os:macos"),
        "{out}"
    );
    assert!(out.stdout.contains("ok, 3 modules, 2 needs edges"), "{out}");
}

#[test]
fn missing_pipeline_file_is_named() {
    let out = run(muster(&["validate", "/nonexistent/muster.toml"]));
    assert_eq!(out.code(), 2, "{out}");
    assert!(
        out.stderr
            .contains("cannot read pipeline file /nonexistent/muster.toml"),
        "{out}"
    );
}

#[test]
fn sigterm_cancels_the_run_and_kills_every_module() {
    let (dir, file) = pipeline(common::SLEEPERS);
    let child = muster(&["run", file.to_str().unwrap(), "--workers", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid_files = ["one.pid", "two.pid", "three.pid"].map(|f| dir.path().join(f));
    for file in &pid_files {
        common::wait_for_line(file);
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = common::wait(child, common::LIMIT);
    assert_eq!(out.code(), 130, "{out}");
    for module in ["one", "two", "three", "after"] {
        assert_eq!(out.status_of(module), "cancelled", "{out}");
    }
    for file in pid_files {
        assert_gone(&file);
    }
    assert!(
        out.stdout
            .contains("run cancelled: 0 of 4 modules succeeded"),
        "{out}"
    );
}

#[test]
fn a_capability_no_local_worker_has_is_refused_up_front() {
    let (out, _dir) = muster_run(
        "[modules.gpu]\nrun = \"train\"\nrequires = [\"gpu\", \"os:linux\"]\n",
        &["--workers", "1"],
    );
    assert_eq!(out.code(), 2, "{out}");
    assert!(
        out.stderr
            .contains("module 'gpu' requires gpu, which local workers do not have"),
        "{out}"
    );
}

#[test]
fn fail_fast_with_retries_left_still_ends() {
    let (out, _dir) = muster_run(
        r#"
[defaults]
retries = 1
[modules.a]
run = "sleep 0.3; exit 1"
[modules.b]
run = "sleep 0.3; exit 1"
[modules.c]
needs = ["a"]
run = "echo never"
"#,
        &["--workers", "2", "--fail-fast"],
    );
    assert_eq!(out.code(), 1, "{out}");
    // Whether c is skipped (a failed for good first) or cancelled (b did)
    // depends on timing; either way it never ran and the run ended.
    assert!(
        ["skipped", "cancelled"].contains(&out.status_of("c").as_str()),
        "{out}"
    );
    assert!(!out.stdout.contains("[c] never"), "{out}");
    assert!(out.stdout.contains("run failed"), "{out}");
}

#[test]
fn an_output_file_replaced_by_a_fifo_fails_the_module_without_hanging() {
    let (out, _dir) = muster_run(
        r#"
[modules.sneaky]
run = 'rm "$MUSTER_OUTPUT" && mkfifo "$MUSTER_OUTPUT"'
"#,
        &["--workers", "1"],
    );
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stdout.contains("not a regular file"), "{out}");
}
