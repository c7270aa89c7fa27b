//! The pipeline file's shape as serde reads it: every value keeps its
//! span, so a later check can point at it. Unknown keys are refused here,
//! by serde, with the key's position.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file: `[defaults]` and one `[modules.NAME]` table per module.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default)]
    pub(super) modules: BTreeMap<Spanned<String>, RawModule>,
}

/// `[defaults]`: what a module takes when it sets none of its own.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<u32>>,
    pub(super) shell: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) secrets: Vec<Spanned<String>>,
    pub(super) inputs: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) cache: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) env_inputs: Vec<Spanned<String>>,
}

/// `[modules.NAME]`, as written (before matrix substitution).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of module settings, such as [modules.build] with run = \"make\""
)]
pub(super) struct RawModule {
    /// Required, except on a pure approval gate.
    pub(super) run: Option<Spanned<String>>,
    pub(super) shell: Option<Spanned<String>>,
    pub(super) cwd: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) needs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) requires: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) produces: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) consumes: Vec<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<u32>>,
    pub(super) matrix: Option<Spanned<RawMatrix>>,
    /// `None` takes `[defaults] inputs`; `Some([])` means none.
    pub(super) inputs: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) cache: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) env_inputs: Vec<Spanned<String>>,
    pub(super) approval: Option<Spanned<RawApproval>>,
    /// A command that undoes what `run` did, run when the run fails later.
    pub(super) compensate: Option<Spanned<String>>,
}

/// `approval = { prompt = "...", approvers = [...], timeout = "2h",
/// on_timeout = "fail", inputs = [...], not = [...] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    pub(super) prompt: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) approvers: Vec<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) on_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) inputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) not: Vec<Spanned<String>>,
}

/// `matrix = { key = [values...] }`, each part with its place in the file.
pub(super) type RawMatrix = BTreeMap<String, Spanned<Vec<MatrixValue>>>;

/// One value in a matrix list; each becomes text in instance names.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string, an integer or a boolean")]
pub(super) enum MatrixValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl MatrixValue {
    /// The value as it appears in instance ids and `${matrix.KEY}`.
    pub(super) fn to_text(&self) -> String {
        match self {
            MatrixValue::Text(s) => s.clone(),
            MatrixValue::Integer(i) => i.to_string(),
            MatrixValue::Bool(b) => b.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::check::check_error;

    #[test]
    fn the_file_shape_is_refused_where_written() {
        check_error(
            "[modules.a]\nrun = \"x\"\nrnu = 1\n",
            3,
            1,
            "unknown field `rnu`",
        );
        check_error(
            "[modules.a]\nshell = \"sh\"\n",
            1,
            10,
            "module 'a' has no `run`",
        );
        check_error("[project]\nname = 1\n", 1, 2, "unknown field `project`");
        check_error("[modules.a\n", 1, 11, "");
        check_error("[modules]\na = 5\n", 2, 5, "a table of module settings");
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [1.5] }\n",
            3,
            16,
            "a string, an integer or a boolean",
        );
    }
}
