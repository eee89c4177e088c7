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
    line_bytes: usize,
}

impl<R: Read> LineLimit<R> {
    /// Limits the lines of `inner` to `limit` bytes (the line break not counted).
    pub fn new(inner: R, limit: usize) -> Self {
        LineLimit {
            inner,
            limit,
            line: 1,
            line_bytes: 0,
        }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.line += 1;
                self.line_bytes = 0;
            } else {
                self.line_bytes += 1;
                if self.line_bytes > self.limit {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {} is longer than {} bytes: not a line-based text file?",
                            self.line, self.limit
                        ),
                    ));
                }
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
