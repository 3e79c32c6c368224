//! `Diagnostic { file, line, col, message }` and its `F:line:col: message` rendering (DESIGN §9).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Severity {
    /// The config is refused.
    #[default]
    Error,
    /// Reported (`warning: …`), the config is accepted; e.g. a file not provisioned yet.
    Warning,
}

/// One problem found in a configuration file, located by 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// Error or warning (rendered as a `warning: ` prefix of the message).
    pub severity: Severity,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl Diagnostic {
    /// An error at byte offset `span.start` of `text` (the contents of `file`); at 1:1 when
    /// `span` is `None`.
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// The same diagnostic with `severity`.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}{}",
            self.file.display(),
            self.line,
            self.col,
            match self.severity {
                Severity::Error => "",
                Severity::Warning => "warning: ",
            },
            self.message
        )
    }
}

/// 1-based (line, column) of byte `offset` in `text`; columns count characters, not bytes.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The error of a load that failed: every problem found, warnings first, each kind in file
/// order ([`Diagnostics::into_errors`] keeps the errors only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// Only the errors (what refused the config), without the warnings.
    pub fn into_errors(self) -> Diagnostics {
        Diagnostics(
            self.0
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbb = \"é\"\nc";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, t.find('c').unwrap()), (3, 1));
        // column counts characters: the closing quote after é is column 8
        assert_eq!(line_col(t, t.rfind('"').unwrap()), (2, 8));
    }

    #[test]
    fn renders_as_file_line_col_message() {
        let d = Diagnostic::at(
            Path::new("w.toml"),
            "x\ny = 2",
            Some(2..3),
            "unknown key `y`",
        );
        assert_eq!(d.to_string(), "w.toml:2:1: unknown key `y`");
        let w = d.with_severity(Severity::Warning);
        assert_eq!(w.to_string(), "w.toml:2:1: warning: unknown key `y`");
    }
}
