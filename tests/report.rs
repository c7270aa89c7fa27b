//! Reports of real runs: `muster run` with a failing and a skipped module,
//! then `muster report` writing JUnit (parsed with a real XML parser, and
//! read by junitparser from PyPI), JSON (validated by jsonschema against
//! docs/report.schema.json) and Markdown; `--report-json` and `--junit` on
//! `muster run`, with and without a journal; a cache hit; a report that
//! cannot be written; `muster graph` as DOT and mermaid; and `muster ci`
//! against a real `redis-server` appending its summary to
//! `$GITHUB_STEP_SUMMARY`, its reports read back from Redis by another
//! process.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{muster, pipeline, run, RedisServer};
use serde_json::Value;

/// `build` succeeds with an output and an artifact, `test` fails after
/// printing a secret and text XML and terminals must not take raw,
/// `deploy` is skipped for it, `lint` succeeds on its own.
const PIPELINE: &str = r#"
[modules.build]
run = "mkdir -p dist && echo app > dist/app && echo version=super-secret-value >> $MUSTER_OUTPUT"
produces = ["dist/app"]

[modules.test]
needs = ["build"]
secrets = ["REPORT_SECRET"]
env = { REPORT_SECRET = "hunter2-in-the-log" }
run = "echo \"first line $REPORT_SECRET\"; printf 'bad <tag> & \"q\" \\033[31mred\\001 ]]> end\\n'; exit 3"

[modules.deploy]
needs = ["test"]
run = "echo never"

[modules.lint]
run = "echo lint"
"#;

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_finished_run_reports_as_junit_json_and_markdown() {
    let (dir, file) = pipeline(PIPELINE);
    let at_end = dir.path().join("at-end.json");
    let ran = run(muster(&[
        "run",
        arg(&file),
        "--workers",
        "2",
        "--report-json",
        arg(&at_end),
    ]));
    assert_eq!(ran.code(), 1, "{ran}");

    let (junit, json, md) = (
        dir.path().join("junit.xml"),
        dir.path().join("report.json"),
        dir.path().join("summary.md"),
    );
    let reported = run(muster(&[
        "report",
        "-f",
        arg(&file),
        "--junit",
        arg(&junit),
        "--json",
        arg(&json),
        "--markdown",
        arg(&md),
    ]));
    assert_eq!(reported.code(), 0, "a failed run still reports: {reported}");

    check_junit(&std::fs::read_to_string(&junit).unwrap());

    let text = std::fs::read_to_string(&json).unwrap();
    assert!(
        !text.contains("super-secret-value"),
        "output values stay out"
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    check_read_by_junitparser(&consumers(&junit, &json));
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["counts"]["failed"], 1);
    let module = |id: &str| {
        report["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no module {id} in {report}"))
            .clone()
    };
    assert_eq!(module("build")["outputs"], serde_json::json!(["version"]));
    assert_eq!(module("build")["artifacts"][0]["path"], "dist/app");
    assert_eq!(module("test")["exitCode"], 3);
    assert_eq!(module("deploy")["state"], "skipped");
    assert_eq!(module("deploy")["attempts"], 0);
    assert_eq!(report["workers"].as_array().unwrap().len(), 2);
    // The run's own report and `muster report`'s are the same document.
    let written_at_end: Value =
        serde_json::from_str(&std::fs::read_to_string(&at_end).unwrap()).unwrap();
    assert_eq!(written_at_end, report);

    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| test | failed | 1 |"), "{md}");
    assert!(
        md.contains("| deploy | skipped | 0 | - | - | need 'test' failed |"),
        "{md}"
    );
    assert!(md.contains("```mermaid\ngantt\n"), "{md}");
}

