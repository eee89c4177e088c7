//! Opening an input file safely: only a regular file or a FIFO is read (a character device such
//! as `/dev/zero` never ends, and a directory is no log), and no line may be longer than
//! [`MAX_LINE_BYTES`], so a file without line breaks cannot make the reader buffer it whole.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileTypeExt,
    path::Path,
};

use super::error::DataError;

/// The longest line a text input may have: 1 MiB (an interaction row is well under 1 KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Opens `path` for reading if it is a regular file or a FIFO, with lines limited to
/// [`MAX_LINE_BYTES`].
pub fn open_text(path: &Path) -> Result<LineLimit<File>, DataError> {
    check_kind(path)?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    Ok(LineLimit::new(file, MAX_LINE_BYTES))
}

/// Fails unless `path` is a regular file or a FIFO (following symlinks).
pub fn check_kind(path: &Path) -> Result<(), DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let kind = meta.file_type();
    let what = if kind.is_file() || kind.is_fifo() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(DataError::io(
        path,
        io::Error::other(format!(
            "is {what}: logs are read from a regular file or a FIFO"
        )),
    ))
}

/// A reader that fails once a line grows past a limit, naming the line.
#[derive(Debug)]
pub struct LineLimit<R> {
    inner: R,
    limit: usize,
    line: u64,
    /// Bytes since the last record break.
    line_bytes: usize,
    /// The line where the current record started (for messages).
    record_line: u64,
    /// Inside a double-quoted CSV field, where a line break does not end the record.
    quoted: bool,
    /// A quote seen inside a quoted field: the field ends unless the next byte is a quote too.
    quote_pending: bool,
    /// At the start of a field (only there does a quote open a quoted field, as in CSV).
    field_start: bool,
}

impl<R: Read> LineLimit<R> {
    /// Limits the lines of `inner` to `limit` bytes (the line break not counted).
    pub fn new(inner: R, limit: usize) -> Self {
        LineLimit {
            inner,
            limit,
            line: 1,
            line_bytes: 0,
            record_line: 1,
            quoted: false,
            quote_pending: false,
            field_start: true,
        }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.line += 1;
            }
            // CSV quoting: a quote at the start of a field opens a quoted field, where `""` is a
            // quote and a lone `"` closes it. A record ends at a line break (LF, or CR) outside
            // quotes; a quoted field may span lines, but not past the limit.
            if self.quoted {
                if self.quote_pending {
                    self.quote_pending = false;
                    if byte != b'"' {
                        self.quoted = false;
                    }
                } else if byte == b'"' {
                    self.quote_pending = true;
                }
            } else if byte == b'"' && self.field_start {
                self.quoted = true;
            }
            if !self.quoted {
                self.field_start = byte == b',';
                if byte == b'\n' || byte == b'\r' {
                    self.field_start = true;
                    self.line_bytes = 0;
                    self.record_line = self.line;
                    continue;
                }
            }
            self.line_bytes += 1;
            if self.line_bytes > self.limit {
                let what = if self.record_line == self.line {
                    format!("line {}", self.line)
                } else {
                    format!("the record starting on line {}", self.record_line)
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{what} is longer than {} bytes: not a line-based text file (or an \
                         unclosed quote)?",
                        self.limit
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_an_error_naming_it() {
        let text = format!("a,b\nshort\n{}\n", "x".repeat(50));
        let mut out = String::new();
        let err = LineLimit::new(text.as_bytes(), 10)
            .read_to_string(&mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("line 3 is longer than 10 bytes"),
            "{err}"
        );
        let mut ok = String::new();
        LineLimit::new("1234567890\n1234567890".as_bytes(), 10)
            .read_to_string(&mut ok)
            .unwrap();
        assert_eq!(ok, "1234567890\n1234567890");
    }

    #[test]
    fn a_quoted_field_spanning_lines_counts_as_one_record_and_cr_ends_lines() {
        let mut text = String::from("a,b\nu,\"");
        for _ in 0..20 {
            text.push_str("xxxx\n");
        }
        text.push_str("\"\n");
        let err = LineLimit::new(text.as_bytes(), 30)
            .read_to_string(&mut String::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("the record starting on line 2"),
            "{err}"
        );
        // Short quoted fields with line breaks, "" escapes and CR-only line ends pass.
        let ok = "a,b\r\"x\ny\",\"say \"\"hi\"\"\"\r1,2\r";
        // A quote inside an unquoted field is a plain character (CSV): lines still end.
        let mut long = String::from("a,b\n");
        for _ in 0..100 {
            long.push_str("u,ab\"c\n");
        }
        LineLimit::new(long.as_bytes(), 30)
            .read_to_string(&mut String::new())
            .unwrap();
        let mut out = String::new();
        LineLimit::new(ok.as_bytes(), 30)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, ok);
    }

    #[test]
    fn devices_and_directories_are_refused_files_accepted() {
        let err = check_kind(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("is a character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = check_kind(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let file = dir.path().join("log.csv");
        std::fs::write(&file, "user_id,item_id\n").unwrap();
        assert!(check_kind(&file).is_ok());
    }
}
