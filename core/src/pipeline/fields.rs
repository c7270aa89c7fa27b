//! Checks of single values, each refusal pointing at the value: durations,
//! retries, shells, variable and module names, folders, the artifact
//! paths and globs of `produces` and `consumes`, and the file globs of
//! `inputs`; and the `[defaults]` every module starts from.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::error::{PipelineError, Source};
use super::raw::RawDefaults;
use crate::glob::ArtifactGlob;

/// The timeout of a module that sets none, nor `[defaults] timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The shell of a module that sets none.
pub const DEFAULT_SHELL: &str = "sh";
/// The longest timeout accepted; anything longer is surely a typo.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The most retries a module may ask for.
pub const MAX_RETRIES: u32 = 100;

/// The settings a module takes when it sets none of its own.
pub(super) struct Defaults {
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) shell: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) secrets: Vec<String>,
    /// `inputs` of a module that sets none; empty without it.
    pub(super) inputs: Vec<String>,
    /// Whether a module with inputs may be cached; true without it.
    pub(super) cache: bool,
    /// Added before a module's own `env_inputs`.
    pub(super) env_inputs: Vec<String>,
}

impl Defaults {
    pub(super) fn read(source: &Source, raw: RawDefaults) -> Result<Defaults, PipelineError> {
        Ok(Defaults {
            timeout: match &raw.timeout {
                Some(t) => duration(source, t)?,
                None => DEFAULT_TIMEOUT,
            },
            retries: match &raw.retries {
                Some(r) => retries(source, r)?,
                None => 0,
            },
            shell: match &raw.shell {
                Some(s) => shell(source, s)?,
                None => vec![DEFAULT_SHELL.into(), "-c".into()],
            },
            env: raw
                .env
                .into_iter()
                .map(|(k, v)| (k, v.into_inner()))
                .collect(),
            secrets: {
                let mut secrets = Vec::new();
                for written in &raw.secrets {
                    let name = secret_name(source, written, written.get_ref().clone())?;
                    if !secrets.contains(&name) {
                        secrets.push(name);
                    }
                }
                secrets
            },
            inputs: match &raw.inputs {
                Some(list) => inputs(source, list, |written| {
                    if written.get_ref().contains("${matrix.") {
                        return Err(source
                            .error(written.span(), "[defaults] inputs cannot use ${matrix.KEY}: the defaults have no matrix")
                            .help("set inputs on the module whose matrix has the key"));
                    }
                    Ok(written.get_ref().clone())
                })?,
                None => Vec::new(),
            },
            cache: raw.cache.as_ref().is_none_or(|c| *c.get_ref()),
            env_inputs: {
                let mut names = Vec::new();
                for written in &raw.env_inputs {
                    let name = env_input_name(source, written, written.get_ref().clone())?;
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                names
            },
        })
    }
}

pub(super) fn retries(source: &Source, value: &Spanned<u32>) -> Result<u32, PipelineError> {
    if *value.get_ref() <= MAX_RETRIES {
        Ok(*value.get_ref())
    } else {
        Err(source
            .error(
                value.span(),
                format!(
                    "{} retries is more than the {MAX_RETRIES} allowed",
                    value.get_ref()
                ),
            )
            .help("a command that fails this often needs fixing, not retrying"))
    }
}

pub(super) fn duration(source: &Source, text: &Spanned<String>) -> Result<Duration, PipelineError> {
    match humantime::parse_duration(text.get_ref()) {
        Ok(d) if d > MAX_TIMEOUT => Err(source
            .error(
                text.span(),
                format!("timeout {:?} is longer than 30 days", text.get_ref()),
            )
            .help("write a duration such as \"90s\", \"10m\" or \"1h 30m\"")),
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(source
            .error(text.span(), "a timeout of zero would fail every module")
            .help("write a positive duration such as \"90s\", \"10m\" or \"1h 30m\"")),
        Err(e) => Err(source
            .error(
                text.span(),
                format!("bad duration {:?}: {e}", text.get_ref()),
            )
            .help("write a duration such as \"90s\", \"10m\" or \"1h 30m\"")),
    }
}

pub(super) fn shell(source: &Source, text: &Spanned<String>) -> Result<Vec<String>, PipelineError> {
    let mut words: Vec<String> = text
        .get_ref()
        .split_whitespace()
        .map(String::from)
        .collect();
    if words.is_empty() {
        return Err(source
            .error(text.span(), "the shell is empty")
            .help("name a program that takes a script after -c, such as \"bash\" or \"bash -eo pipefail\""));
    }
    words.push("-c".into());
    Ok(words)
}

/// A `secrets` entry: `name` (the text of `written`, after matrix
/// substitution) if it can name an environment variable.
pub(super) fn secret_name(
    source: &Source,
    written: &Spanned<String>,
    name: String,
) -> Result<String, PipelineError> {
    variable_name(source, written, name, "secret", "list variable names, not values: letters, digits and '_', not starting with a digit, e.g. secrets = [\"NPM_TOKEN\"]")
}

/// An `env_inputs` entry: `name` (after matrix substitution) if it can
/// name an environment variable.
pub(super) fn env_input_name(
    source: &Source,
    written: &Spanned<String>,
    name: String,
) -> Result<String, PipelineError> {
    variable_name(source, written, name, "env input", "list the names of variables the command reads: letters, digits and '_', not starting with a digit, e.g. env_inputs = [\"RUSTFLAGS\"]")
}

/// `name` if it matches `[A-Za-z_][A-Za-z0-9_]*`; `what` names the key in
/// the refusal.
fn variable_name(
    source: &Source,
    written: &Spanned<String>,
    name: String,
    what: &str,
    help: &str,
) -> Result<String, PipelineError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(source
            .error(
                written.span(),
                format!("{what} {name:?} is not an environment variable name"),
            )
            .help(help))
    }
}

