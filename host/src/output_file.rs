//! Where a command's output goes, and how it is written there without harming what is at the path.
//!
//! - `-` is standard output.
//! - A FIFO, a character or block device or a socket (or a symlink to one) is written to
//!   directly: replacing it with a regular file would destroy it (`--out /dev/null` as root
//!   replaced /dev/null).
//! - A directory is refused.
//! - Anything else (a regular file, a symlink to one, or a new name) is replaced atomically: the
//!   output goes to a temporary file beside the final one, is flushed to disk, and is renamed over
//!   it, so a reader never sees half a file and a failed write leaves the old file as it was. A
//!   symlink stays a symlink: the file it points to is replaced.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Where output for a path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (`-`).
    Stdout,
    /// A FIFO, device or socket, written to as it is.
    Stream(PathBuf),
    /// A regular file (new or existing), replaced atomically; the path is the symlink's target
    /// when the given path is a symlink.
    Replace(PathBuf),
}

/// An output error with the path it concerns.
#[derive(Debug)]
pub struct OutputError {
    /// The path being written.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

/// Classifies `path`.
pub fn destination(path: &Path) -> Result<Destination, OutputError> {
    if path.as_os_str() == "-" {
        return Ok(Destination::Stdout);
    }
    // `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N` resolve to whatever the descriptor is open
    // on, a regular file when it was redirected (`>> log`): replacing that file would lose it.
    let resolved = std::fs::canonicalize(path).ok();
    let under = |p: &Path| p.starts_with("/dev") || p.starts_with("/proc");
    if under(path) || resolved.as_deref().is_some_and(|r| r.starts_with("/proc")) {
        return Ok(Destination::Stream(path.to_path_buf()));
    }
    let err = |source| OutputError {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A new file, or a dangling symlink: write where the link points, or the path.
            let target = std::fs::read_link(path).map_or_else(
                |_| path.to_path_buf(),
                |t| path.parent().map_or(t.clone(), |p| p.join(t)),
            );
            Ok(Destination::Replace(target))
        }
        Err(e) => Err(err(e)),
        Ok(meta) if meta.is_dir() => Err(err(io::Error::other(
            "is a directory; name a file to write (or - for standard output)",
        ))),
        Ok(meta) if meta.is_file() => Ok(Destination::Replace(
            std::fs::canonicalize(path).map_err(err)?,
        )),
        Ok(_) => Ok(Destination::Stream(path.to_path_buf())),
    }
}

/// Writes output to `path` by `write`, as [`destination`] says.
pub fn write_output(
    path: &Path,
    write: impl FnOnce(&mut (dyn Write + Send)) -> io::Result<()>,
) -> Result<(), OutputError> {
    match destination(path)? {
        Destination::Stdout => {
            let mut out = io::stdout();
            write(&mut out)
                .and_then(|()| out.flush())
                .map_err(|source| OutputError {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Destination::Stream(p) => {
            let err = |source| OutputError {
                path: p.clone(),
                source,
            };
            let mut file = OpenOptions::new().write(true).open(&p).map_err(err)?;
            write(&mut file).and_then(|()| file.flush()).map_err(err)
        }
        Destination::Replace(p) => replace(&p, write),
    }
}

/// A new file `<dir>/.<name>.tmp-<pid>-<n>` beside `path`, created exclusively (never an
/// existing file or a symlink planted there), readable by its owner only while it is written.
fn temp_beside(path: &Path) -> Result<(PathBuf, File), OutputError> {
    use std::os::unix::fs::OpenOptionsExt;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let err = |source| OutputError {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::other("does not name a file")))?;
    loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".tmp-{}-{n}", std::process::id()));
        let temp = path.with_file_name(temp);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

fn replace(
    path: &Path,
    write: impl FnOnce(&mut (dyn Write + Send)) -> io::Result<()>,
) -> Result<(), OutputError> {
    let (temp, mut file) = temp_beside(path)?;
    // The replaced file keeps its permissions; a new one is rw-r--r--.
    let permissions = std::fs::metadata(path).map_or_else(
        |_| std::os::unix::fs::PermissionsExt::from_mode(0o644),
        |meta| meta.permissions(),
    );
    let written = (|| {
        write(&mut file)?;
        file.flush()?;
        file.set_permissions(permissions)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(OutputError {
            path: path.to_path_buf(),
            source,
        });
    }
    std::fs::rename(&temp, path).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        OutputError {
            path: path.to_path_buf(),
            source,
        }
    })?;
    // Make the rename itself durable; a directory that cannot be opened or synced (some file
    // systems) leaves the file written all the same.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> impl FnOnce(&mut (dyn Write + Send)) -> io::Result<()> {
        move |w| w.write_all(s.as_bytes())
    }

    #[test]
    fn a_regular_file_is_replaced_and_a_failed_write_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        assert!(write_output(&path, text("one\n")).is_ok());
        assert!(write_output(&path, text("two\n")).is_ok());
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("two\n")
        );
        let failed = write_output(&path, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("two\n")
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.csv")]);
    }

    #[test]
    fn a_symlink_stays_a_symlink_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.csv");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_output(&link, text("new")).is_ok());
        assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
        assert_eq!(
            std::fs::read_to_string(&target).ok().as_deref(),
            Some("new")
        );
    }

    #[test]
    fn a_replaced_file_keeps_its_permissions_and_dev_stdout_is_a_stream() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.csv");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(write_output(&path, text("new")).is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for p in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
            assert_eq!(
                destination(Path::new(p)).ok(),
                Some(Destination::Stream(PathBuf::from(p))),
                "{p}"
            );
        }
    }

    #[test]
    fn devices_are_written_in_place_and_directories_refused() {
        assert_eq!(
            destination(Path::new("/dev/null")).ok(),
            Some(Destination::Stream(PathBuf::from("/dev/null")))
        );
        assert!(write_output(Path::new("/dev/null"), text("x")).is_ok());
        assert!(std::fs::metadata("/dev/null").is_ok_and(|m| !m.is_file()));
        assert_eq!(destination(Path::new("-")).ok(), Some(Destination::Stdout));
        let dir = tempfile::tempdir().unwrap();
        let err = destination(dir.path()).err().map(|e| e.source.to_string());
        assert!(err.is_some_and(|m| m.contains("is a directory")));
    }
}
