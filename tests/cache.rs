//! The result cache end to end (real processes): a 200-module pipeline
//! with inputs runs, then runs again unchanged without running a single
//! command, its outputs and artifacts restored; an edited input re-runs
//! exactly what is downstream of it; a copy in another folder hits the
//! same cache; tampered entries and wrong signatures are misses with a
//! warning; a pull request from a fork does not write; a selection runs
//! only what it names and needs.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use common::{effects, layered_pipeline, muster, pipeline, run, Output};

const LAYERS: usize = 20;
const WIDTH: usize = 10;

/// The layered pipeline (see `common::layered_pipeline`), each module with
/// its own input file `src/<id>.txt`, which its command also reads.
fn cached_pipeline(layers: usize, width: usize) -> String {
    let mut text = String::new();
    for line in layered_pipeline(layers, width).lines() {
        text.push_str(line);
        text.push('\n');
        if let Some(id) = line
            .strip_prefix("[modules.")
            .and_then(|l| l.strip_suffix(']'))
        {
            text.push_str(&format!("inputs = [\"src/{id}.txt\"]\n"));
        }
    }
    text
}

fn write_sources(dir: &Path, layers: usize, width: usize) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for layer in 0..layers {
        for i in 0..width {
            let id = format!("m{layer}_{i}");
            std::fs::write(
                dir.join(format!("src/{id}.txt")),
                format!("source of {id}\n"),
            )
            .unwrap();
        }
    }
}

/// `id` and every module that needs it, transitively.
fn downstream(id: &str, width: usize, layers: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut queue = VecDeque::from([id.to_owned()]);
    while let Some(id) = queue.pop_front() {
        if !found.insert(id.clone()) {
            continue;
        }
        let (layer, i) = id[1..].split_once('_').unwrap();
        let (layer, i): (usize, usize) = (layer.parse().unwrap(), i.parse().unwrap());
        if layer + 1 < layers {
            // m(L+1)_j needs mL_j and mL_(j+1).
            queue.push_back(format!("m{}_{i}", layer + 1));
            queue.push_back(format!("m{}_{}", layer + 1, (i + width - 1) % width));
        }
    }
    found
}

fn run_here(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", file.to_str().unwrap(), "--workers", "4"];
    args.extend_from_slice(extra);
    run(muster(&args))
}

fn ran(dir: &Path, from: usize) -> BTreeSet<String> {
    effects(dir)[from..].iter().cloned().collect()
}

#[test]
fn an_unchanged_rerun_runs_nothing_and_an_edit_reruns_exactly_what_is_downstream() {
    let (dir, file) = pipeline(&cached_pipeline(LAYERS, WIDTH));
    write_sources(dir.path(), LAYERS, WIDTH);
    let out = run_here(&file, &[]);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(effects(dir.path()).len(), LAYERS * WIDTH);

    // Unchanged: no command runs; the files come back, outputs flow.
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let before = effects(dir.path()).len();
    let out = run_here(&file, &[]);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(effects(dir.path()).len(), before, "no command ran: {out}");
    assert!(
        out.stdout.contains(&format!(
            "cache: {} module(s) from the cache",
            LAYERS * WIDTH
        )),
        "{out}"
    );
    assert!(out.stdout.contains("[m3_4] ** cached (key "), "{out}");
    assert_eq!(out.row("m3_4")[4], "yes");
    for layer in 0..LAYERS {
        for i in 0..WIDTH {
            let id = format!("m{layer}_{i}");
            let restored = std::fs::read_to_string(dir.path().join(format!("out/{id}.txt")))
                .unwrap_or_else(|e| panic!("out/{id}.txt was not restored: {e}"));
            assert_eq!(restored, format!("{id}\n"));
        }
    }
    // The replayed log is marked as from the cache, nothing else printed
    // as if it ran.
    assert!(!out.stdout.contains("** started"), "{out}");

    // One input edited: exactly it and what is downstream run again.
    std::fs::write(dir.path().join("src/m17_3.txt"), "edited\n").unwrap();
    let before = effects(dir.path()).len();
    let out = run_here(&file, &[]);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(
        ran(dir.path(), before),
        downstream("m17_3", WIDTH, LAYERS),
        "{out}"
    );
    let explain = run(muster(&[
        "cache",
        "explain",
        "m17_3",
        "-f",
        file.to_str().unwrap(),
    ]));
    assert!(
        explain.stdout.contains("unchanged since the last entry"),
        "{explain}"
    );

    // The same pipeline in another folder, with the same cache: all hits.
    let (copy, copy_file) = pipeline(&cached_pipeline(LAYERS, WIDTH));
    write_sources(copy.path(), LAYERS, WIDTH);
    std::fs::write(copy.path().join("src/m17_3.txt"), "edited\n").unwrap();
    let shared = dir.path().join(".muster/cache");
    let out = run_here(&copy_file, &["--cache-dir", shared.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        effects(copy.path()).is_empty(),
        "nothing ran in the copy: {out}"
    );
}

const SMALL: &str = r#"
[modules.build]
run = "mkdir -p out && cat src/a.txt > out/app && echo version=7 >> $MUSTER_OUTPUT && echo build >> effects.log"
inputs = ["src/**"]
produces = ["out/app"]
[modules.test]
run = "test \"$MUSTER_NEEDS_BUILD_VERSION\" = 7 && grep -q hello out/app && echo test >> effects.log"
inputs = ["src/**"]
needs = ["build"]
consumes = ["build"]
[modules.lint]
run = "echo lint >> effects.log"
inputs = ["src/**"]
[modules.docs]
run = "echo docs >> effects.log"
needs = ["build"]
"#;

fn small() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, file) = pipeline(SMALL);
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/a.txt"), "hello\n").unwrap();
    (dir, file)
}

