//! The cache key of a module: a SHA-256 over everything that decides what
//! its command does, so an equal key means an earlier result may stand for
//! running it again. The encoding is fixed and written out below, so
//! anyone can compute a key without muster; a change to it bumps
//! [`CACHE_FORMAT`], which is the first thing hashed, so keys of two
//! formats never meet.
//!
//! What goes in: the command, shell, cwd, env, matrix values, secret
//! *names*, requires and produces of the module; the path and SHA-256 of
//! each input file; each need's id, key, outputs and the artifacts taken
//! from it; and the value of each `env_inputs` variable, or that it is
//! unset. What stays out, and why:
//! - the module's id: renaming a module keeps its cache, and two modules
//!   that do the same work share results. (A command that reads
//!   `$MUSTER_MODULE` should say so with `env`.) The matrix values are in,
//!   so instances of one module never share.
//! - the values of secrets the worker's environment holds: only the
//!   names go in. A secret the result depends on belongs in `env_inputs`,
//!   whose values are hashed (and shown as `***` by `components`).
//! - the worker's other variables, its name and the attempt: muster cannot
//!   tell which a command reads; `env_inputs` and `requires` say it.
//! - timeout and retries: they decide whether a run ends, not its result.
//!
//! # Encoding, format 1
//!
//! A *string* is its length in UTF-8 bytes as a little-endian `u64`, then
//! those bytes. A *record* is its tag (a string), its number of fields (a
//! little-endian `u64`), then each field (a string). The key is the
//! lower-case hex SHA-256 of these records, one after the other, in this
//! order ("sorted" is by the bytes of UTF-8, as Rust's `str` sorts):
//!
//! | tag | fields | records |
//! | --- | --- | --- |
//! | `format` | `1` | one |
//! | `command` | the script | one |
//! | `shell` | each word, in order (`sh`, `-c`) | one |
//! | `cwd` | the folder, relative (`.`) | one |
//! | `env` | name, value | one per variable, sorted by name |
//! | `matrix` | key, value | one per key, sorted by key |
//! | `secret` | name | one per name, sorted, each once |
//! | `requires` | each capability, sorted, each once | one |
//! | `produces` | each glob as written, sorted, each once | one |
//! | `file` | path, SHA-256 | one per input file, sorted by path |
//! | `need` | id, key | one per need, sorted by id, each followed by its `need output` and `need artifact` records |
//! | `need output` | need id, name, value | one per output of that need, sorted by name |
//! | `need artifact` | need id, path, SHA-256 | one per artifact taken from that need, sorted by path |
//! | `env input` | name, value; or name alone when unset | one per name, sorted, each once |
//!
//! Paths are relative to the module's cwd with `/` between parts, and
//! SHA-256s are lower-case hex, as they are everywhere else in muster.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::explain::Component;
use crate::plan::{ModuleIndex, Plan};

/// The version of the encoding; the first record of every key.
pub const CACHE_FORMAT: u32 = 1;

/// Everything that goes into one module's key, gathered by the caller
/// (files hashed, needs' results looked up). Lists may come in any order:
/// the key sorts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInputs {
    /// The module's id, for messages only: it is not part of the key.
    pub module: String,
    pub command: String,
    pub shell: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub matrix: BTreeMap<String, String>,
    /// Names only: the values never reach the key.
    pub secret_names: Vec<String>,
    /// (path relative to the module's cwd with `/`, lower-hex SHA-256) of
    /// each file its `inputs` match.
    pub files: Vec<(String, String)>,
    pub needs: Vec<NeedKey>,
    pub requires: Vec<String>,
    /// Its `produces` globs: what a stored result must hold.
    pub produces: Vec<String>,
    /// Each `env_inputs` name with its value where the module runs, or
    /// `None` when unset.
    pub env_inputs: Vec<(String, Option<String>)>,
}

/// What one need handed the module: a need that did the same work and
/// passed on the same values leaves the module's key as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeedKey {
    pub id: String,
    /// The need's own cache key, or empty when it is not cached (its
    /// outputs and artifacts still say what it handed over).
    pub key: String,
    /// Every output of the need, as the module sees it.
    pub outputs: BTreeMap<String, String>,
    /// (path, lower-hex SHA-256) of each artifact the module consumes from
    /// the need.
    pub artifacts: Vec<(String, String)>,
}

