//! The pipeline file (`muster.toml`): parsing, validation and matrix
//! expansion into a [`Plan`]. Every refusal names the file, line and column
//! and says what to write instead, before anything runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::plan::{Consume, Plan, PlannedModule};

/// The timeout of a module that sets none, nor `[defaults] timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The shell of a module that sets none.
pub const DEFAULT_SHELL: &str = "sh";

/// A pipeline file that cannot run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to write instead, when there is something to say.
    pub help: Option<String>,
    /// The offending source line, for display.
    pub source_line: String,
    /// How many characters of `source_line` to underline from `column`.
    pub width: usize,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        let gutter = self.line.to_string().len();
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(
            f,
            "{:gutter$} | {}{}",
            "",
            " ".repeat(self.column.saturating_sub(1)),
            "^".repeat(self.width.max(1))
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n{:gutter$} = help: {help}", "")?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    modules: BTreeMap<Spanned<String>, RawModule>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    shell: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of module settings, such as [modules.build] with run = \"make\""
)]
struct RawModule {
    run: Spanned<String>,
    shell: Option<Spanned<String>>,
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    needs: Vec<Spanned<String>>,
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    #[serde(default)]
    produces: Vec<Spanned<String>>,
    #[serde(default)]
    consumes: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    matrix: Option<Spanned<RawMatrix>>,
}

/// `matrix = { key = [values...] }`, each part with its place in the file.
type RawMatrix = BTreeMap<String, Spanned<Vec<MatrixValue>>>;

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string, an integer or a boolean")]
enum MatrixValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl MatrixValue {
    fn to_text(&self) -> String {
        match self {
            MatrixValue::Text(s) => s.clone(),
            MatrixValue::Integer(i) => i.to_string(),
            MatrixValue::Bool(b) => b.to_string(),
        }
    }
}

/// Carries the file name and text so errors can point into it.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PipelineError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let source_line = self.text[line_start..line_end].trim_end_matches('\r');
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        PipelineError {
            file: self.file.to_owned(),
            line: self.text[..start].matches('\n').count() + 1,
            column,
            message: message.into(),
            help: None,
            source_line: source_line.to_owned(),
            width: self.text[start..end].chars().count(),
        }
    }
}

trait Help {
    fn help(self, help: impl Into<String>) -> Self;
}

impl Help for PipelineError {
    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Parses, validates and expands a pipeline file. `file` is only used to
/// name the file in errors.
pub fn parse_pipeline(file: &str, text: &str) -> Result<Plan, PipelineError> {
    let source = Source { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end().to_owned();
        let help = toml_help(&message);
        let error = source.error(span, message);
        match help {
            Some(h) => error.help(h),
            None => error,
        }
    })?;
    if raw.modules.is_empty() {
        return Err(source
            .error(0..0, "the pipeline defines no modules")
            .help("add a module, e.g.\n[modules.build]\nrun = \"make\""));
    }
    let defaults = Defaults::read(&source, raw.defaults)?;
    let mut modules: Vec<(Spanned<String>, RawModule)> = raw.modules.into_iter().collect();
    // File order, so the plan (and `muster validate`) reads like the file.
    modules.sort_by_key(|(name, _)| name.span().start);
    for (name, _) in &modules {
        check_name(&source, name)?;
    }
    let order = topological_order(&source, &modules)?;
    expand(&source, &defaults, modules, &order)
}

fn toml_help(message: &str) -> Option<String> {
    if message.ends_with("expected a string") {
        Some(
            "write this value as a string in quotes, e.g. timeout = \"30s\" or run = \"make test\""
                .into(),
        )
    } else if message.ends_with("expected a sequence") {
        Some("write a list in brackets, e.g. needs = [\"build\"]".into())
    } else if message.starts_with("unknown field") {
        Some("check the spelling; the pipeline file reference in README.md lists every key".into())
    } else if message.contains("missing field `run`") {
        Some("every module needs a command: run = \"...\"".into())
    } else {
        None
    }
}

struct Defaults {
    timeout: Duration,
    retries: u32,
    shell: Vec<String>,
    env: BTreeMap<String, String>,
    secrets: Vec<String>,
}