pub(super) fn check_name(source: &Source, name: &Spanned<String>) -> Result<(), PipelineError> {
    let ok = !name.get_ref().is_empty()
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(source
            .error(
                name.span(),
                format!("module name {:?} is not allowed", name.get_ref()),
            )
            .help("use letters, digits, '_' and '-' only"))
    }
}

/// A `produces` entry: a relative glob, `?` first if it may match nothing.
pub(super) fn produced(
    source: &Source,
    written: &Spanned<String>,
    text: String,
) -> Result<String, PipelineError> {
    let pattern = text.strip_prefix('?').unwrap_or(&text);
    artifact_glob(source, written, pattern, "produces")?;
    Ok(text)
}

/// A `consumes` entry: `MODULE` (every artifact it produced) or
/// `MODULE:GLOB` (those whose path matches), where MODULE is a need.
pub(super) fn consumed(
    source: &Source,
    name: &str,
    written: &Spanned<String>,
    needs: &[Spanned<String>],
) -> Result<(String, Option<ArtifactGlob>), PipelineError> {
    let text = written.get_ref();
    let (from, glob) = match text.split_once(':') {
        Some((from, glob)) => (from, Some(glob)),
        None => (text.as_str(), None),
    };
    if !needs.iter().any(|n| n.get_ref() == from) {
        let listed: Vec<&str> = needs.iter().map(|n| n.get_ref().as_str()).collect();
        return Err(source
            .error(
                written.span(),
                format!("module '{name}' consumes '{from}', which is not among its needs"),
            )
            .help(if listed.is_empty() {
                format!("add needs = [\"{from}\"]: a module can only consume what finished before it started")
            } else {
                format!(
                    "add '{from}' to needs (now {}): a module can only consume what finished before it started",
                    listed.join(", ")
                )
            }));
    }
    let glob = match glob {
        Some(glob) => Some(artifact_glob(source, written, glob, "consumes")?),
        None => None,
    };
    Ok((from.to_owned(), glob))
}

/// Compiles a glob over artifact paths ([`crate::glob`]) once checked to
/// be relative and inside the module's folder.
fn artifact_glob(
    source: &Source,
    written: &Spanned<String>,
    pattern: &str,
    key: &str,
) -> Result<ArtifactGlob, PipelineError> {
    let outside = pattern.starts_with('/') || pattern.split(['/', '\\']).any(|part| part == "..");
    if pattern.is_empty() || outside {
        return Err(source
            .error(
                written.span(),
                format!("{key} path {pattern:?} is not a path inside the module's folder"),
            )
            .help("write a path relative to the module's cwd, without '..', e.g. \"target/release/app\" or \"dist/**/*.tar.gz\""));
    }
    ArtifactGlob::new(pattern).map_err(|e| {
        source
            .error(
                written.span(),
                format!("{key} glob {pattern:?} is not valid: {e}"),
            )
            .help("'*' matches within a folder, '**' across folders, e.g. \"dist/**/*.tar.gz\"")
    })
}

