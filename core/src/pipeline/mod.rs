//! The pipeline file (`muster.toml`): parsing, validation and matrix
//! expansion into a [`Plan`]. Every refusal names the file, line and column
//! and says what to write instead, before anything runs.
//!
//! [`parse_pipeline`] runs the steps in order, one file each:
//! - `raw`: the TOML shape serde reads, every value with its span;
//! - `error`: [`PipelineError`] and the span → line:column mapping;
//! - `fields`: checks of single values and the `[defaults]`;
//! - `order`: needs resolved, modules in dependency order, cycles refused;
//! - `expand`: matrix instances, substitution, the [`Plan`].

mod error;
mod expand;
mod fields;
mod gate;
mod order;
mod raw;

use toml::Spanned;

pub use error::PipelineError;
pub use expand::MAX_MATRIX;
pub use fields::{DEFAULT_SHELL, DEFAULT_TIMEOUT, MAX_RETRIES, MAX_TIMEOUT};
pub(crate) use order::edit_distance;

use crate::plan::Plan;
use error::Source;
use fields::{check_name, Defaults};
use raw::{RawFile, RawModule};

/// Parses, validates and expands a pipeline file. `file` is only used to
/// name the file in errors.
pub fn parse_pipeline(file: &str, text: &str) -> Result<Plan, PipelineError> {
    let source = Source { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    if raw.modules.is_empty() {
        return Err(source
            .error(0..0, "the pipeline defines no modules")
            .help("add a module, e.g.\n[modules.build]\nrun = \"make\""));
    }
    let defaults = Defaults::read(&source, raw.defaults)?;
    let mut modules: Vec<(Spanned<String>, RawModule)> = raw.modules.into_iter().collect();
    // File order, so the plan (and `muster validate`) reads like the file.
    modules.sort_by_key(|(name, _)| name.span().start);
    for (name, module) in &modules {
        check_name(&source, name)?;
        if module.run.is_none() && module.approval.is_none() {
            return Err(source
                .error(
                    name.span(),
                    format!("module '{}' has no `run`", name.get_ref()),
                )
                .help(
                    "give it a command, e.g. run = \"make\" (only an approval gate may have none)",
                ));
        }
    }
    let order = order::topological_order(&source, &modules)?;
    expand::expand(&source, &defaults, modules, &order)
}

/// What the tests of every step share: they all go through
/// [`parse_pipeline`], as a pipeline file does.
#[cfg(test)]
mod check {
    use super::*;

    pub(super) fn plan(text: &str) -> Plan {
        parse_pipeline("muster.toml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Checks that `text` is refused at `line:column` with a message that
    /// contains `needle`.
    pub(super) fn check_error(text: &str, line: usize, column: usize, needle: &str) {
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
}

#[cfg(test)]
mod tests {
    use super::check::check_error;

    #[test]
    fn an_empty_pipeline_is_refused() {
        check_error("# nothing\n", 1, 1, "no modules");
    }
}