/// `muster run FILE` with `vars` set.
fn with_env(file: &Path, vars: &[(&str, &str)]) -> std::process::Command {
    let mut command = muster(&["run", file.to_str().unwrap()]);
    command.envs(vars.iter().copied());
    command
}

/// Every entry file in the local cache.
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.join(".muster/cache")];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "tar") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_tampered_entry_or_a_wrong_signature_is_a_miss_with_a_warning() {
    let (dir, file) = small();
    let signed = [("MUSTER_CACHE_SIGNING_KEY", "the right key")];
    let out = run(with_env(&file, &signed));
    assert_eq!(out.code(), 0, "{out}");
    // A wrong key: every entry's signature is wrong.
    let before = effects(dir.path()).len();
    let wrong = [("MUSTER_CACHE_SIGNING_KEY", "another key")];
    let out = run(with_env(&file, &wrong));
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("missing or wrong signature"), "{out}");
    assert_eq!(ran(dir.path(), before).len(), 4, "everything ran: {out}");
    // A byte of an entry changed: a miss, said, never restored.
    for entry in entries(dir.path()) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 2000;
        bytes[last] ^= 0x55;
        std::fs::write(&entry, bytes).unwrap();
    }
    let before = effects(dir.path()).len();
    let out = run(muster(&["run", file.to_str().unwrap()]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stderr.contains("is not usable") || out.stderr.contains("signature"),
        "{out}"
    );
    assert!(ran(dir.path(), before).contains("build"), "{out}");
}

#[test]
fn a_pull_request_from_a_fork_reads_but_does_not_write() {
    let (dir, file) = small();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"pull_request": {"head": {"repo": {"full_name": "mallory/app"}}}}"#,
    )
    .unwrap();
    let fork = [
        ("GITHUB_EVENT_NAME", "pull_request"),
        ("GITHUB_REPOSITORY", "acme/app"),
        ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
    ];
    let out = run(with_env(&file, &fork));
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout
            .contains("not writing: a pull request from a fork (mallory/app)"),
        "{out}"
    );
    assert!(entries(dir.path()).is_empty(), "a fork wrote to the cache");
    // --cache-write=false does the same anywhere; a normal run writes.
    let out = run(muster(&[
        "run",
        file.to_str().unwrap(),
        "--cache-write",
        "false",
    ]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(entries(dir.path()).is_empty());
    let out = run(muster(&["run", file.to_str().unwrap()]));
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(
        entries(dir.path()).len(),
        3,
        "build, test and lint are kept"
    );
    // --no-cache runs everything.
    let before = effects(dir.path()).len();
    let out = run(muster(&["run", file.to_str().unwrap(), "--no-cache"]));
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(ran(dir.path(), before).len(), 4);
}

#[test]
fn a_selection_runs_what_it_names_and_what_that_needs() {
    let (dir, file) = small();
    let file_arg = file.to_str().unwrap();
    let out = run(muster(&["run", file_arg, "test", "--no-cache"]));
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(
        ran(dir.path(), 0),
        ["build", "test"].map(String::from).into()
    );
    let before = effects(dir.path()).len();
    let out = run(muster(&["run", file_arg, "--skip", "build", "--no-cache"]));
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(
        ran(dir.path(), before),
        ["lint"].map(String::from).into(),
        "{out}"
    );
    let out = run(muster(&["run", file_arg, "tset"]));
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("did you mean 'test'"), "{out}");
    let out = run(muster(&["validate", file_arg, "docs"]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("ok, 2 modules"), "{out}");
}
