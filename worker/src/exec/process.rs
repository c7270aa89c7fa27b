//! Starting the module's process: the shell (or, for a plain command, the
//! program itself), its cwd and environment (muster's own secrets withheld,
//! `MUSTER_*` added), piped stdout and stderr, and its own process group so
//! everything it starts can be stopped with it. Also which values are
//! secrets to mask in what it prints.

use std::path::Path;
use std::process::Stdio;

use muster_core::mask::Masker;
use muster_core::wire::types::Assignment;
use tokio::process::{Child, Command};

use super::Context;

/// muster's own secrets, which a module never inherits: with the hub's
/// token a module could cancel the run or join it as a worker.
const WITHHELD: [&str; 3] = ["MUSTER_TOKEN", "MUSTER_REDIS_URL", "BORE_SECRET"];

/// Masks what the module could print that it must not: each of its
/// `secrets` as the module sees it (its `env`) and as the worker has it (its
/// own environment, which the module inherits), and the hub token when the
/// worker got it from the environment.
pub(super) fn secret_masker(assignment: &Assignment, hub_token: &str) -> Masker {
    let from_worker =
        |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    let mut values = Vec::new();
    for name in &assignment.secrets {
        values.extend(assignment.env.get(name).cloned());
        values.extend(from_worker(name));
    }
    values.extend(WITHHELD.iter().filter_map(|name| from_worker(name)));
    values.push(hub_token.to_owned());
    Masker::new(values)
}

/// Starts the module: without the shell when its command is plain
/// ([`plain_words`]), else through its shell.
pub(super) fn spawn(
    assignment: &Assignment,
    context: &Context<'_>,
    cwd: &Path,
    output: &Path,
) -> std::io::Result<Child> {
    if let Some(words) = plain_words(&assignment.shell, &assignment.command) {
        match command(words[0], &words[1..], assignment, context, cwd, output).spawn() {
            // Not a program after all (a function in the shell's profile?):
            // let the shell run it, and say "not found" itself if it must.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            spawned => return spawned,
        }
    }
    let (program, args) = assignment
        .shell
        .split_first()
        .ok_or_else(|| std::io::Error::other("the assignment names no shell"))?;
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push(&assignment.command);
    command(program, &args, assignment, context, cwd, output).spawn()
}

/// Words the shell would only split, never interpret, in front of which a
/// shell adds nothing but a process: letters, digits and `_./-+,:@%`.
const PLAIN: &[u8] = b"_./-+,:@%";

/// Shell builtins and keywords with no program of the same name, or whose
/// program behaves differently (`echo`, `printf`): these need the shell.
const SHELL_ONLY: &[&str] = &[
    ".", "alias", "break", "case", "cd", "command", "continue", "do", "done", "echo", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "fi", "for", "function", "getopts", "hash",
    "if", "local", "printf", "read", "readonly", "return", "set", "shift", "source", "then",
    "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// A command simple enough to run without the shell, split into words, as
/// make does: only with the default `sh -c`, only plain words, and not a
/// shell builtin. It saves starting a shell for every `true` or `cargo
/// test --release`; anything else goes through the shell.
fn plain_words<'a>(shell: &[String], command: &'a str) -> Option<Vec<&'a str>> {
    if shell != ["sh", "-c"] {
        return None;
    }
    let words: Vec<&str> = command.split_ascii_whitespace().collect();
    let plain = |w: &&str| {
        w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || PLAIN.contains(&b))
    };
    let first = *words.first()?;
    (words.iter().all(plain) && !SHELL_ONLY.contains(&first)).then_some(words)
}

/// The module's process: its environment, cwd, pipes and process group.
fn command(
    program: &str,
    args: &[&str],
    assignment: &Assignment,
    context: &Context<'_>,
    cwd: &Path,
    output: &Path,
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .envs(&assignment.env)
        .env_remove(WITHHELD[0])
        .env_remove(WITHHELD[1])
        .env_remove(WITHHELD[2])
        .env("MUSTER_MODULE", &assignment.module_id)
        .env("MUSTER_ATTEMPT", assignment.attempt.to_string())
        .env("MUSTER_WORKER", context.worker_name)
        .env("MUSTER_OUTPUT", output)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn plain_commands_skip_the_shell() {
        let sh = ["sh".to_owned(), "-c".to_owned()];
        assert_eq!(plain_words(&sh, "true"), Some(vec!["true"]));
        assert_eq!(
            plain_words(&sh, " cargo  test --release -p a/b "),
            Some(vec!["cargo", "test", "--release", "-p", "a/b"])
        );
        for shell_needed in [
            "",
            "echo hi",
            "cd x",
            "a && b",
            "FOO=1 make",
            "ls *.rs",
            "echo $HOME",
            "x > y",
            "'quoted'",
            "a; b",
            "exit 1",
        ] {
            assert_eq!(plain_words(&sh, shell_needed), None, "{shell_needed:?}");
        }
        let bash = [
            "bash".to_owned(),
            "-eo".to_owned(),
            "pipefail".to_owned(),
            "-c".to_owned(),
        ];
        assert_eq!(plain_words(&bash, "true"), None, "only the default shell");
    }

    #[test]
    fn secrets_come_from_the_module_env_and_the_worker_env() {
        let assignment = Assignment {
            module_id: "m".into(),
            attempt: 1,
            command: String::new(),
            shell: vec![],
            cwd: ".".into(),
            env: BTreeMap::from([
                ("FROM_ENV".into(), "module-env-secret".into()),
                ("PLAIN".into(), "plain-value".into()),
            ]),
            timeout_ms: 1000,
            needs: BTreeMap::new(),
            secrets: vec!["FROM_ENV".into(), "PATH".into(), "UNSET_X_Y_Z".into()],
            produces: vec![],
            consumes: vec![],
        };
        let masker = secret_masker(&assignment, "the-hub-token");
        let path = std::env::var("PATH").unwrap();
        let text = format!("module-env-secret plain-value {path} the-hub-token");
        assert_eq!(masker.mask(&text), "*** plain-value *** ***");
    }
}