/// A module's cache key: 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey {
    pub hex: String,
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex)
    }
}

impl KeyInputs {
    /// The key: SHA-256 over the encoding in this file's documentation.
    pub fn key(&self) -> CacheKey {
        let mut hasher = Sha256::new();
        for record in self.records() {
            string(&mut hasher, record.tag);
            hasher.update((record.fields.len() as u64).to_le_bytes());
            for field in &record.fields {
                string(&mut hasher, field);
            }
        }
        CacheKey {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    /// One [`Component`] per record of the key, in the key's order, for
    /// `muster cache explain` and [`super::explain_change`]. The values of
    /// `env` and `env_inputs` variables that are also secrets show as
    /// `***`.
    pub fn components(&self) -> Vec<Component> {
        let secret = |name: &str| self.secret_names.iter().any(|s| s == name);
        let shown = |name: &str, value: &str| {
            if secret(name) {
                "***".to_owned()
            } else {
                value.to_owned()
            }
        };
        let listed = |fields: &[Cow<str>]| {
            if fields.is_empty() {
                "(none)".to_owned()
            } else {
                fields.join(", ")
            }
        };
        self.records()
            .into_iter()
            .map(|Record { tag, fields }| {
                let f = |i: usize| fields[i].as_ref();
                let (name, value) = match (tag, fields.len()) {
                    ("shell", _) => (tag.to_owned(), fields.join(" ")),
                    ("requires" | "produces", _) => (tag.to_owned(), listed(&fields)),
                    ("env", _) => (format!("env {}", f(0)), shown(f(0), f(1))),
                    ("matrix", _) => (format!("matrix {}", f(0)), f(1).to_owned()),
                    ("secret", _) => (format!("secret {}", f(0)), "(name only)".to_owned()),
                    ("file", _) => (format!("file {}", f(0)), f(1).to_owned()),
                    ("need", _) if f(1).is_empty() => {
                        (format!("need {}", f(0)), "(not cached)".to_owned())
                    }
                    ("need", _) => (format!("need {}", f(0)), f(1).to_owned()),
                    ("need output", _) => {
                        (format!("need {} output {}", f(0), f(1)), f(2).to_owned())
                    }
                    ("need artifact", _) => {
                        (format!("need {} artifact {}", f(0), f(1)), f(2).to_owned())
                    }
                    ("env input", 1) => (format!("env input {}", f(0)), "unset".to_owned()),
                    ("env input", _) => (format!("env input {}", f(0)), shown(f(0), f(1))),
                    // format, command, cwd: one field, shown as it is.
                    _ => (tag.to_owned(), fields.join(" ")),
                };
                Component { name, value }
            })
            .collect()
    }

    /// The records of the key, in order, sorted and deduplicated as the
    /// encoding says.
    fn records(&self) -> Vec<Record<'_>> {
        let mut records = Vec::new();
        let mut push = |tag, fields| records.push(Record { tag, fields });
        push("format", vec![Cow::Owned(CACHE_FORMAT.to_string())]);
        push("command", one(&self.command));
        push(
            "shell",
            self.shell.iter().map(|w| Cow::from(w.as_str())).collect(),
        );
        debug_assert!(!self.cwd.starts_with('/'), "cwd {:?} is absolute", self.cwd);
        push("cwd", one(&self.cwd));
        for (name, value) in &self.env {
            push("env", vec![name.into(), value.into()]);
        }
        for (key, value) in &self.matrix {
            push("matrix", vec![key.into(), value.into()]);
        }
        for name in sorted_set(&self.secret_names) {
            push("secret", one(name));
        }
        push(
            "requires",
            sorted_set(&self.requires)
                .into_iter()
                .map(Cow::from)
                .collect(),
        );
        push(
            "produces",
            sorted_set(&self.produces)
                .into_iter()
                .map(Cow::from)
                .collect(),
        );
        for (path, sha256) in sorted_by_path(&self.files, "an input file") {
            push("file", vec![path.into(), sha256.into()]);
        }
        let mut needs: Vec<&NeedKey> = self.needs.iter().collect();
        needs.sort_by(|a, b| a.id.cmp(&b.id));
        debug_assert!(
            needs.windows(2).all(|w| w[0].id != w[1].id),
            "a need of {} is listed twice",
            self.module
        );
        for need in needs {
            let id = need.id.as_str();
            push("need", vec![id.into(), need.key.as_str().into()]);
            for (name, value) in &need.outputs {
                push("need output", vec![id.into(), name.into(), value.into()]);
            }
            for (path, sha256) in sorted_by_path(&need.artifacts, "an artifact") {
                push("need artifact", vec![id.into(), path.into(), sha256.into()]);
            }
        }
        let mut env_inputs: Vec<&(String, Option<String>)> = self.env_inputs.iter().collect();
        env_inputs.sort_by(|a, b| a.0.cmp(&b.0));
        env_inputs.dedup_by(|a, b| a.0 == b.0);
        for (name, value) in env_inputs {
            match value {
                Some(value) => push("env input", vec![name.into(), value.into()]),
                None => push("env input", one(name)),
            }
        }
        records
    }
}

/// The inputs of `plan`'s `module` for its key: its definition from the
/// plan, with the `files` its inputs matched and what its `needs` handed
/// over (both gathered by the caller), and each `env_inputs` variable read
/// through `env` where the module runs.
pub fn plan_key_inputs(
    plan: &Plan,
    module: ModuleIndex,
    files: Vec<(String, String)>,
    needs: Vec<NeedKey>,
    env: &dyn Fn(&str) -> Option<String>,
) -> KeyInputs {
    let m = &plan.modules[module];
    KeyInputs {
        module: m.id.clone(),
        command: m.run.clone(),
        shell: m.shell.clone(),
        cwd: m.cwd.clone(),
        env: m.env.clone(),
        matrix: m.matrix.clone(),
        secret_names: m.secrets.clone(),
        files,
        needs,
        requires: m.requires.clone(),
        produces: m.produces.clone(),
        env_inputs: m
            .env_inputs
            .iter()
            .map(|name| (name.clone(), env(name)))
            .collect(),
    }
}

/// One record of the encoding.
struct Record<'a> {
    tag: &'static str,
    fields: Vec<Cow<'a, str>>,
}

