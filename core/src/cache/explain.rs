//! Why a module runs again: the components of an earlier key, stored with
//! its result, against the components of the key now, in words a person
//! acts on ("src/lib.rs changed", "RUSTFLAGS unset before").

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One thing that goes into a key, as `muster cache explain` shows it:
/// `("file src/lib.rs", "<sha256>")`, `("env input RUSTFLAGS", "unset")`.
/// Names are unique within one key's components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub value: String,
}

/// What changed between an earlier key's components and now, one sentence
/// per change, in the key's order (format, command, ..., files, needs,
/// env inputs). Empty when nothing shown differs; keys can still differ
/// then, by the value of a secret, which shows as `***`.
pub fn explain_change(before: &[Component], now: &[Component]) -> Vec<String> {
    let earlier: HashMap<&str, &str> = before
        .iter()
        .map(|c| (c.name.as_str(), c.value.as_str()))
        .collect();
    let current: HashMap<&str, &str> = now
        .iter()
        .map(|c| (c.name.as_str(), c.value.as_str()))
        .collect();
    let mut changes: Vec<(usize, &str, String)> = Vec::new();
    for c in now {
        let kind = Kind::of(&c.name);
        let sentence = match earlier.get(c.name.as_str()) {
            Some(&was) if was == c.value => continue,
            Some(&was) => kind.changed(was, &c.value),
            None if kind.belongs_to_a_need_that(&earlier) => continue,
            None => kind.added(&c.value),
        };
        changes.push((kind.rank(), c.name.as_str(), sentence));
    }
    for c in before {
        let kind = Kind::of(&c.name);
        if current.contains_key(c.name.as_str()) || kind.belongs_to_a_need_that(&current) {
            continue;
        }
        changes.push((kind.rank(), c.name.as_str(), kind.removed(&c.value)));
    }
    changes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    changes
        .into_iter()
        .map(|(_, _, sentence)| sentence)
        .collect()
}

