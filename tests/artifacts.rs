//! Artifacts end to end: files produced on one worker process, uploaded to
//! the hub, and consumed on others with their own folders; a corrupted blob
//! caught by its digest; a symlink leading out refused; too many files to
//! list, or a report too large for one message, failing their module; and
//! a large file
//! moved with flat memory in the hub and the workers.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{muster, pipeline, HubProcess, LIMIT};

const TOKEN: &str = "artifacts-token";

/// A `muster worker` with one capability, working in its own folder.
fn worker(url: &str, name: &str, capability: &str, dir: &Path) -> Child {
    let dir = dir.to_str().unwrap();
    common::worker(url, TOKEN, name, &["-c", capability, "--workdir", dir])
}

fn folder() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn files_built_on_one_worker_reach_consumers_on_two_others() {
    let (_dir, file) = pipeline(
        r#"
[modules.build]
requires = ["builder"]
produces = ["bin/app", "dist/**/*.tar.gz", "?coverage/**"]
run = '''
mkdir -p bin dist/a dist/b/c
printf '#!/bin/sh\necho app runs\n' > bin/app && chmod 755 bin/app
echo one > dist/a/x.tar.gz
echo two > dist/b/c/y.tar.gz
echo not an artifact > dist/notes.txt
'''

[modules.same]
requires = ["builder"]
needs = ["build"]
produces = ["again/x.tar.gz"]
run = "mkdir -p again && echo one > again/x.tar.gz"

[modules.test-all]
requires = ["tester-1"]
needs = ["build"]
consumes = ["build"]
run = '''
./bin/app
cat dist/a/x.tar.gz dist/b/c/y.tar.gz
test ! -e dist/notes.txt && echo "no notes"
'''

[modules.test-dist]
requires = ["tester-2"]
needs = ["build"]
consumes = ["build:dist/**"]
run = "cat dist/b/c/y.tar.gz; test ! -e bin/app && echo 'no app here'"
"#,
    );
    let state = folder();
    let hub = HubProcess::start_with_env(
        &file,
        TOKEN,
        &["--state-dir", state.path().to_str().unwrap()],
        &[("MUSTER_LOG", "debug")],
    );
    let folders = [folder(), folder(), folder()];
    let workers = [
        worker(&hub.url, "builder", "builder", folders[0].path()),
        worker(&hub.url, "tester-1", "tester-1", folders[1].path()),
        worker(&hub.url, "tester-2", "tester-2", folders[2].path()),
    ];
    let out = hub.finish();
    for w in workers {
        assert_eq!(common::wait(w, LIMIT).code(), 0);
    }
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("[test-all] app runs"), "{out}");
    assert!(
        out.stdout.contains("[test-all] one\n") && out.stdout.contains("[test-all] two"),
        "{out}"
    );
    assert!(out.stdout.contains("[test-all] no notes"), "{out}");
    assert!(out.stdout.contains("[test-dist] two"), "{out}");
    assert!(out.stdout.contains("[test-dist] no app here"), "{out}");
    // Each file landed at its own path, with its mode, on the consumers.
    let app = folders[1].path().join("bin/app");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&app).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(!folders[2].path().join("bin/app").exists());
    // `same` produced content the hub already had: asked, not sent again.
    let stored: Vec<_> = walk(&stored_blobs(state.path()));
    assert_eq!(stored.len(), 3, "three distinct contents: {stored:?}");
    let received = out.stderr.matches("artifact received").count();
    assert_eq!(
        received, 3,
        "one upload per distinct content:\n{}",
        out.stderr
    );
}

/// Every file under `dir`.
/// The blob folder of the one run in the state folder `state`.
fn stored_blobs(state: &Path) -> std::path::PathBuf {
    let runs = state.join("runs");
    let run = std::fs::read_dir(&runs)
        .ok()
        .and_then(|mut runs| runs.next())
        .and_then(Result::ok)
        .map_or_else(|| runs.join("none"), |entry| entry.path());
    run.join("artifacts/sha256")
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn a_corrupted_blob_fails_its_consumer_by_digest() {
    let (dir, file) = pipeline(
        r#"
[modules.build]
requires = ["builder"]
produces = ["out/data.bin"]
run = "mkdir -p out && echo the real content > out/data.bin"

[modules.gate]
requires = ["builder"]
run = "until [ -f go ]; do sleep 0.05; done"

[modules.use]
requires = ["tester"]
needs = ["build", "gate"]
consumes = ["build"]
run = "cat out/data.bin"
"#,
    );
    let state = folder();
    let hub = HubProcess::start(
        &file,
        TOKEN,
        &["--state-dir", state.path().to_str().unwrap()],
    );
    let (a, b) = (folder(), folder());
    // The gate runs in the pipeline's own folder, where the test writes `go`.
    let workers = [
        worker(&hub.url, "builder", "builder", dir.path()),
        worker(&hub.url, "tester", "tester", b.path()),
    ];
    let deadline = Instant::now() + LIMIT;
    let blob = loop {
        if let Some(blob) = walk(&stored_blobs(state.path())).pop() {
            break blob;
        }
        assert!(Instant::now() < deadline, "nothing was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Same length, other bytes: only the digest can tell.
    std::fs::write(&blob, "the fake content\n").unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = hub.finish();
    for w in workers {
        let _ = common::wait(w, LIMIT);
    }
    drop(a);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("use"), "failed", "{out}");
    assert!(out.stdout.contains("out/data.bin"), "{out}");
    assert!(out.stdout.contains("build"), "{out}");
    assert!(out.stdout.to_lowercase().contains("digest"), "{out}");
    assert!(
        !b.path().join("out/data.bin").exists(),
        "nothing half-written is left"
    );
}

#[test]
fn a_produced_symlink_leading_out_is_refused() {
    let (_dir, file) = pipeline(
        r#"
[modules.sneaky]
produces = ["out/*"]
run = "mkdir -p out && ln -sf /etc/hostname out/host"
"#,
    );
    let out = common::run(muster(&["run", file.to_str().unwrap(), "--workers", "1"]));
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("sneaky"), "failed", "{out}");
    assert!(out.stdout.contains("out/host"), "{out}");
    assert!(out.stdout.contains("outside the module's folder"), "{out}");
}

#[test]
fn too_many_produced_files_fail_the_module_instead_of_looping() {
    // 20,000 files cannot be listed in one report under the hub's 1 MiB
    // record cap: the module fails with advice, the run ends at once.
    let (_dir, file) = pipeline(
        r#"
[modules.sprawl]
produces = ["out/**"]
run = "mkdir -p out && cd out && seq 20000 | sed s/^/file-number-/ | xargs touch"
[modules.after]
needs = ["sprawl"]
consumes = ["sprawl"]
run = "true"
"#,
    );
    let out = common::run(muster(&["run", file.to_str().unwrap(), "--workers", "1"]));
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("sprawl"), "failed", "{out}");
    assert_eq!(out.status_of("after"), "skipped", "{out}");
    assert!(
        out.stdout
            .contains("matched 20000 files, too many for one report"),
        "{out}"
    );
    assert!(out.stdout.contains("pack them into one archive"), "{out}");
    assert!(
        !out.stdout.contains("reconnect") && !out.stderr.contains("reconnect"),
        "the worker never lost the hub: {out}"
    );
}