impl Defaults {
    fn read(source: &Source, raw: RawDefaults) -> Result<Defaults, PipelineError> {
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
        })
    }
}

/// The longest timeout accepted; anything longer is surely a typo.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The most retries a module may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The most instances one module's matrix may expand into.
pub const MAX_MATRIX: usize = 10_000;

fn retries(source: &Source, value: &Spanned<u32>) -> Result<u32, PipelineError> {
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

fn duration(source: &Source, text: &Spanned<String>) -> Result<Duration, PipelineError> {
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

fn shell(source: &Source, text: &Spanned<String>) -> Result<Vec<String>, PipelineError> {
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

/// `name` (the text of `written`, after matrix substitution) if it can name
/// an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
fn secret_name(
    source: &Source,
    written: &Spanned<String>,
    name: String,
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
                format!("secret {name:?} is not an environment variable name"),
            )
            .help("list variable names, not values: letters, digits and '_', not starting with a digit, e.g. secrets = [\"NPM_TOKEN\"]"))
    }
}

fn check_name(source: &Source, name: &Spanned<String>) -> Result<(), PipelineError> {
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

/// Kahn's algorithm over the named modules (not the expanded instances: an
/// instance graph has a cycle exactly when its module graph has one). Runs
/// in linear time and without recursion, so large generated pipelines work.
fn topological_order(
    source: &Source,
    modules: &[(Spanned<String>, RawModule)],
) -> Result<Vec<usize>, PipelineError> {
    let index: HashMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.get_ref().as_str(), i))
        .collect();
    let mut needs: Vec<Vec<usize>> = Vec::with_capacity(modules.len());
    for (name, module) in modules {
        let mut resolved = Vec::with_capacity(module.needs.len());
        for need in &module.needs {
            let Some(&i) = index.get(need.get_ref().as_str()) else {
                return Err(source
                    .error(
                        need.span(),
                        format!(
                            "module '{}' needs '{}', which is not defined",
                            name.get_ref(),
                            need.get_ref()
                        ),
                    )
                    .help(suggest(need.get_ref(), modules)));
            };
            if !resolved.contains(&i) {
                resolved.push(i);
            }
        }
        needs.push(resolved);
    }
    let mut dependents = vec![Vec::new(); modules.len()];
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    for (i, list) in needs.iter().enumerate() {
        for &n in list {
            dependents[n].push(i);
        }
    }
    // Among modules whose needs are placed, the earliest in the file goes
    // first, so the plan keeps the file's order wherever the DAG allows.
    let mut free: BinaryHeap<Reverse<usize>> = (0..modules.len())
        .filter(|&i| waiting[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(modules.len());
    while let Some(Reverse(done)) = free.pop() {
        order.push(done);
        for &d in &dependents[done] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                free.push(Reverse(d));
            }
        }
    }
    if order.len() == modules.len() {
        return Ok(order);
    }
    // Every module left waits on another module left: walk those edges
    // until one repeats, and that walk is a cycle.
    let start = (0..modules.len())
        .find(|&i| waiting[i] > 0)
        .expect("a module is left");
    let mut path = vec![start];
    let mut seen = HashMap::from([(start, 0usize)]);
    let mut current = start;
    loop {
        let next = *needs[current]
            .iter()
            .find(|&&n| waiting[n] > 0)
            .expect("a waiting module waits on a waiting module");
        if let Some(&at) = seen.get(&next) {
            let cycle: Vec<usize> = path[at..].to_vec();
            let first = cycle[0];
            let second = *cycle.get(1).unwrap_or(&first);
            let names: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&first))
                .map(|&i| modules[i].0.get_ref().as_str())
                .collect();
            let need = modules[first]
                .1
                .needs
                .iter()
                .find(|n| n.get_ref() == modules[second].0.get_ref())
                .expect("the cycle follows a need");
            let message = if cycle.len() == 1 {
                format!("module '{}' needs itself", names[0])
            } else {
                format!("needs form a cycle: {}", names.join(" -> "))
            };
            return Err(source
                .error(need.span(), message)
                .help("remove one of these needs so the modules can run in order"));
        }
        seen.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