fn one(field: &str) -> Vec<Cow<'_, str>> {
    vec![Cow::Borrowed(field)]
}

/// `list` sorted, each once.
fn sorted_set(list: &[String]) -> Vec<&str> {
    let mut list: Vec<&str> = list.iter().map(String::as_str).collect();
    list.sort_unstable();
    list.dedup();
    list
}

/// `(path, sha256)` pairs sorted by path, each path once. Paths are
/// relative: an absolute one would make the key depend on where the
/// checkout is, and put that in every message about it.
fn sorted_by_path<'a>(list: &'a [(String, String)], what: &str) -> Vec<(&'a str, &'a str)> {
    let mut list: Vec<(&str, &str)> = list.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    list.sort_unstable();
    for (path, _) in &list {
        debug_assert!(
            !path.starts_with('/') && !path.contains('\\'),
            "{what} path {path:?} is not relative with '/'"
        );
    }
    debug_assert!(
        list.windows(2).all(|w| w[0].0 != w[1].0),
        "{what} path is listed twice"
    );
    list
}

/// Length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ.
fn string(hasher: &mut Sha256, value: &str) {
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::pipeline::parse_pipeline;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    /// A module with one of everything.
    fn inputs() -> KeyInputs {
        KeyInputs {
            module: "test[os=linux]".into(),
            command: "cargo test".into(),
            shell: vec!["sh".into(), "-c".into()],
            cwd: "app".into(),
            env: BTreeMap::from([pair("CI", "1"), pair("TOKEN", "hunter22")]),
            matrix: BTreeMap::from([pair("os", "linux")]),
            secret_names: vec!["TOKEN".into()],
            files: vec![pair("src/lib.rs", SHA_A), pair("Cargo.lock", SHA_B)],
            needs: vec![NeedKey {
                id: "build".into(),
                key: "k1".into(),
                outputs: BTreeMap::from([pair("version", "1.2")]),
                artifacts: vec![pair("target/app", SHA_A)],
            }],
            requires: vec!["os:linux".into()],
            produces: vec!["report.xml".into()],
            env_inputs: vec![
                ("RUSTFLAGS".into(), None),
                ("CC".into(), Some("clang".into())),
            ],
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_key() {
        let key = inputs().key();
        assert_eq!(key, inputs().key());
        assert_eq!(key.hex.len(), 64);
        assert!(key
            .hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(key.to_string(), key.hex);
    }

    #[test]
    fn every_component_changes_the_key() {
        type Change = fn(&mut KeyInputs);
        let changes: &[(&str, Change)] = &[
            ("command", |k| k.command.push('!')),
            ("shell", |k| k.shell[0] = "bash".into()),
            ("shell split", |k| k.shell = vec!["sh -c".into()]),
            ("cwd", |k| k.cwd = ".".into()),
            ("env value", |k| *k.env.get_mut("CI").unwrap() = "2".into()),
            ("env added", |k| {
                drop(k.env.insert("X".into(), String::new()))
            }),
            ("secret value", |k| {
                *k.env.get_mut("TOKEN").unwrap() = "x".into()
            }),
            ("matrix", |k| {
                *k.matrix.get_mut("os").unwrap() = "macos".into()
            }),
            ("secret name", |k| k.secret_names.push("NPM_TOKEN".into())),
            ("file content", |k| k.files[0].1 = SHA_B.into()),
            ("file renamed", |k| k.files[0].0 = "src/main.rs".into()),
            ("file added", |k| k.files.push(pair("build.rs", SHA_A))),
            ("file removed", |k| drop(k.files.pop())),
            ("need key", |k| k.needs[0].key = "k2".into()),
            ("need id", |k| k.needs[0].id = "build2".into()),
            ("need output", |k| {
                drop(k.needs[0].outputs.insert("version".into(), "1.3".into()))
            }),
            ("need artifact", |k| {
                k.needs[0].artifacts[0].1 = SHA_B.into()
            }),
            ("need removed", |k| k.needs.clear()),
            ("requires", |k| k.requires.push("docker".into())),
            ("produces", |k| k.produces.clear()),
            ("env input set", |k| k.env_inputs[0].1 = Some("-O".into())),
            ("env input empty", |k| {
                k.env_inputs[0].1 = Some(String::new())
            }),
            ("env input unset", |k| k.env_inputs[1].1 = None),
            ("env input added", |k| {
                k.env_inputs.push(("LANG".into(), None))
            }),
        ];
        let mut seen = HashSet::from([inputs().key()]);
        for (what, change) in changes {
            let mut changed = inputs();
            change(&mut changed);
            assert!(seen.insert(changed.key()), "{what} left the key as it was");
        }
    }

    #[test]
    fn order_and_the_module_id_do_not_matter() {
        let mut other = inputs();
        other.module = "renamed".into();
        other.files.reverse();
        other.secret_names.push("TOKEN".into());
        other.requires = vec!["os:linux".into(), "os:linux".into()];
        other.env_inputs.reverse();
        other.needs.push(NeedKey {
            id: "a".into(),
            ..NeedKey::default()
        });
        other.needs.reverse();
        other.needs[1].artifacts.push(pair("target/lib", SHA_B));
        other.needs[1].artifacts.reverse();
        let mut same = inputs();
        same.needs.insert(
            0,
            NeedKey {
                id: "a".into(),
                ..NeedKey::default()
            },
        );
        same.needs[1].artifacts.push(pair("target/lib", SHA_B));
        assert_eq!(other.key(), same.key());
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let with_env = |name: &str, value: &str| KeyInputs {
            env: BTreeMap::from([pair(name, value)]),
            ..KeyInputs::default()
        };
        assert_ne!(with_env("ab", "c").key(), with_env("a", "bc").key());
        let shell = |words: &[&str]| KeyInputs {
            shell: words.iter().map(|w| w.to_string()).collect(),
            command: "x".into(),
            ..KeyInputs::default()
        };
        // The shell's words and the command are separate records.
        let mut longer = shell(&["sh"]);
        longer.command = String::new();
        longer.shell.push("x".into());
        assert_ne!(shell(&["sh"]).key(), longer.key());
    }

    /// The encoding written out in this file's documentation, byte by
    /// byte: anyone who follows it gets muster's key.
    #[test]
    fn the_key_follows_the_documented_encoding() {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn record(out: &mut Vec<u8>, tag: &str, fields: &[&str]) {
            string(out, tag);
            out.extend((fields.len() as u64).to_le_bytes());
            for field in fields {
                string(out, field);
            }
        }
        let mut bytes = Vec::new();
        record(&mut bytes, "format", &["1"]);
        record(&mut bytes, "command", &["cargo test"]);
        record(&mut bytes, "shell", &["sh", "-c"]);
        record(&mut bytes, "cwd", &["app"]);
        record(&mut bytes, "env", &["CI", "1"]);
        record(&mut bytes, "env", &["TOKEN", "hunter22"]);
        record(&mut bytes, "matrix", &["os", "linux"]);
        record(&mut bytes, "secret", &["TOKEN"]);
        record(&mut bytes, "requires", &["os:linux"]);
        record(&mut bytes, "produces", &["report.xml"]);
        record(&mut bytes, "file", &["Cargo.lock", SHA_B]);
        record(&mut bytes, "file", &["src/lib.rs", SHA_A]);
        record(&mut bytes, "need", &["build", "k1"]);
        record(&mut bytes, "need output", &["build", "version", "1.2"]);
        record(&mut bytes, "need artifact", &["build", "target/app", SHA_A]);
        record(&mut bytes, "env input", &["CC", "clang"]);
        record(&mut bytes, "env input", &["RUSTFLAGS"]);
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(inputs().key().hex, hex);
        // Pinned: if this changes, every stored result is lost; bump
        // CACHE_FORMAT and say so.
        assert_eq!(
            hex,
            "6870ebc72c9f3e8e368d46fd038f1b070ce4a222368265c9154e3a1bee9ccc3c"
        );
    }

    #[test]
    fn components_show_what_goes_in() {
        let shown: Vec<(String, String)> = inputs()
            .components()
            .into_iter()
            .map(|c| (c.name, c.value))
            .collect();
        let expected = [
            ("format", "1"),
            ("command", "cargo test"),
            ("shell", "sh -c"),
            ("cwd", "app"),
            ("env CI", "1"),
            ("env TOKEN", "***"),
            ("matrix os", "linux"),
            ("secret TOKEN", "(name only)"),
            ("requires", "os:linux"),
            ("produces", "report.xml"),
            ("file Cargo.lock", SHA_B),
            ("file src/lib.rs", SHA_A),
            ("need build", "k1"),
            ("need build output version", "1.2"),
            ("need build artifact target/app", SHA_A),
            ("env input CC", "clang"),
            ("env input RUSTFLAGS", "unset"),
        ]
        .map(|(n, v)| pair(n, v));
        assert_eq!(shown, expected);
        let bare = KeyInputs {
            needs: vec![NeedKey {
                id: "lint".into(),
                ..NeedKey::default()
            }],
            ..KeyInputs::default()
        };
        let shown = bare.components();
        assert_eq!(shown[4].value, "(none)", "{shown:?}");
        assert_eq!(shown[6].value, "(not cached)", "{shown:?}");
    }

    #[test]
    fn plan_key_inputs_takes_the_definition_from_the_plan() {
        let plan = parse_pipeline(
            "t.toml",
            r#"
[modules.build]
run = "make"
[modules.test]
run = "cargo test"
cwd = "app"
needs = ["build"]
matrix = { os = ["linux"] }
env = { CI = "1" }
secrets = ["TOKEN"]
requires = ["os:${matrix.os}"]
produces = ["report.xml"]
inputs = ["src/**"]
env_inputs = ["RUSTFLAGS", "CC"]
"#,
        )
        .unwrap();
        let env = |name: &str| (name == "CC").then(|| "clang".to_owned());
        let files = vec![pair("src/lib.rs", SHA_A), pair("Cargo.lock", SHA_B)];
        let needs = inputs().needs;
        let from_plan = plan_key_inputs(&plan, 1, files, needs, &env);
        let mut expected = inputs();
        expected.env.remove("TOKEN");
        assert_eq!(from_plan, expected);
        for c in from_plan.components() {
            assert!(!c.name.contains(" /") && !c.value.starts_with('/'), "{c:?}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "an input file path \"/home/me/src/lib.rs\" is not relative")]
    fn an_absolute_path_is_a_caller_bug() {
        let mut absolute = inputs();
        absolute.files.push(pair("/home/me/src/lib.rs", SHA_A));
        absolute.key();
    }
}
