//! The cache scenario: a fully cached re-run of 2,000 tasks with inputs,
//! `muster run` against `turbo run build` (npm `turbo`, installed in
//! `bench/peers/turbo/`) over one generated workspace, in the same run.
//!
//! The workspace (a git repository under `target/`, the sources committed
//! as in a real one) holds 2,000 packages in 10 layers of 200; each
//! package of a layer after the first needs two of the layer before, as in
//! the make scenario. Each has two small source files and one command,
//! `mkdir -p out && cat src/*.js > out/bundle.js`, with `src/**` as its
//! inputs and `out/**` as its outputs. For muster: one `muster.toml` with a
//! module per package (`cwd`, `inputs`, `produces`, `needs`); for turbo:
//! npm workspaces (`package.json` with `workspaces` and `packageManager`,
//! a lockfile, a `build` script per package) and a `turbo.json` whose
//! `build` task has `dependsOn: ["^build"]` and the same inputs and
//! outputs. Each tool runs once cold to fill its local cache (timed, shown
//! apart; turbo's through a stand-in for `npm run`, see [`npm_stand_in`]),
//! then the cached re-runs alternate: muster (journal on, the
//! default), muster `--no-journal`, turbo, and again. Every re-run is
//! checked to be fully cached from what the tool prints. With
//! `MUSTER_BENCH_KEEP` set the workspace is left in `target/` to profile.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::stats::stats_precise;

/// Layers of packages, and packages per layer.
const LAYERS: usize = 10;
const WIDTH: usize = 200;
const PACKAGES: usize = LAYERS * WIDTH;

/// Every package's command, for both tools.
const BUILD: &str = "mkdir -p out && cat src/*.js > out/bundle.js";

/// At least this many measured re-runs of each.
const MIN_RUNS: usize = 3;

