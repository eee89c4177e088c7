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
//!   symlink stays a symlink: the file it points to is replaced. A dangling symlink, or a chain of
//!   them (`a -> b -> missing`), is followed to its end and the file is created there, as a
//!   shell's `>` does; no link of the chain is replaced. A loop of symlinks is refused, naming it.

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
            // A new file, or a dangling symlink (or a chain of them): write where the chain ends.
            follow_links(path)
                .map(Destination::Replace)
                .map_err(|chain| err(loop_error(&chain)))
        }
        Err(e) if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::LOOP) => {
            // A loop of symlinks at the path itself is named; one among its directories is
            // left to the system's message.
            Err(err(
                follow_links(path).map_or_else(|chain| loop_error(&chain), |_| e)
            ))
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

/// The most symlinks followed from an output path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Follows the chain of symlinks from `path` (each relative target taken from its link's
/// directory) to the first name that is not a symlink, which may not exist. `Err`: the chain as
/// followed, when it comes back to a link it passed or takes more than [`MAX_LINKS`] links.
fn follow_links(path: &Path) -> Result<PathBuf, Vec<PathBuf>> {
    let mut chain = vec![path.to_path_buf()];
    let mut at = path.to_path_buf();
    while let Ok(target) = std::fs::read_link(&at) {
        let next = at
            .parent()
            .map_or_else(|| target.clone(), |p| p.join(&target));
        let looped = chain.contains(&next);
        chain.push(next.clone());
        if looped || chain.len() > MAX_LINKS + 1 {
            return Err(chain);
        }
        at = next;
    }
    Ok(at)
}

/// The error for a chain of symlinks [`follow_links`] gave up on, showing the chain.
fn loop_error(chain: &[PathBuf]) -> io::Error {
    let shown: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
    let what = if chain.len() > MAX_LINKS + 1 {
        format!("is a chain of more than {MAX_LINKS} symlinks")
    } else {
        "is a loop of symlinks".to_string()
    };
    io::Error::other(format!(
        "{what} ({}); expected a file, or a symlink (chain) ending at one, to write (or - for \
         standard output)",
        shown.join(" -> ")
    ))
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
    fn a_dangling_symlink_chain_is_followed_to_its_end_and_no_link_is_replaced() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        // first -> sub/second -> third (relative to sub/) -> missing.csv (relative to sub/)
        symlink("sub/second", d.join("first")).unwrap();
        symlink("third", d.join("sub/second")).unwrap();
        symlink("missing.csv", d.join("sub/third")).unwrap();
        assert!(write_output(&d.join("first"), text("new")).is_ok());
        for link in ["first", "sub/second", "sub/third"] {
            let meta = std::fs::symlink_metadata(d.join(link)).unwrap();
            assert!(meta.file_type().is_symlink(), "{link} was replaced");
        }
        assert_eq!(
            std::fs::read_to_string(d.join("sub/missing.csv"))
                .ok()
                .as_deref(),
            Some("new")
        );
        // Written again through the chain, the end is replaced and the links stay.
        assert!(write_output(&d.join("first"), text("newer")).is_ok());
        assert_eq!(
            std::fs::read_to_string(d.join("first")).ok().as_deref(),
            Some("newer")
        );
        assert!(std::fs::symlink_metadata(d.join("sub/second"))
            .is_ok_and(|m| m.file_type().is_symlink()));
    }

    #[test]
    fn a_loop_of_symlinks_is_refused_naming_it() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        symlink("b", &a).unwrap();
        symlink("a", &b).unwrap();
        let error = write_output(&a, text("x")).err().unwrap();
        assert_eq!(error.path, a);
        let message = error.source.to_string();
        let chain = format!("{} -> {} -> {}", a.display(), b.display(), a.display());
        assert!(
            message.starts_with(&format!("is a loop of symlinks ({chain}); expected a file")),
            "{message}"
        );
        // A link to itself, and a chain too long to follow.
        symlink("self", dir.path().join("self")).unwrap();
        let error = write_output(&dir.path().join("self"), text("x"))
            .err()
            .unwrap();
        assert!(error
            .source
            .to_string()
            .starts_with("is a loop of symlinks ("));
        for i in 0..=MAX_LINKS {
            symlink(format!("l{}", i + 1), dir.path().join(format!("l{i}"))).unwrap();
        }
        let error = write_output(&dir.path().join("l0"), text("x"))
            .err()
            .unwrap();
        let message = error.source.to_string();
        assert!(
            message.starts_with("is a chain of more than 40 symlinks ("),
            "{message}"
        );
        // Nothing was written, and every link is still a link.
        assert!(std::fs::symlink_metadata(&a).is_ok_and(|m| m.file_type().is_symlink()));
        assert!(!dir.path().join(format!("l{}", MAX_LINKS + 1)).exists());
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
