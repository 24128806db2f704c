//! What the client commands write to stdout: NDJSON lines and plain tables.
//!
//! A closed stdout (`esgf-events consume ... | head`) is [`OutputError::Closed`], which the binary turns into a
//! quiet, successful exit: the reader got what it asked for.

use std::borrow::Cow;
use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("stdout was closed")]
    Closed,
    #[error("cannot write to stdout")]
    Io(#[source] io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe { OutputError::Closed } else { OutputError::Io(e) }
    }
}

/// Whether `err` is only "the reader of stdout went away".
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<OutputError>(), Some(OutputError::Closed))
}

/// Buffered lines; the caller flushes at natural boundaries (a page of events, the end of a table).
pub struct Output<W: Write> {
    out: io::BufWriter<W>,
}

impl Output<io::Stdout> {
    pub fn stdout() -> Self {
        Output::new(io::stdout())
    }
}

impl<W: Write> Output<W> {
    pub fn new(writer: W) -> Self {
        Output { out: io::BufWriter::with_capacity(64 << 10, writer) }
    }

    pub fn line(&mut self, text: impl AsRef<[u8]>) -> Result<(), OutputError> {
        self.out.write_all(text.as_ref())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush()?;
        Ok(())
    }

    #[cfg(test)]
    fn into_inner(self) -> W {
        self.out.into_inner().map_err(|e| e.into_error()).expect("flush to memory")
    }
}

/// `json` on one line, for NDJSON. A raw line break can only be insignificant whitespace in valid JSON (inside
/// strings they are escaped), so JSON without one is returned byte for byte; JSON with one (a pretty-printed
/// event) loses the whitespace between its tokens.
pub fn single_line(json: &str) -> Cow<'_, str> {
    if !json.bytes().any(|b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < widths.len() {
                line.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(cell.chars().count())));
            }
        }
        line.trim_end().to_owned()
    };
    let mut lines = vec![render(&mut headers.iter().copied())];
    lines.extend(rows.iter().map(|row| render(&mut row.iter().map(String::as_str))));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_json_is_kept_byte_for_byte() {
        let json = r#"{ "a" : 1.50, "b":[ true ] }"#;
        assert!(matches!(single_line(json), Cow::Borrowed(s) if s == json));
    }

    #[test]
    fn pretty_json_is_joined_without_touching_strings() {
        let json = "{\n  \"a b\": \"x \\\" {\\n} y\",\r\n  \"c\": [\n    1,\n    2\n  ]\n}";
        let line = single_line(json);
        assert_eq!(line, r#"{"a b":"x \" {\n} y","c":[1,2]}"#);
        let original: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), original);
    }

    #[test]
    fn escaped_backslash_before_quote_ends_the_string() {
        assert_eq!(single_line("[\"a\\\\\",\n \"b\"]"), r#"["a\\","b"]"#);
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["esgf2.publications".into(), "3".into(), "90d".into()],
            vec!["t".into(), "12".into(), "forever".into()],
        ];
        assert_eq!(
            table(&["NAME", "PARTITIONS", "RETENTION"], &rows),
            vec![
                "NAME                PARTITIONS  RETENTION",
                "esgf2.publications  3           90d",
                "t                   12          forever",
            ]
        );
    }

    #[test]
    fn closed_pipe_is_its_own_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut out = Output::new(Closed);
        out.line("x").unwrap(); // buffered
        let err = out.flush().unwrap_err();
        assert!(matches!(err, OutputError::Closed));
        assert!(is_closed_stdout(&anyhow::Error::new(err)));
        assert!(!is_closed_stdout(&anyhow::anyhow!("other")));
    }

    #[test]
    fn lines_end_with_newlines() {
        let mut out = Output::new(Vec::new());
        out.line("a").unwrap();
        out.line(b"{}").unwrap();
        assert_eq!(out.into_inner(), b"a\n{}\n");
    }
}
