//! A pipeline file that cannot run: [`PipelineError`] names the file, line
//! and column of the offending text, shows the line with the part
//! underlined, and says what to write instead. [`Source`] turns the byte
//! spans serde and toml report into those positions.

use std::fmt;
use std::ops::Range;

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

impl PipelineError {
    /// Adds what to write instead.
    pub(super) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Carries the file name and text so errors can point into it.
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// A refusal of the text at `span` (byte offsets into the file).
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> PipelineError {
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

    /// A refusal from the TOML reader (syntax, types, unknown or missing
    /// keys), with help for the mistakes people make most.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> PipelineError {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().to_owned();
        let help = toml_help(&message);
        let error = self.error(span, message);
        match help {
            Some(h) => error.help(h),
            None => error,
        }
    }
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

#[cfg(test)]
mod tests {
    use crate::pipeline::check::check_error;
    use crate::pipeline::parse_pipeline;

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
}