/// The JUnit document of [`PIPELINE`]'s run, read by a real XML parser.
fn check_junit(xml: &str) {
    let document = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(
        (root.attribute("tests"), root.attribute("failures")),
        (Some("4"), Some("1"))
    );
    assert_eq!(root.attribute("skipped"), Some("1"));
    let suite = root.first_element_child().unwrap();
    assert_eq!(suite.attribute("name"), Some("muster.toml"));
    let cases: Vec<roxmltree::Node> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let names: Vec<&str> = cases.iter().filter_map(|c| c.attribute("name")).collect();
    assert_eq!(names, ["build", "test", "deploy", "lint"]);
    for case in &cases {
        assert_eq!(case.attribute("classname"), Some("muster.toml"));
        let time: f64 = case.attribute("time").unwrap().parse().unwrap();
        assert!(time >= 0.0);
    }
    let child = |case: &roxmltree::Node, tag: &str| {
        case.children().find(|n| n.has_tag_name(tag)).map(|n| {
            (
                n.attribute("message").map(str::to_owned),
                n.text().map(str::to_owned),
            )
        })
    };
    assert!(child(&cases[0], "failure").is_none() && child(&cases[0], "skipped").is_none());
    let (message, body) = child(&cases[1], "failure").expect("test failed");
    assert_eq!(message.as_deref(), Some("exited with code 3"));
    let body = body.unwrap();
    assert!(body.contains("exit code: 3"), "{body}");
    assert!(
        !xml.contains("hunter2-in-the-log"),
        "secrets stay masked: {xml}"
    );
    assert!(
        body.contains("first line ***\nbad <tag> & \"q\" red ]]> end"),
        "the log's tail, colour and control characters gone: {body:?}"
    );
    let (message, _) = child(&cases[2], "skipped").expect("deploy skipped");
    assert_eq!(message.as_deref(), Some("need 'test' failed"));
}

#[test]
fn a_run_without_a_journal_still_writes_its_reports_at_the_end() {
    let (dir, file) = pipeline(PIPELINE);
    let (junit, json) = (dir.path().join("j.xml"), dir.path().join("r.json"));
    let ran = run(muster(&[
        "run",
        arg(&file),
        "--workers",
        "2",
        "--no-journal",
        "--junit",
        arg(&junit),
        "--report-json",
        arg(&json),
    ]));
    assert_eq!(ran.code(), 1, "{ran}");
    check_junit(&std::fs::read_to_string(&junit).unwrap());
    check_read_by_junitparser(&consumers(&junit, &json));
    assert!(
        !dir.path().join(".muster").exists(),
        "--no-journal leaves no state folder"
    );
    assert!(!ran.stdout.contains("state in"), "{ran}");
}

#[test]
fn a_report_that_cannot_be_written_names_the_file() {
    let (dir, file) = pipeline("[modules.a]\nrun = \"true\"\n");
    let missing = dir.path().join("no-such-folder/junit.xml");
    let ran = run(muster(&["run", arg(&file), "--junit", arg(&missing)]));
    assert_eq!(
        ran.code(),
        3,
        "a run that succeeded but lost its report: {ran}"
    );
    assert!(
        ran.stderr.contains(&format!(
            "cannot write the JUnit report to {}",
            missing.display()
        )) && ran.stderr.contains("make sure its folder exists"),
        "{ran}"
    );

    let reported = run(muster(&[
        "report",
        "-f",
        arg(&file),
        "--json",
        arg(&missing),
    ]));
    assert_eq!(reported.code(), 2, "{reported}");
    assert!(
        reported.stderr.contains("cannot write the JSON report to"),
        "{reported}"
    );

    let nothing = run(muster(&["report", "-f", arg(&file)]));
    assert_eq!(nothing.code(), 2, "{nothing}");
    assert!(
        nothing.stderr.contains("say which report to write"),
        "{nothing}"
    );
}

#[test]
fn a_cache_hit_is_reported_as_one() {
    let (dir, file) = pipeline(
        "[modules.built]\ninputs = [\"src.txt\"]\nrun = \"cat src.txt\"\n\n\
         [modules.always]\nrun = \"true\"\n",
    );
    std::fs::write(dir.path().join("src.txt"), "source\n").unwrap();
    for round in ["first", "second"] {
        let ran = run(muster(&["run", arg(&file), "--workers", "1"]));
        assert_eq!(ran.code(), 0, "{round} run: {ran}");
    }
    let reported = run(muster(&["report", "-f", arg(&file), "--json", "-"]));
    assert_eq!(reported.code(), 0, "{reported}");
    let report: Value = serde_json::from_str(&reported.stdout).unwrap();
    let cached: Vec<(&str, bool)> = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["cached"].as_bool().unwrap()))
        .collect();
    assert_eq!(cached, [("built", true), ("always", false)], "{report}");
    let md = run(muster(&["report", "-f", arg(&file), "--markdown"]));
    assert!(md.stdout.contains("| built | succeeded (cached) |"), "{md}");
    assert!(md.stdout.contains("1 from the cache"), "{md}");
}