/// An `inputs` list: each entry read by `read` (which substitutes the
/// matrix) and checked by [`input`]. A list of exclusions only would match
/// no file; an empty list means the module has no inputs.
pub(super) fn inputs(
    source: &Source,
    list: &Spanned<Vec<Spanned<String>>>,
    mut read: impl FnMut(&Spanned<String>) -> Result<String, PipelineError>,
) -> Result<Vec<String>, PipelineError> {
    let mut patterns = Vec::with_capacity(list.get_ref().len());
    for written in list.get_ref() {
        let text = read(written)?;
        patterns.push(input(source, written, text)?);
    }
    if !patterns.is_empty() && patterns.iter().all(|p| p.starts_with('!')) {
        return Err(source
            .error(
                list.span(),
                "inputs lists only exclusions ('!'), so no file goes in",
            )
            .help(
                "list the files that go in first, e.g. inputs = [\"src/**\", \"!src/**/*.md\"]",
            ));
    }
    Ok(patterns)
}

/// An `inputs` entry: a glob over files relative to the module's cwd, in
/// the dialect of [`crate::glob`], `!` first to leave out what it matches.
/// Kept as written.
fn input(
    source: &Source,
    written: &Spanned<String>,
    text: String,
) -> Result<String, PipelineError> {
    let pattern = text.strip_prefix('!').unwrap_or(&text);
    let refuse = |message: String, help: &str| source.error(written.span(), message).help(help);
    if pattern.is_empty() {
        return Err(refuse(
            format!("input {text:?} is empty"),
            "write a glob relative to the module's cwd, e.g. \"src/**\", or \"!src/**/*.md\" to leave files out",
        ));
    }
    if pattern.starts_with(['/', '\\']) {
        return Err(refuse(
            format!("input {pattern:?} is an absolute path"),
            "write a glob relative to the module's cwd, e.g. \"src/**\" or \"Cargo.lock\"",
        ));
    }
    if pattern.split(['/', '\\']).any(|part| part == "..") {
        return Err(refuse(
            format!("input {pattern:?} has a '..' part, reaching outside the repository"),
            "write a glob relative to the module's cwd, without '..'; for files above it, give the module a higher cwd",
        ));
    }
    match crate::glob::compile(pattern) {
        Ok(_) => Ok(text),
        Err(e) => Err(refuse(
            format!("input glob {pattern:?} is not valid: {}", e.kind()),
            "'*' matches within a folder, '**' across folders, e.g. \"src/**/*.rs\"",
        )),
    }
}

pub(super) fn cwd(source: &Source, text: &Spanned<String>) -> Result<String, PipelineError> {
    let path = text.get_ref();
    if path.starts_with('/') || path.split(['/', '\\']).any(|part| part == "..") {
        return Err(source
            .error(
                text.span(),
                format!("cwd {path:?} leaves the pipeline's folder"),
            )
            .help("write a path relative to the folder of the pipeline file, without '..'"));
    }
    Ok(if path.is_empty() {
        ".".into()
    } else {
        path.clone()
    })
}

#[cfg(test)]
mod tests {
    use crate::pipeline::check::check_error;
    use crate::pipeline::parse_pipeline;

    #[test]
    fn bad_values_are_refused_where_written() {
        check_error(
            "[modules.a]\nrun = \"x\"\ntimeout = \"10 parsecs\"\n",
            3,
            11,
            "bad duration",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\ncwd = \"../up\"\n",
            3,
            7,
            "leaves",
        );
        check_error(
            "[defaults]\ntimeout = \"0s\"\n[modules.a]\nrun = \"x\"\n",
            2,
            11,
            "zero",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\ntimeout = \"18446744073709552s\"\n",
            3,
            11,
            "longer than 30 days",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nretries = 1000\n",
            3,
            11,
            "more than the 100 allowed",
        );
    }