/// The scenario's JSON line: cold runs, cached re-runs (wall and CPU
/// seconds) and the muster/turbo ratios of the medians.
pub fn versus_turbo(runs: usize, muster: &Path) -> Result<Value> {
    let bench = Bench::prepare(muster)?;
    let muster_hits = format!("cache: {PACKAGES} module(s) from the cache");
    let turbo_hits = format!("{PACKAGES} cached, {PACKAGES} total");

    let cold_muster = timed(&mut bench.muster(true))?;
    cold_muster.expect("run succeeded")?;
    let cold_turbo = timed(bench.turbo().env("PATH", bench.path_with_stand_in()))?;
    cold_turbo.expect(&format!("{PACKAGES} successful, {PACKAGES} total"))?;
    eprintln!(
        "muster-bench: cache: cold runs filled both caches (muster {:.2} s, turbo {:.2} s)",
        cold_muster.wall, cold_turbo.wall
    );

    let (mut journal, mut no_journal, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=runs.max(MIN_RUNS) {
        let (ours, ours_bare) = (
            timed(&mut bench.muster(true))?,
            timed(&mut bench.muster(false))?,
        );
        let turbo = timed(&mut bench.turbo())?;
        ours.expect(&muster_hits)?;
        ours_bare.expect(&muster_hits)?;
        turbo.expect(&turbo_hits)?;
        turbo.expect("FULL TURBO")?;
        eprintln!(
            "muster-bench: cache: round {round}: muster {:.3} s, muster --no-journal {:.3} s, turbo {:.3} s",
            ours.wall, ours_bare.wall, turbo.wall
        );
        journal.push(ours);
        no_journal.push(ours_bare);
        theirs.push(turbo);
    }
    let walls = |v: &[Timed]| v.iter().map(|t| t.wall).collect::<Vec<_>>();
    let cpus = |v: &[Timed]| v.iter().map(|t| t.cpu).collect::<Vec<_>>();
    let ratio = |a: &[Timed], b: &[Timed]| round_to(median(&walls(a)) / median(&walls(b)), 2);
    Ok(json!({
        "scenario": "cache", "who": "muster", "unit": "s",
        "packages": PACKAGES, "shape": format!("{LAYERS} layers of {WIDTH}, two needs each"),
        "concurrency": bench.workers, "turbo_version": bench.turbo_version,
        "muster_s": stats_precise(&walls(&journal)),
        "muster_no_journal_s": stats_precise(&walls(&no_journal)),
        "turbo_s": stats_precise(&walls(&theirs)),
        "muster_cpu_s": stats_precise(&cpus(&journal)),
        "muster_no_journal_cpu_s": stats_precise(&cpus(&no_journal)),
        "turbo_cpu_s": stats_precise(&cpus(&theirs)),
        "cold_muster_s": round_to(cold_muster.wall, 3),
        "cold_turbo_s": round_to(cold_turbo.wall, 3),
        "ratio": ratio(&journal, &theirs),
        "ratio_no_journal": ratio(&no_journal, &theirs),
    }))
}

/// The generated workspace and how each tool is started on it.
struct Bench {
    /// Removed when the scenario ends, unless `MUSTER_BENCH_KEEP` is set.
    _dir: tempfile::TempDir,
    /// The workspace: both tools' files, the packages.
    root: PathBuf,
    /// Both tools' `TMPDIR` (muster's `--no-journal` state folder): on the
    /// workspace's disk, not in a shared /tmp whose history can slow file
    /// creation down (see bench/notes.md).
    tmp: PathBuf,
    /// The folder holding the `npm` stand-in for turbo's cold run.
    stand_in: PathBuf,
    muster: PathBuf,
    turbo: PathBuf,
    turbo_version: String,
    /// muster's `--workers` and turbo's `--concurrency`: the CPUs.
    workers: usize,
}

impl Bench {
    /// Generates and commits the workspace in a new folder under `target/`.
    fn prepare(muster: &Path) -> Result<Bench> {
        let muster = muster
            .canonicalize()
            .with_context(|| format!("{} is missing", muster.display()))?;
        let turbo = turbo_binary()?;
        let turbo_version = version(&turbo)?;
        std::fs::create_dir_all("target")?;
        let mut dir = tempfile::Builder::new()
            .prefix("bench-cache-")
            .tempdir_in("target")
            .context("cannot make the workspace under target/")?;
        if std::env::var_os("MUSTER_BENCH_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("muster-bench: cache: keeping {}", dir.path().display());
        }
        let base = dir.path().canonicalize()?;
        let root = base.join("workspace");
        generate(&root)?;
        commit(&root)?;
        let tmp = base.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(Bench {
            stand_in: npm_stand_in(&base.join("bin"))?,
            _dir: dir,
            root,
            tmp,
            muster,
            turbo,
            turbo_version,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        })
    }

    /// `muster run muster.toml --workers N`, `--no-journal` unless `journal`.
    fn muster(&self, journal: bool) -> Command {
        let mut command = Command::new(&self.muster);
        command
            .args(["run", "muster.toml", "--workers", &self.workers.to_string()])
            .current_dir(&self.root)
            .env("TMPDIR", &self.tmp)
            .env("NO_COLOR", "1");
        if !journal {
            command.arg("--no-journal");
        }
        command
    }

    /// `turbo run build --concurrency N`, telemetry off.
    fn turbo(&self) -> Command {
        let mut command = Command::new(&self.turbo);
        command
            .args(["run", "build", "--ui", "stream", "--concurrency"])
            .arg(self.workers.to_string())
            .current_dir(&self.root)
            .env("TMPDIR", &self.tmp)
            .env("TURBO_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .env("TURBO_NO_UPDATE_NOTIFIER", "1")
            .env("NO_COLOR", "1");
        command
    }

    /// PATH with the `npm` stand-in first.
    fn path_with_stand_in(&self) -> std::ffi::OsString {
        let mut path = self.stand_in.clone().into_os_string();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        path
    }
}

/// The report's rows for the cache line.
pub fn write_figure_rows(out: &mut String, line: &Value) {
    for (who, label, key) in [
        ("muster", "cached re-run s", "muster_s"),
        (
            "muster --no-journal",
            "cached re-run s",
            "muster_no_journal_s",
        ),
        ("turbo", "cached re-run s", "turbo_s"),
        ("muster", "cached re-run CPU s", "muster_cpu_s"),
        (
            "muster --no-journal",
            "cached re-run CPU s",
            "muster_no_journal_cpu_s",
        ),
        ("turbo", "cached re-run CPU s", "turbo_cpu_s"),
    ] {
        if let Some(v) = line.get(key) {
            let _ = writeln!(
                out,
                "| cache | {who} | {label} | {} | {}–{} |",
                v["median"], v["min"], v["max"]
            );
        }
    }
    for (who, key) in [("muster", "cold_muster_s"), ("turbo", "cold_turbo_s")] {
        if let Some(v) = line.get(key) {
            let _ = writeln!(
                out,
                "| cache | {who} | cold run s (fills the cache) | {v} | |"
            );
        }
    }
    for (who, key) in [
        ("muster/turbo", "ratio"),
        ("muster --no-journal/turbo", "ratio_no_journal"),
    ] {
        if let Some(v) = line.get(key) {
            let _ = writeln!(
                out,
                "| cache | {who} | cached re-run wall-time ratio | {v} | |"
            );
        }
    }
}

/// The target's row: muster's cached re-run at most as long as turbo's.
pub fn write_target(out: &mut String, line: Option<&Value>) {
    let ratio = line.and_then(|l| l["ratio"].as_f64());
    let (shown, met) = match ratio {
        Some(r) => (format!("{r:.2}"), if r <= 1.0 { "yes" } else { "**no**" }),
        None => ("not measured".into(), "—"),
    };
    let _ = writeln!(
        out,
        "| cached re-run of 2,000 modules: muster/turbo ≤ 1 | {shown} | {met} |"
    );
}

/// One finished command: wall and CPU seconds, and what it printed.
struct Timed {
    wall: f64,
    cpu: f64,
    output: String,
}

impl Timed {
    /// Fails unless the command printed `text`.
    fn expect(&self, text: &str) -> Result<()> {
        if !self.output.contains(text) {
            let tail: String = self
                .output
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n");
            bail!("expected {text:?} in its output; its last lines, last first:\n{tail}");
        }
        Ok(())
    }
}

/// Runs `command` to its end, both streams read through pipes; its wall
/// time and the CPU time of it and its children.
fn timed(command: &mut Command) -> Result<Timed> {
    let cpu_before = children_cpu();
    let start = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = (children_cpu() - cpu_before).as_secs_f64();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        bail!(
            "{command:?} failed: {}; its last lines, last first:\n{tail}",
            output.status
        );
    }
    Ok(Timed {
        wall,
        cpu,
        output: text,
    })
}

/// CPU time of this process's reaped children so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let (user, system) = (u.user_time(), u.system_time());
            Duration::from_micros(
                (user.tv_sec() * 1_000_000
                    + user.tv_usec()
                    + system.tv_sec() * 1_000_000
                    + system.tv_usec()) as u64,
            )
        })
        .unwrap_or_default()
}