/// What a component's name says it is.
enum Kind<'a> {
    /// `format`, `command`, `shell`, `cwd`, `requires`, `produces`.
    Whole(&'a str),
    Env(&'a str),
    Matrix(&'a str),
    Secret(&'a str),
    File(&'a str),
    Need(&'a str),
    NeedOutput(&'a str, &'a str),
    NeedArtifact(&'a str, &'a str),
    EnvInput(&'a str),
    /// A name this version does not write (a newer format's).
    Other(&'a str),
}

impl<'a> Kind<'a> {
    fn of(name: &'a str) -> Kind<'a> {
        if let Some(rest) = name.strip_prefix("env input ") {
            return Kind::EnvInput(rest);
        }
        let Some((head, rest)) = name.split_once(' ') else {
            return match name {
                "format" | "command" | "shell" | "cwd" | "requires" | "produces" => {
                    Kind::Whole(name)
                }
                _ => Kind::Other(name),
            };
        };
        match head {
            "env" => Kind::Env(rest),
            "matrix" => Kind::Matrix(rest),
            "secret" => Kind::Secret(rest),
            "file" => Kind::File(rest),
            "need" => {
                let (id, tail) = split_need_id(rest);
                match tail.split_once(' ') {
                    Some(("output", key)) => Kind::NeedOutput(id, key),
                    Some(("artifact", path)) => Kind::NeedArtifact(id, path),
                    _ if tail.is_empty() => Kind::Need(id),
                    _ => Kind::Other(name),
                }
            }
            _ => Kind::Other(name),
        }
    }

    /// Where it sorts: the order of the key's records.
    fn rank(&self) -> usize {
        match self {
            Kind::Whole("format") => 0,
            Kind::Whole("command") => 1,
            Kind::Whole("shell") => 2,
            Kind::Whole("cwd") => 3,
            Kind::Env(_) => 4,
            Kind::Matrix(_) => 5,
            Kind::Secret(_) => 6,
            Kind::Whole("requires") => 7,
            Kind::Whole("produces") => 8,
            Kind::File(_) => 9,
            Kind::Need(_) | Kind::NeedOutput(..) | Kind::NeedArtifact(..) => 10,
            Kind::EnvInput(_) => 11,
            Kind::Whole(_) | Kind::Other(_) => 12,
        }
    }

    /// True for an output or artifact of a need that is not in `other`
    /// at all: "need x added" says it, one line per output would not.
    fn belongs_to_a_need_that(&self, other: &HashMap<&str, &str>) -> bool {
        match self {
            Kind::NeedOutput(id, _) | Kind::NeedArtifact(id, _) => {
                !other.contains_key(format!("need {id}").as_str())
            }
            _ => false,
        }
    }

    fn changed(&self, was: &str, now: &str) -> String {
        match self {
            Kind::Whole("command") => "command changed".to_owned(),
            Kind::Whole("format") => format!("cache format changed (was {was}, now {now})"),
            Kind::Whole(what) => format!("{what} changed (was {was:?}, now {now:?})"),
            Kind::Env(name) => format!("env {name} changed (was {was:?}, now {now:?})"),
            Kind::Matrix(key) => format!("matrix {key} changed (was {was:?}, now {now:?})"),
            Kind::Secret(name) => format!("secret {name} changed"),
            Kind::File(path) => format!("{path} changed"),
            Kind::Need(id) => format!("need {id}'s key changed"),
            Kind::NeedOutput(id, key) => {
                format!("need {id}'s output {key} changed (was {was:?}, now {now:?})")
            }
            Kind::NeedArtifact(id, path) => format!("need {id}'s artifact {path} changed"),
            Kind::EnvInput(name) if was == "unset" => format!("{name} unset before (now {now:?})"),
            Kind::EnvInput(name) if now == "unset" => format!("{name} unset now (was {was:?})"),
            Kind::EnvInput(name) => format!("{name} changed (was {was:?}, now {now:?})"),
            Kind::Other(name) => format!("{name} changed"),
        }
    }

    fn added(&self, now: &str) -> String {
        match self {
            Kind::Env(name) => format!("env {name} added ({now:?})"),
            Kind::Matrix(key) => format!("matrix {key} added ({now:?})"),
            Kind::Secret(name) => format!("secret {name} added"),
            Kind::File(path) => format!("{path} added"),
            Kind::Need(id) => format!("need {id} added"),
            Kind::NeedOutput(id, key) => format!("need {id}'s output {key} added ({now:?})"),
            Kind::NeedArtifact(id, path) => format!("need {id}'s artifact {path} added"),
            Kind::EnvInput(name) => format!("env input {name} added ({now:?})"),
            Kind::Whole(name) | Kind::Other(name) => format!("{name} added"),
        }
    }

    fn removed(&self, was: &str) -> String {
        match self {
            Kind::Env(name) => format!("env {name} removed (was {was:?})"),
            Kind::Matrix(key) => format!("matrix {key} removed (was {was:?})"),
            Kind::Secret(name) => format!("secret {name} removed"),
            Kind::File(path) => format!("{path} removed"),
            Kind::Need(id) => format!("need {id} removed"),
            Kind::NeedOutput(id, key) => format!("need {id}'s output {key} removed"),
            Kind::NeedArtifact(id, path) => format!("need {id}'s artifact {path} removed"),
            Kind::EnvInput(name) => format!("env input {name} removed"),
            Kind::Whole(name) | Kind::Other(name) => format!("{name} removed"),
        }
    }
}

/// Splits `build[os=linux] output version` after the need's id. An id has
/// no space outside its `[...]`, though a matrix value may hold one.
fn split_need_id(rest: &str) -> (&str, &str) {
    let id_end = match (rest.find('['), rest.find(' ')) {
        (Some(open), space) if space.is_none_or(|s| open < s) => rest[open..]
            .find(']')
            .map_or(rest.len(), |close| open + close + 1),
        (_, Some(space)) => space,
        (_, None) => rest.len(),
    };
    let (id, tail) = rest.split_at(id_end);
    (id, tail.strip_prefix(' ').unwrap_or(tail))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cache::{KeyInputs, NeedKey};

    fn base() -> KeyInputs {
        KeyInputs {
            command: "cargo test".into(),
            shell: vec!["sh".into(), "-c".into()],
            cwd: ".".into(),
            env: BTreeMap::from([("CI".into(), "1".into())]),
            secret_names: vec!["TOKEN".into()],
            files: vec![
                ("src/lib.rs".into(), "a".repeat(64)),
                ("src/old.rs".into(), "b".repeat(64)),
            ],
            needs: vec![NeedKey {
                id: "build[os=linux]".into(),
                key: "k1".into(),
                outputs: BTreeMap::from([("version".into(), "1.2".into())]),
                artifacts: vec![("target/app".into(), "c".repeat(64))],
            }],
            env_inputs: vec![
                ("RUSTFLAGS".into(), None),
                ("CC".into(), Some("gcc".into())),
            ],
            ..KeyInputs::default()
        }
    }

    /// Changes [`base`] with `change` and compares what explain_change says.
    fn check(change: impl FnOnce(&mut KeyInputs), expected: &[&str]) {
        let mut now = base();
        change(&mut now);
        let said = explain_change(&base().components(), &now.components());
        assert_eq!(said, expected);
    }

    #[test]
    fn changes_are_said_in_words() {
        check(|_| {}, &[]);
        check(
            |k| {
                k.files[0].1 = "d".repeat(64);
                k.files.push(("src/new.rs".into(), "e".repeat(64)));
                k.files.remove(1);
            },
            &[
                "src/lib.rs changed",
                "src/new.rs added",
                "src/old.rs removed",
            ],
        );
        check(
            |k| k.env_inputs[0].1 = Some("-C opt-level=3".into()),
            &["RUSTFLAGS unset before (now \"-C opt-level=3\")"],
        );
        check(
            |k| k.env_inputs[1].1 = None,
            &["CC unset now (was \"gcc\")"],
        );
        check(
            |k| k.env_inputs[1].1 = Some("clang".into()),
            &["CC changed (was \"gcc\", now \"clang\")"],
        );
        check(
            |k| {
                k.command = "cargo test --all".into();
                k.shell = vec!["bash".into(), "-c".into()];
                k.env.insert("CI".into(), "2".into());
                k.env.insert("RUST_LOG".into(), "debug".into());
            },
            &[
                "command changed",
                "shell changed (was \"sh -c\", now \"bash -c\")",
                "env CI changed (was \"1\", now \"2\")",
                "env RUST_LOG added (\"debug\")",
            ],
        );
        check(
            |k| {
                k.needs[0].key = "k2".into();
                k.needs[0].outputs.insert("version".into(), "1.3".into());
                k.needs[0].artifacts[0].1 = "f".repeat(64);
            },
            &[
                "need build[os=linux]'s key changed",
                "need build[os=linux]'s artifact target/app changed",
                "need build[os=linux]'s output version changed (was \"1.2\", now \"1.3\")",
            ],
        );
        check(
            |k| {
                k.needs[0].id = "build[os=macos]".into();
                k.requires.push("docker".into());
            },
            &[
                "requires changed (was \"(none)\", now \"docker\")",
                "need build[os=linux] removed",
                "need build[os=macos] added",
            ],
        );
        check(
            |k| k.secret_names.push("NPM_TOKEN".into()),
            &["secret NPM_TOKEN added"],
        );
    }

    #[test]
    fn a_secret_value_changes_the_key_but_is_not_shown() {
        let mut before = base();
        before.env.insert("TOKEN".into(), "old-secret".into());
        let mut now = base();
        now.env.insert("TOKEN".into(), "new-secret".into());
        assert_ne!(before.key(), now.key());
        assert!(explain_change(&before.components(), &now.components()).is_empty());
        assert!(!format!("{:?}", now.components()).contains("new-secret"));
    }

    #[test]
    fn names_from_a_newer_format_are_still_said() {
        let old = [Component {
            name: "format".into(),
            value: "1".into(),
        }];
        let new = [
            Component {
                name: "format".into(),
                value: "2".into(),
            },
            Component {
                name: "toolchain".into(),
                value: "1.95".into(),
            },
        ];
        assert_eq!(
            explain_change(&old, &new),
            ["cache format changed (was 1, now 2)", "toolchain added"]
        );
    }

    #[test]
    fn need_ids_split_where_their_brackets_end() {
        assert_eq!(split_need_id("build"), ("build", ""));
        assert_eq!(split_need_id("build output v"), ("build", "output v"));
        assert_eq!(
            split_need_id("t[os=mac os,n=1] artifact a b"),
            ("t[os=mac os,n=1]", "artifact a b")
        );
    }
}
