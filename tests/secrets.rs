//! Secrets end to end: `muster run` with a secret in its environment and
//! modules that try every way to print it (stdout, stderr, an output, a
//! refused output in the failure reason, a failing command) never shows its
//! value, and shows `***` instead; nor the hub token the modules inherit.

mod common;

use common::{muster, pipeline, run};

const SECRET: &str = "hunter2-very-secret";
const FILE_SECRET: &str = "from-the-pipeline-file";
const TOKEN: &str = "hub-token-0123456789";

#[test]
fn secret_values_never_reach_the_output() {
    let (_dir, file) = pipeline(
        r#"
[defaults]
secrets = ["MY_SECRET"]

[modules.leak]
run = '''
echo "stdout: $MY_SECRET"
echo "stderr: $MY_SECRET" >&2
echo "token: ${MUSTER_TOKEN:-withheld}"
echo "key=$MY_SECRET" >> "$MUSTER_OUTPUT"
'''

[modules.reader]
needs = ["leak"]
run = 'echo "need said: $MUSTER_NEEDS_LEAK_KEY"'

[modules.refused]
run = 'echo "$MY_SECRET" >> "$MUSTER_OUTPUT"'

[modules.fails]
secrets = ["FILE_SECRET"]
env = { FILE_SECRET = "from-the-pipeline-file" }
run = 'echo "failing with $MY_SECRET and $FILE_SECRET"; echo "$FILE_SECRET" >&2; exit 4'
"#,
    );
    let mut command = muster(&["run", file.to_str().unwrap(), "--workers", "2"]);
    command
        .env("MY_SECRET", SECRET)
        .env("MUSTER_TOKEN", TOKEN)
        .env("MUSTER_LOG", "debug");
    let out = run(command);
    assert_eq!(out.code(), 1, "{out}");
    for value in [SECRET, FILE_SECRET, TOKEN] {
        assert!(!out.stdout.contains(value), "{value} on stdout:\n{out}");
        assert!(!out.stderr.contains(value), "{value} on stderr:\n{out}");
    }
    for line in [
        "[leak] stdout: ***",
        "[leak] stderr: ***",
        // muster's own secrets are not passed on to modules.
        "[leak] token: withheld",
        "[reader] need said: ***",
        "[fails] failing with *** and ***",
        "[fails] ***",
        // The worker's reason for refusing the output quotes the line.
        "got \"***\"",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{out}");
    }
    assert_eq!(out.status_of("leak"), "succeeded", "{out}");
    assert_eq!(out.status_of("reader"), "succeeded", "{out}");
    assert_eq!(out.status_of("refused"), "failed", "{out}");
    assert_eq!(out.status_of("fails"), "failed", "{out}");
}

#[test]
fn validate_lists_secret_names_not_values() {
    let (_dir, file) = pipeline(
        r#"
[defaults]
secrets = ["NPM_TOKEN"]
[modules.publish]
secrets = ["AWS_SECRET_ACCESS_KEY"]
run = "npm publish"
"#,
    );
    let mut command = muster(&["validate", file.to_str().unwrap()]);
    command.env("NPM_TOKEN", SECRET);
    let out = run(command);
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout
            .contains("publish  secrets: NPM_TOKEN, AWS_SECRET_ACCESS_KEY  timeout: 1h"),
        "{out}"
    );
    assert!(!out.stdout.contains(SECRET), "{out}");
}

#[test]
fn a_bad_secret_name_is_refused_with_its_place() {
    let (_dir, file) = pipeline("[modules.a]\nrun = \"x\"\nsecrets = [\"NPM-TOKEN\"]\n");
    let out = run(muster(&["validate", file.to_str().unwrap()]));
    assert_eq!(out.code(), 2, "{out}");
    assert!(
        out.stderr
            .contains("muster.toml:3:12: secret \"NPM-TOKEN\" is not an environment variable name"),
        "{out}"
    );
}