/// The turbo binary: `MUSTER_BENCH_TURBO`, else the platform binary that
/// `npm ci` in `bench/peers/turbo` installed (run directly, without the
/// package's node launcher, so no node start is counted against turbo).
fn turbo_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MUSTER_BENCH_TURBO") {
        return Ok(PathBuf::from(path));
    }
    let platform = match std::env::consts::ARCH {
        "aarch64" => "linux-arm64",
        _ => "linux-64",
    };
    let path = PathBuf::from(format!(
        "bench/peers/turbo/node_modules/@turbo/{platform}/bin/turbo"
    ));
    if !path.exists() {
        bail!(
            "{} is missing: run `npm ci` in bench/peers/turbo (scripts/bench.sh does)",
            path.display()
        );
    }
    Ok(path.canonicalize()?)
}

fn version(turbo: &Path) -> Result<String> {
    let out = Command::new(turbo)
        .arg("--version")
        .env("TURBO_TELEMETRY_DISABLED", "1")
        .output()
        .with_context(|| format!("cannot run {}", turbo.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The package of layer `layer`, index `i`; the same name for both tools.
fn name(layer: usize, i: usize) -> String {
    format!("l{layer}-p{i:03}")
}

/// The two packages of the layer before that a package needs.
fn needs(layer: usize, i: usize) -> Vec<String> {
    if layer == 0 {
        return Vec::new();
    }
    vec![name(layer - 1, i), name(layer - 1, (i + 1) % WIDTH)]
}

/// Writes both tools' files and every package's sources under `root`.
fn generate(root: &Path) -> Result<()> {
    let mut toml = String::from("# muster-bench cache scenario (generated)\n");
    let mut lock_packages = serde_json::Map::new();
    lock_packages.insert(
        String::new(),
        json!({"name": "bench-workspace", "workspaces": ["packages/*"]}),
    );
    for layer in 0..LAYERS {
        for i in 0..WIDTH {
            let id = name(layer, i);
            let deps = needs(layer, i);
            let folder = root.join("packages").join(&id);
            std::fs::create_dir_all(folder.join("src"))?;
            std::fs::write(
                folder.join("src/index.js"),
                format!("export {{ helper }} from './lib.js';\nexport const name = '{id}';\n"),
            )?;
            std::fs::write(
                folder.join("src/lib.js"),
                format!(
                    "export function helper() {{\n  return '{id}:' + {};\n}}\n",
                    layer * WIDTH + i
                ),
            )?;
            let dependencies: serde_json::Map<String, Value> =
                deps.iter().map(|d| (d.clone(), json!("*"))).collect();
            let package = json!({
                "name": id, "version": "1.0.0", "private": true,
                "scripts": {"build": BUILD},
                "dependencies": dependencies,
            });
            std::fs::write(
                folder.join("package.json"),
                serde_json::to_string_pretty(&package)? + "\n",
            )?;
            lock_packages.insert(
                format!("packages/{id}"),
                json!({"name": id, "version": "1.0.0", "dependencies": dependencies}),
            );
            lock_packages.insert(
                format!("node_modules/{id}"),
                json!({"resolved": format!("packages/{id}"), "link": true}),
            );
            let _ = writeln!(
                toml,
                "\n[modules.{id}]\ncwd = \"packages/{id}\"\nrun = \"{BUILD}\"\n\
                 inputs = [\"src/**\"]\nproduces = [\"out/**\"]"
            );
            if !deps.is_empty() {
                let _ = writeln!(toml, "needs = [\"{}\"]", deps.join("\", \""));
            }
        }
    }
    std::fs::write(root.join("muster.toml"), toml)?;
    let package = json!({
        "name": "bench-workspace", "private": true,
        "workspaces": ["packages/*"],
        "packageManager": format!("npm@{}", npm_version()),
    });
    std::fs::write(
        root.join("package.json"),
        serde_json::to_string_pretty(&package)? + "\n",
    )?;
    let lock = json!({
        "name": "bench-workspace", "lockfileVersion": 3, "requires": true,
        "packages": lock_packages,
    });
    std::fs::write(
        root.join("package-lock.json"),
        serde_json::to_string_pretty(&lock)? + "\n",
    )?;
    let turbo = json!({
        "tasks": {"build": {
            "dependsOn": ["^build"], "inputs": ["src/**"], "outputs": ["out/**"],
        }},
    });
    std::fs::write(
        root.join("turbo.json"),
        serde_json::to_string_pretty(&turbo)? + "\n",
    )?;
    std::fs::write(
        root.join(".gitignore"),
        "out/\n.muster/\n.turbo/\nnode_modules/\n",
    )?;
    Ok(())
}

/// A folder holding `npm`, a stand-in for `npm run build` for turbo's cold
/// run only: npm's own start costs about half a CPU second per task, so
/// filling turbo's cache through it would take most of ten minutes on two
/// cores. It prints npm's header and runs the script with `sh -c`, as npm
/// does. The measured re-runs run no script and see the real PATH.
fn npm_stand_in(bin: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin)?;
    let npm = bin.join("npm");
    std::fs::write(
        &npm,
        format!(
            "#!/bin/sh\n\
             [ \"$*\" = \"run build\" ] || {{ echo \"stand-in npm: only 'run build'\" >&2; exit 2; }}\n\
             printf '\\n> %s@1.0.0 build\\n> %s\\n\\n' \"${{PWD##*/}}\" '{BUILD}'\n\
             exec sh -c '{BUILD}'\n"
        ),
    )?;
    std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin.to_owned())
}

/// The npm on this machine, for `packageManager`.
fn npm_version() -> String {
    Command::new("npm")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "10.9.0".into())
}

/// Makes `root` a git repository with everything committed, as a real
/// workspace is (turbo hashes through git when it can).
fn commit(root: &Path) -> Result<()> {
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=muster-bench",
            "-c",
            "user.email=muster-bench@localhost",
            "commit",
            "-q",
            "-m",
            "workspace",
        ],
    ] {
        let status = Command::new("git").args(args).current_dir(root).status()?;
        if !status.success() {
            bail!("git {args:?} failed in {}: {status}", root.display());
        }
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}
