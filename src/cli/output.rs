//! Output helpers: aligned tables for people, JSON for scripts, RFC 3339 times.

use std::io::Write;

use super::CliError;

pub use crate::vault::rfc3339;

/// Writes `args` (and a newline when `line`) to stdout: what [`say!`](crate::cli) and `print!`
/// would, but a failure is an error returned to `main`, never a panic. A reader that went away
/// (`airlock logs | head -1`) is [`CliError::is_closed_stdout`]: `main` ends quietly with 0.
pub(crate) fn say(args: std::fmt::Arguments<'_>, line: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| if line { out.write_all(b"\n") } else { Ok(()) })
        .map_err(CliError::Stdout)
}

/// Prints `value` as one line of JSON.
pub(super) fn json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Io {
        what: "JSON output".into(),
        source: e.into(),
    })?;
    say(format_args!("{text}"), true)
}

/// Prints rows under a header, columns padded to their widest cell. A reader that goes away
/// (`| head`) ends the output quietly.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut out = std::io::stdout().lock();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    if line(header.to_vec()).is_err() {
        return;
    }
    for row in rows {
        if line(row.iter().map(String::as_str).collect()).is_err() {
            return;
        }
    }
}

/// Prints a freshly minted token alone on the last line of stdout.
pub(super) fn token_last_line(token: &crate::secret::Secret) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(token.expose())
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|source| CliError::Io {
            what: "stdout".into(),
            source,
        })
}
