//! Which files are a module's inputs. The `inputs` globs are compiled with
//! [`crate::glob::compile`], as the pipeline checked them, so the file
//! walk and the pipeline agree on what a pattern means.

use globset::GlobMatcher;

use crate::glob::{compile, GlobError};

/// A module's `inputs`, compiled: a file goes in when a glob without `!`
/// matches it and no glob with `!` does. Order does not matter (unlike a
/// `.gitignore`), so a reader of the list needs no rule about which entry
/// wins.
#[derive(Debug, Clone)]
pub struct InputGlobs {
    include: Vec<GlobMatcher>,
    exclude: Vec<GlobMatcher>,
}

impl InputGlobs {
    /// Compiles `patterns` as [`PlannedModule::inputs`] holds them.
    /// The pipeline compiled each already, so an error here is a plan
    /// built by hand.
    ///
    /// [`PlannedModule::inputs`]: crate::plan::PlannedModule::inputs
    pub fn new(patterns: &[String]) -> Result<InputGlobs, GlobError> {
        let mut globs = InputGlobs {
            include: Vec::new(),
            exclude: Vec::new(),
        };
        for pattern in patterns {
            match pattern.strip_prefix('!') {
                Some(excluded) => globs.exclude.push(compile(excluded)?),
                None => globs.include.push(compile(pattern)?),
            }
        }
        Ok(globs)
    }

    /// True when the file at `path` (relative to the module's cwd,
    /// `/`-separated) is an input.
    pub fn is_match(&self, path: &str) -> bool {
        self.include.iter().any(|g| g.is_match(path))
            && !self.exclude.iter().any(|g| g.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_win_whatever_their_place() {
        let patterns: Vec<String> = ["!src/**/*.md", "src/**", "Cargo.lock"]
            .map(String::from)
            .to_vec();
        let globs = InputGlobs::new(&patterns).unwrap();
        for path in ["src/lib.rs", "src/a/b.rs", "Cargo.lock"] {
            assert!(globs.is_match(path), "{path} goes in");
        }
        for path in [
            "src/README.md",
            "src/a/notes.md",
            "Cargo.toml",
            "x/Cargo.lock",
        ] {
            assert!(!globs.is_match(path), "{path} stays out");
        }
        assert!(!InputGlobs::new(&[]).unwrap().is_match("a"));
        assert!(InputGlobs::new(&["src/[a".into()]).is_err());
    }
}