    #[test]
    fn artifact_paths_stay_inside_and_consumes_follow_needs() {
        check_error(
            "[modules.a]\nrun = \"x\"\nproduces = [\"../secret\"]\n",
            3,
            13,
            "produces path \"../secret\" is not a path inside the module's folder",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nproduces = [\"?/etc/passwd\"]\n",
            3,
            13,
            "is not a path inside the module's folder",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nproduces = [\"dist/[a\"]\n",
            3,
            13,
            "produces glob \"dist/[a\" is not valid",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\n[modules.b]\nrun = \"y\"\nconsumes = [\"a\"]\n",
            5,
            13,
            "module 'b' consumes 'a', which is not among its needs",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\n[modules.b]\nrun = \"y\"\nneeds = [\"a\"]\nconsumes = [\"a:../x\"]\n",
            6,
            13,
            "consumes path \"../x\" is not a path inside",
        );
    }

    #[test]
    fn inputs_are_relative_globs_that_let_something_in() {
        let module = |line: &str| format!("[modules.a]\nrun = \"x\"\n{line}\n");
        let cases = [
            (
                r#"inputs = ["/etc/**"]"#,
                11,
                "input \"/etc/**\" is an absolute path",
            ),
            (r#"inputs = ["src/**", "!\\x"]"#, 21, "is an absolute path"),
            (
                r#"inputs = ["../Cargo.lock"]"#,
                11,
                "has a '..' part, reaching outside the repository",
            ),
            (
                r#"inputs = ["src/**", "!src/../../x"]"#,
                21,
                "reaching outside the repository",
            ),
            (
                r#"inputs = ["src/[a"]"#,
                11,
                "input glob \"src/[a\" is not valid: unclosed character class",
            ),
            (r#"inputs = [""]"#, 11, "input \"\" is empty"),
            (r#"inputs = ["src/**", "!"]"#, 21, "input \"!\" is empty"),
            (
                r#"inputs = ["!*.md", "!*.txt"]"#,
                10,
                "inputs lists only exclusions",
            ),
            (r#"inputs = "src/**""#, 10, "expected a sequence"),
            ("cache = \"no\"", 9, "expected a boolean"),
            (
                "cache = true",
                9,
                "module 'a' sets cache = true but has no inputs",
            ),
            (
                r#"env_inputs = ["RUST-FLAGS"]"#,
                15,
                "env input \"RUST-FLAGS\" is not an environment variable name",
            ),
            (
                r#"matrix = { k = ["a"] }
inputs = ["src/${matrix.nope}"]"#,
                11,
                "unknown matrix key 'nope'",
            ),
        ];
        for (line, column, needle) in cases {
            let row = if line.contains('\n') { 4 } else { 3 };
            check_error(&module(line), row, column, needle);
        }
        check_error(
            "[defaults]\ninputs = [\"src/${matrix.os}/**\"]\n[modules.a]\nrun = \"x\"\n",
            2,
            11,
            "[defaults] inputs cannot use ${matrix.KEY}",
        );
        check_error(
            "[defaults]\ninputs = [\"!x\"]\n[modules.a]\nrun = \"x\"\n",
            2,
            10,
            "only exclusions",
        );
        check_error(
            "[defaults]\nenv_inputs = [\"1CC\"]\n[modules.a]\nrun = \"x\"\n",
            2,
            15,
            "env input \"1CC\" is not",
        );
        // With inputs from the defaults, `cache = true` is no mistake.
        parse_pipeline(
            "m.toml",
            "[defaults]\ninputs = [\"src/**\"]\n[modules.a]\nrun = \"x\"\ncache = true\n",
        )
        .unwrap();
    }

    #[test]
    fn secrets_must_be_variable_names() {
        check_error(
            "[modules.a]\nrun = \"x\"\nsecrets = [\"OK\", \"NPM-TOKEN\"]\n",
            3,
            18,
            "secret \"NPM-TOKEN\" is not an environment variable name",
        );
        check_error(
            "[defaults]\nsecrets = [\"1TOKEN\"]\n[modules.a]\nrun = \"x\"\n",
            2,
            12,
            "not an environment variable name",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nsecrets = [\"\"]\n",
            3,
            12,
            "secret \"\" is not",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { k = [\"a-b\"] }\nsecrets = [\"T_${matrix.k}\"]\n",
            4,
            12,
            "secret \"T_a-b\" is not",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nsecrets = \"NPM_TOKEN\"\n",
            3,
            11,
            "expected a sequence",
        );
        let error = parse_pipeline(
            "m.toml",
            "[modules.a]\nrun = \"x\"\nsecrets = [\"$TOKEN\"]\n",
        )
        .unwrap_err();
        assert!(error.help.unwrap().contains("NPM_TOKEN"));
    }
}
