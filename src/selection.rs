//! `muster run [FILE] [MODULE]... [--skip MODULE]...`: which pipeline file,
//! and which of its modules to run. The file comes first when it looks
//! like one (it ends in `.toml` or exists), so `muster run test lint` and
//! `muster run ci/muster.toml test` both read as a user means them.

use std::path::{Path, PathBuf};

use clap::Args;
use muster_core::Plan;

use crate::failure::Failure;

#[derive(Args)]
pub struct Selection {
    /// The pipeline file (default muster.toml), then the modules to run:
    /// those and everything they need, no others [default: every module].
    #[arg(value_name = "FILE|MODULE")]
    words: Vec<String>,
    /// The pipeline file, when the first word should not be taken for one.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Leave this module out, with everything that needs it (repeatable).
    #[arg(long, value_name = "MODULE")]
    skip: Vec<String>,
}

impl Selection {
    /// The pipeline file.
    pub fn file(&self) -> PathBuf {
        self.split().0
    }

    /// The file, and the modules named after it.
    fn split(&self) -> (PathBuf, &[String]) {
        if let Some(file) = &self.file {
            return (file.clone(), &self.words);
        }
        match self.words.split_first() {
            Some((first, rest)) if looks_like_a_file(first) => (PathBuf::from(first), rest),
            _ => (PathBuf::from("muster.toml"), &self.words),
        }
    }

    /// `plan` cut down to the selection; the whole plan without one.
    pub fn apply(&self, plan: Plan) -> Result<Plan, Failure> {
        let (file, targets) = self.split();
        if targets.is_empty() && self.skip.is_empty() {
            return Ok(plan);
        }
        plan.select(targets, &self.skip)
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))
    }
}

fn looks_like_a_file(word: &str) -> bool {
    word.ends_with(".toml") || Path::new(word).is_file()
}