const DAG: &str = r#"
[modules.build]
run = "make"

[modules.test]
needs = ["build"]
matrix = { shard = ["1", "2"] }
run = "make test"

[modules.ship]
needs = ["test"]
run = "ship"

[modules.docs]
run = "docs"
"#;

#[test]
fn graph_prints_the_plan_as_dot_and_mermaid() {
    let (_dir, file) = pipeline(DAG);
    let dot = run(muster(&["graph", arg(&file)]));
    assert_eq!(dot.code(), 0, "{dot}");
    let lines: Vec<&str> = dot.stdout.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"digraph muster {"));
    assert_eq!(lines.last(), Some(&"}"));
    let unquote = |s: &str| s.trim().trim_end_matches(';').trim_matches('"').to_owned();
    let nodes: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.starts_with('"') && !l.contains("->"))
        .map(|l| unquote(l))
        .collect();
    let edges: BTreeSet<(String, String)> = lines
        .iter()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(from, to)| (unquote(from), unquote(to)))
        .collect();
    let expected_nodes = ["build", "test[shard=1]", "test[shard=2]", "ship", "docs"];
    assert_eq!(
        nodes,
        expected_nodes.iter().map(|s| s.to_string()).collect()
    );
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let expected_edges = BTreeSet::from([
        pair("build", "test[shard=1]"),
        pair("build", "test[shard=2]"),
        pair("test[shard=1]", "ship"),
        pair("test[shard=2]", "ship"),
    ]);
    assert_eq!(edges, expected_edges);

    let mermaid = run(muster(&["graph", arg(&file), "--format", "mermaid"]));
    assert_eq!(mermaid.code(), 0, "{mermaid}");
    let mut lines = mermaid.stdout.lines();
    assert_eq!(lines.next(), Some("flowchart LR"));
    let mut labels: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut mermaid_edges = BTreeSet::new();
    for line in lines {
        let line = line.trim();
        if let Some((from, to)) = line.split_once(" --> ") {
            mermaid_edges.insert(pair(&labels[from], &labels[to]));
        } else {
            let (node, label) = line.split_once('[').expect("a node line");
            let label = label.trim_end_matches(']').trim_matches('"');
            labels.insert(node.to_owned(), label.to_owned());
        }
    }
    assert_eq!(mermaid_edges, expected_edges);
    assert_eq!(labels.len(), 5);

    // The selection `muster run` takes: ship and what it needs.
    let selected = run(muster(&["graph", arg(&file), "ship"]));
    assert_eq!(selected.code(), 0, "{selected}");
    assert!(!selected.stdout.contains("docs"), "{selected}");
    assert!(
        selected.stdout.contains("\"test[shard=2]\" -> \"ship\";"),
        "{selected}"
    );
}