fn suggest(missing: &str, modules: &[(Spanned<String>, RawModule)]) -> String {
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.get_ref().as_str()).collect();
    let close = names
        .iter()
        .find(|n| edit_distance(n, missing) <= 2)
        .map(|n| format!("did you mean '{n}'? "))
        .unwrap_or_default();
    format!("{close}defined modules: {}", names.join(", "))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// One combination of matrix values, keys sorted.
type Combination = BTreeMap<String, String>;

fn expand(
    source: &Source,
    defaults: &Defaults,
    modules: Vec<(Spanned<String>, RawModule)>,
    order: &[usize],
) -> Result<Plan, PipelineError> {
    let names: Vec<String> = modules.iter().map(|(n, _)| n.get_ref().clone()).collect();
    let mut slots: Vec<Option<RawModule>> = modules.into_iter().map(|(_, m)| Some(m)).collect();
    // Instance indexes of each named module, filled as modules are placed.
    let mut instances: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut planned = Vec::new();
    for &m in order {
        let raw = slots[m].take().expect("each module is placed once");
        let name = &names[m];
        let combinations = combinations(source, name, raw.matrix.as_ref())?;
        let mut needs = Vec::new();
        for need in &raw.needs {
            for &i in &instances[index[need.get_ref().as_str()]] {
                if !needs.contains(&i) {
                    needs.push(i);
                }
            }
        }
        let timeout = match &raw.timeout {
            Some(t) => duration(source, t)?,
            None => defaults.timeout,
        };
        let shell = match &raw.shell {
            Some(s) => shell(source, s)?,
            None => defaults.shell.clone(),
        };
        let retries = match &raw.retries {
            Some(r) => retries(source, r)?,
            None => defaults.retries,
        };
        let cwd = match &raw.cwd {
            Some(c) => cwd(source, c)?,
            None => ".".to_owned(),
        };
        let mut consumes = Vec::new();
        for written in &raw.consumes {
            let (from, glob) = consumed(source, name, written, &raw.needs)?;
            for &i in &instances[index[from.as_str()]] {
                consumes.push(Consume {
                    from: i,
                    glob: glob.clone(),
                });
            }
        }
        for combination in combinations {
            let sub = |text: &Spanned<String>| substitute(source, name, text, &combination);
            let mut env = defaults.env.clone();
            for (key, value) in &raw.env {
                env.insert(key.clone(), sub(value)?);
            }
            let requires = raw.requires.iter().map(sub).collect::<Result<_, _>>()?;
            let mut secrets = defaults.secrets.clone();
            for written in &raw.secrets {
                let name = secret_name(source, written, sub(written)?)?;
                if !secrets.contains(&name) {
                    secrets.push(name);
                }
            }
            let produces = raw
                .produces
                .iter()
                .map(|written| produced(source, written, sub(written)?))
                .collect::<Result<Vec<_>, _>>()?;
            let id = if combination.is_empty() {
                name.clone()
            } else {
                let pairs: Vec<String> = combination
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{name}[{}]", pairs.join(","))
            };
            instances[m].push(planned.len());
            planned.push(PlannedModule {
                id,
                name: name.clone(),
                run: sub(&raw.run)?,
                shell: shell.clone(),
                cwd: cwd.clone(),
                env,
                needs: needs.clone(),
                requires,
                secrets,
                produces,
                consumes: consumes.clone(),
                timeout,
                retries,
                matrix: combination,
            });
        }
    }
    Ok(Plan::from_ordered(planned))
}