#[test]
fn a_report_too_large_for_one_message_fails_its_module() {
    // 3,300 artifacts with long paths pass the list check, but with 64 KiB
    // of control characters in an output (six bytes each in JSON) the
    // report is over the hub's 1 MiB cap: the worker sends a failure
    // instead of a report the hub would refuse on every reconnect.
    let (_dir, file) = pipeline(
        r#"
[modules.bulky]
produces = ["out/**"]
run = """
mkdir -p out && cd out && seq -f '%096.0f' 1 3300 | xargs touch
{ printf 'x='; head -c 65500 /dev/zero | tr '\\0' '\\001'; echo; } >> "$MUSTER_OUTPUT"
"""
"#,
    );
    let out = common::run(muster(&["run", file.to_str().unwrap(), "--workers", "1"]));
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.status_of("bulky"), "failed", "{out}");
    assert!(
        out.stdout
            .contains("over the 1024 KiB a hub accepts in one message"),
        "{out}"
    );
    assert!(
        !out.stdout.contains("reconnect") && !out.stderr.contains("reconnect"),
        "the worker never lost the hub: {out}"
    );
}

/// Resident memory of a process now, and its peak so far, in KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// 300 MiB by default; `MUSTER_BIG_ARTIFACT_MIB=2048` repeats the check
/// with 2 GiB (README.md, "Artifacts", has the figures).
#[test]
fn a_large_artifact_moves_with_flat_memory() {
    const MIB: u64 = 1024;
    let mib: u64 = std::env::var("MUSTER_BIG_ARTIFACT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let bytes = mib << 20;
    let (_dir, file) = pipeline(&format!(
        r#"
[modules.make]
requires = ["builder"]
produces = ["big.bin", "big.sha"]
timeout = "10m"
run = "head -c {bytes} /dev/urandom > big.bin && sha256sum big.bin > big.sha"

[modules.check]
requires = ["tester"]
needs = ["make"]
consumes = ["make"]
timeout = "10m"
run = "sha256sum -c big.sha"
"#
    ));
    let hub = HubProcess::start(&file, TOKEN, &[]);
    let hub_pid = hub.pid();
    let (a, b) = (folder(), folder());
    let workers = [
        worker(&hub.url, "builder", "builder", a.path()),
        worker(&hub.url, "tester", "tester", b.path()),
    ];
    let pids = [hub_pid, workers[0].id(), workers[1].id()];
    // At rest: started and joined, before the 300 MB exist.
    std::thread::sleep(Duration::from_millis(300));
    let rest: Vec<u64> = pids.iter().map(|&p| rss(p).map_or(0, |r| r.0)).collect();
    let sampler = std::thread::spawn(move || {
        let mut peak = [0u64; 3];
        while rss(pids[0]).is_some() {
            for (i, &pid) in pids.iter().enumerate() {
                if let Some((_, hwm)) = rss(pid) {
                    peak[i] = peak[i].max(hwm);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    });
    let out = hub.finish();
    for w in workers {
        let _ = common::wait(w, LIMIT);
    }
    let peak = sampler.join().unwrap();
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("[check] big.bin: OK"), "{out}");
    let size = format!("{:.1} MB", bytes as f64 / 1e6);
    assert!(
        out.stdout.contains(&format!("uploaded big.bin: {size}")),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("fetched big.bin from make: {size}")),
        "{out}"
    );
    for (i, name) in ["hub", "producing worker", "consuming worker"]
        .iter()
        .enumerate()
    {
        let grown = peak[i].saturating_sub(rest[i]);
        eprintln!("{name}: {} KiB at rest, {} KiB at peak", rest[i], peak[i]);
        assert!(
            grown < 64 * MIB,
            "{name}: peak RSS {} KiB is {grown} KiB above {} KiB at rest",
            peak[i],
            rest[i]
        );
    }
}