#[test]
fn muster_ci_adds_its_summary_to_the_github_job_and_reports_from_redis() {
    let redis = RedisServer::start();
    let (dir, file) = pipeline(PIPELINE);
    let summary = dir.path().join("step-summary.md");
    std::fs::write(&summary, "## an earlier step\n").unwrap();
    let junit = dir.path().join("ci-junit.xml");
    let mut ci = muster(&[
        "ci",
        arg(&file),
        "--instance",
        "0",
        "--total",
        "1",
        "--run-id",
        "report-run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--junit",
        arg(&junit),
    ]);
    ci.env("MUSTER_REDIS_URL", redis.url())
        .env("MUSTER_TOKEN", "report-token")
        .env("GITHUB_STEP_SUMMARY", &summary);
    let ran = run(ci);
    assert_eq!(ran.code(), 1, "{ran}");
    let text = std::fs::read_to_string(&summary).unwrap();
    // The live link goes in while the run is going, the report at its end;
    // the link carries the viewer token, never the run token.
    let (link, report) = text
        .strip_prefix("## an earlier step\n**muster** — watch the run live: <http://")
        .and_then(|rest| rest.split_once(">\n\n"))
        .unwrap_or_else(|| panic!("appended: {text}"));
    assert!(link.contains("/?access_token="), "{link}");
    assert!(!text.contains("report-token"), "{text}");
    assert!(
        report.starts_with("### muster: run report-run failed\n"),
        "appended: {text}"
    );
    assert!(text.contains("```mermaid\ngantt\n"), "{text}");
    check_junit(&std::fs::read_to_string(&junit).unwrap());

    // From another machine: only Redis and the run id.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut report = muster(&["report", "report-run", "--junit", "-"]);
    report
        .current_dir(elsewhere.path())
        .env("MUSTER_REDIS_URL", redis.url());
    let reported = run(report);
    assert_eq!(reported.code(), 0, "{reported}");
    check_junit(&reported.stdout);

    // Without a journal the summary is made all the same; a summary file
    // that cannot be written is a warning, not a failure.
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "[modules.a]\nrun = \"true\"\n").unwrap();
    let second = dir.path().join("second-summary.md");
    let unwritable = dir.path().join("no/such/dir/summary.md");
    for (run_id, summary, extra) in [
        ("report-run-2", &second, "--no-journal"),
        ("report-run-3", &unwritable, "--workers=1"),
    ] {
        let mut ci = muster(&[
            "ci",
            arg(&ok),
            "--instance",
            "0",
            "--total",
            "1",
            "--run-id",
            run_id,
            "--listen",
            "127.0.0.1:0",
            extra,
        ]);
        ci.env("MUSTER_REDIS_URL", redis.url())
            .env("MUSTER_TOKEN", "report-token")
            .env("GITHUB_STEP_SUMMARY", summary);
        let ran = run(ci);
        assert_eq!(ran.code(), 0, "{ran}");
        let warned = ran
            .stderr
            .contains("warning: cannot add the run's summary to GITHUB_STEP_SUMMARY");
        assert_eq!(warned, summary == &unwritable, "{ran}");
    }
    let text = std::fs::read_to_string(&second).unwrap();
    assert!(text.contains("| a | succeeded | 1 |"), "{text}");
}

/// What junitparser read from `junit`, after jsonschema checked `json`
/// against docs/report.schema.json (tests/report/consumers.py, with the
/// Python that scripts/test.sh sets up in target/tools/py).
fn consumers(junit: &Path, json: &Path) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("MUSTER_TEST_PYTHON")
        .map_or_else(|| root.join("target/tools/py/bin/python"), Into::into);
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs junitparser and jsonschema there",
        python.display()
    );
    let output = std::process::Command::new(&python)
        .arg(root.join("tests/report/consumers.py"))
        .args([junit, json, &root.join("docs/report.schema.json")])
        .output()
        .expect("run tests/report/consumers.py");
    assert!(
        output.status.success(),
        "the reports were refused:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("consumers.py prints JSON")
}

/// What junitparser must read from [`PIPELINE`]'s run.
fn check_read_by_junitparser(read: &Value) {
    assert_eq!(
        (
            &read["tests"],
            &read["failures"],
            &read["errors"],
            &read["skipped"]
        ),
        (
            &Value::from(4),
            &Value::from(1),
            &Value::from(0),
            &Value::from(1)
        ),
        "{read}"
    );
    let cases = read["cases"].as_array().unwrap();
    let summary: Vec<(&str, &str, Vec<&str>)> = cases
        .iter()
        .map(|c| {
            let results = c["results"].as_array().unwrap();
            (
                c["classname"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
                results.iter().filter_map(Value::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("muster.toml", "build", vec![]),
            ("muster.toml", "test", vec!["Failure"]),
            ("muster.toml", "deploy", vec!["Skipped"]),
            ("muster.toml", "lint", vec![]),
        ]
    );
    assert_eq!(cases[1]["messages"][0], "exited with code 3");
    let text = cases[1]["texts"][0].as_str().unwrap();
    assert!(text.contains("first line ***\nbad <tag>"), "{text}");
}