/// A `produces` entry: a relative glob, `?` first if it may match nothing.
fn produced(
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
fn consumed(
    source: &Source,
    name: &str,
    written: &Spanned<String>,
    needs: &[Spanned<String>],
) -> Result<(String, Option<String>), PipelineError> {
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
    if let Some(glob) = glob {
        artifact_glob(source, written, glob, "consumes")?;
    }
    Ok((from.to_owned(), glob.map(str::to_owned)))
}

/// Checks a glob over artifact paths: relative, inside the module's folder,
/// and one `globset` accepts.
fn artifact_glob(
    source: &Source,
    written: &Spanned<String>,
    pattern: &str,
    key: &str,
) -> Result<(), PipelineError> {
    let outside = pattern.starts_with('/') || pattern.split(['/', '\\']).any(|part| part == "..");
    if pattern.is_empty() || outside {
        return Err(source
            .error(
                written.span(),
                format!("{key} path {pattern:?} is not a path inside the module's folder"),
            )
            .help("write a path relative to the module's cwd, without '..', e.g. \"target/release/app\" or \"dist/**/*.tar.gz\""));
    }
    globset::Glob::new(pattern).map_err(|e| {
        source
            .error(
                written.span(),
                format!("{key} glob {pattern:?} is not valid: {e}"),
            )
            .help("'*' matches within a folder, '**' across folders, e.g. \"dist/**/*.tar.gz\"")
    })?;
    Ok(())
}

fn cwd(source: &Source, text: &Spanned<String>) -> Result<String, PipelineError> {
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

fn combinations(
    source: &Source,
    name: &str,
    matrix: Option<&Spanned<RawMatrix>>,
) -> Result<Vec<Combination>, PipelineError> {
    let Some(matrix) = matrix else {
        return Ok(vec![Combination::new()]);
    };
    if matrix.get_ref().is_empty() {
        return Err(source
            .error(matrix.span(), format!("module '{name}' has an empty matrix"))
            .help("give each matrix key a list of values, e.g. matrix = { shard = [\"1\", \"2\"] }, or remove it"));
    }
    let size = matrix
        .get_ref()
        .values()
        .try_fold(1usize, |n, values| n.checked_mul(values.get_ref().len()))
        .unwrap_or(usize::MAX);
    if size > MAX_MATRIX {
        return Err(source
            .error(matrix.span(), format!("the matrix of '{name}' expands into {size} instances, more than the {MAX_MATRIX} allowed"))
            .help("split the module, or list fewer values"));
    }
    let mut all = vec![Combination::new()];
    for (key, values) in matrix.get_ref() {
        let bad = |message: String| {
            source
                .error(values.span(), message)
                .help("matrix keys and values become part of instance names like test[os=linux,shard=1]: use each value once, without ',', '=', '[' or ']'")
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || key.is_empty()
        {
            return Err(bad(format!(
                "matrix key {key:?} of module '{name}' may only hold letters, digits, '_' and '-'"
            )));
        }
        if values.get_ref().is_empty() {
            return Err(source
                .error(
                    values.span(),
                    format!("matrix key '{key}' of module '{name}' has no values"),
                )
                .help("list at least one value, or remove the key"));
        }
        let values: Vec<String> = values.get_ref().iter().map(MatrixValue::to_text).collect();
        for (i, value) in values.iter().enumerate() {
            if value.is_empty() || value.contains([',', '=', '[', ']']) {
                return Err(bad(format!(
                    "matrix value {value:?} of key '{key}' cannot be part of an instance name"
                )));
            }
            if values[..i].contains(value) {
                return Err(bad(format!(
                    "matrix key '{key}' of module '{name}' lists {value:?} twice"
                )));
            }
        }
        all = all
            .into_iter()
            .flat_map(|combination| {
                values.iter().map(move |value| {
                    let mut next = combination.clone();
                    next.insert(key.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    Ok(all)
}

/// Replaces `${matrix.KEY}`; every other `${...}` is left for the shell.
fn substitute(
    source: &Source,
    name: &str,
    text: &Spanned<String>,
    combination: &Combination,
) -> Result<String, PipelineError> {
    const OPEN: &str = "${matrix.";
    let mut out = String::new();
    let mut rest = text.get_ref().as_str();
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(close) = after.find('}') else {
            return Err(source
                .error(text.span(), "unclosed ${matrix. reference")
                .help("write ${matrix.KEY}"));
        };
        let key = &after[..close];
        match combination.get(key) {
            Some(value) => out.push_str(value),
            None => {
                let known: Vec<&str> = combination.keys().map(String::as_str).collect();
                let help = if known.is_empty() {
                    format!("module '{name}' has no matrix; add matrix = {{ {key} = [...] }}")
                } else {
                    format!("the matrix of '{name}' has: {}", known.join(", "))
                };
                return Err(source
                    .error(
                        text.span(),
                        format!("unknown matrix key '{key}' in ${{matrix.{key}}}"),
                    )
                    .help(help));
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        parse_pipeline("muster.toml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Checks that `text` is refused at `line:column` with a message that
    /// contains `needle`.
    fn check_error(text: &str, line: usize, column: usize, needle: &str) {
        let error = parse_pipeline("muster.toml", text).expect_err("should be refused");
        assert!(
            error.message.contains(needle),
            "message {:?} lacks {needle:?}",
            error.message
        );
        assert_eq!(
            (error.line, error.column),
            (line, column),
            "position of {error}"
        );
        assert!(error
            .to_string()
            .starts_with(&format!("muster.toml:{line}:{column}: ")));
    }

    #[test]
    fn expands_matrix_and_orders_topologically() {
        let plan = plan(
            r#"
[defaults]
timeout = "10m"
env = { CI = "1" }

[modules.test]
run = "test --shard ${matrix.shard} ${HOME}"
needs = ["build"]
matrix = { shard = ["1", "2"], os = ["linux"] }
env = { SHARD = "${matrix.shard}" }
requires = ["os:${matrix.os}"]

[modules.build]
run = "make"
shell = "bash -e"
timeout = "90s"
retries = 2
"#,
        );
        let ids: Vec<&str> = plan.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["build", "test[os=linux,shard=1]", "test[os=linux,shard=2]"]
        );
        let build = &plan.modules[0];
        assert_eq!(build.shell, ["bash", "-e", "-c"]);
        assert_eq!(build.timeout, Duration::from_secs(90));
        assert_eq!(build.retries, 2);
        let shard2 = &plan.modules[2];
        assert_eq!(shard2.run, "test --shard 2 ${HOME}");
        assert_eq!(shard2.env["SHARD"], "2");
        assert_eq!(shard2.env["CI"], "1");
        assert_eq!(shard2.requires, ["os:linux"]);
        assert_eq!(shard2.needs, [0]);
        assert_eq!(shard2.timeout, Duration::from_secs(600));
        assert_eq!(shard2.shell, ["sh", "-c"]);
        assert_eq!(plan.dependents(0), [1, 2]);
    }

    #[test]
    fn needs_on_a_matrix_module_wait_for_every_instance() {
        let plan = plan(
            r#"
[modules.a]
run = "x"
matrix = { n = [1, 2, 3] }
[modules.b]
run = "y"
needs = ["a"]
"#,
        );
        assert_eq!(plan.modules[3].id, "b");
        assert_eq!(plan.modules[3].needs, [0, 1, 2]);
        assert_eq!(plan.modules[0].id, "a[n=1]");
    }

    #[test]
    fn refusals_name_line_and_column() {
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"b\"]\n",
            3,
            10,
            "needs 'b', which is not defined",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"b\"]\n[modules.b]\nrun = \"y\"\nneeds = [\"a\"]\n",
            3,
            10,
            "cycle: a -> b -> a",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"a\"]\n",
            3,
            10,
            "needs itself",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nrnu = 1\n",
            3,
            1,
            "unknown field `rnu`",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\ntimeout = \"10 parsecs\"\n",
            3,
            11,
            "bad duration",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = {}\n",
            3,
            10,
            "empty matrix",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { k = [] }\n",
            3,
            16,
            "has no values",
        );
        check_error(
            "[modules.a]\nrun = \"echo ${matrix.nope}\"\nmatrix = { k = [1] }\n",
            2,
            7,
            "unknown matrix key 'nope'",
        );
        check_error("[modules.a]\nshell = \"sh\"\n", 1, 1, "missing field `run`");
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
        check_error("[project]\nname = 1\n", 1, 2, "unknown field `project`");
        check_error("# nothing\n", 1, 1, "no modules");
        check_error("[modules.a\n", 1, 11, "");
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [1, \"1\"] }\n",
            3,
            16,
            "lists \"1\" twice",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [\"a,b\"] }\n",
            3,
            16,
            "cannot be part of an instance name",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { a = [1,2,3,4,5,6,7,8,9,10], b = [1,2,3,4,5,6,7,8,9,10], c = [1,2,3,4,5,6,7,8,9,10], d = [1,2,3,4,5,6,7,8,9,10], e = [1,2] }\n",
            3,
            10,
            "expands into 20000 instances",
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
        check_error("[modules]\na = 5\n", 2, 5, "a table of module settings");
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [1.5] }\n",
            3,
            16,
            "a string, an integer or a boolean",
        );
    }

    #[test]
    fn secrets_merge_defaults_and_expand_through_the_matrix() {
        let plan = plan(
            r#"
[defaults]
secrets = ["NPM_TOKEN", "_X1", "NPM_TOKEN"]

[modules.deploy]
run = "deploy"
matrix = { env = ["PROD", "STAGING"] }
secrets = ["AWS_SECRET_ACCESS_KEY", "NPM_TOKEN", "KEY_${matrix.env}"]

[modules.lint]
run = "lint"
"#,
        );
        assert_eq!(
            plan.modules[0].secrets,
            ["NPM_TOKEN", "_X1", "AWS_SECRET_ACCESS_KEY", "KEY_PROD"]
        );
        assert_eq!(plan.modules[1].secrets[3], "KEY_STAGING");
        assert_eq!(plan.modules[2].secrets, ["NPM_TOKEN", "_X1"]);
    }

    #[test]
    fn produces_and_consumes_name_files_and_needs() {
        let plan = plan(
            r#"
[modules.build]
matrix = { arch = ["x86", "arm"] }
run = "make"
produces = ["target/${matrix.arch}/app", "?dist/**/*.tar.gz"]
[modules.docs]
run = "doc"
produces = ["site/**"]
[modules.test]
needs = ["build", "docs"]
consumes = ["build", "docs:site/*.html"]
run = "test"
"#,
        );
        assert_eq!(
            plan.modules[0].produces,
            ["target/x86/app", "?dist/**/*.tar.gz"]
        );
        let test = &plan.modules[plan.index_of("test").unwrap()];
        let from: Vec<(&str, Option<&str>)> = test
            .consumes
            .iter()
            .map(|c| (plan.modules[c.from].id.as_str(), c.glob.as_deref()))
            .collect();
        assert_eq!(
            from,
            [
                ("build[arch=x86]", None),
                ("build[arch=arm]", None),
                ("docs", Some("site/*.html"))
            ]
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

    #[test]
    fn wrong_types_say_what_to_write() {
        check_error(
            "[modules.a]\nrun = \"x\"\ntimeout = 30\n",
            3,
            11,
            "expected a string",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = \"b\"\n",
            3,
            9,
            "expected a sequence",
        );
        let error =
            parse_pipeline("m.toml", "[modules.a]\nrun = \"x\"\ntimeout = 30\n").unwrap_err();
        assert!(error.help.unwrap().contains("timeout = \"30s\""));
    }

    #[test]
    fn suggests_close_names() {
        let error = parse_pipeline(
            "p.toml",
            "[modules.build]\nrun = \"x\"\n[modules.test]\nrun = \"y\"\nneeds = [\"biuld\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            error.help.as_deref(),
            Some("did you mean 'build'? defined modules: build, test")
        );
        let shown = error.to_string();
        assert!(shown.contains("5 | needs = [\"biuld\"]"), "{shown}");
        assert!(shown.contains("^^^^^^^"), "{shown}");
    }

    #[test]
    fn long_chains_plan_without_recursion() {
        let mut text = String::from("[modules.m0]\nrun = \"true\"\n");
        for i in 1..20_000 {
            text.push_str(&format!(
                "[modules.m{i}]\nrun = \"true\"\nneeds = [\"m{}\"]\n",
                i - 1
            ));
        }
        let plan = plan(&text);
        assert_eq!(plan.len(), 20_000);
        assert_eq!(plan.modules[19_999].needs, [19_998]);
    }
}
