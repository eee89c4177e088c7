//! Writing a model directory without destroying what the user owns, crash-safely.
//!
//! - **Only our files.** recblocks writes and removes only the files named in [`OWN_FILES`]; any
//!   other file or folder in the directory (notes, evaluations) is kept across a re-fit.
//! - **Only into a model directory.** An existing directory is replaced only when it holds a
//!   `model.json` with recblocks' format marker, or is empty; anything else is refused unless
//!   `force` is given (its files are then kept beside the model).
//! - **Crash-safe swap.** The new model is written and fsync'd into a sibling temporary directory;
//!   the user's files are moved into it; then the two directories are exchanged in one atomic
//!   `renameat2(RENAME_EXCHANGE)`, and the old model's files are removed. A crash at any point
//!   leaves the old or the new model, complete, at the path; leftovers of a crashed save are found
//!   and cleaned (user files moved back) by the next save.
//! - **One writer.** An exclusive lock on `.<name>.lock` beside the directory makes a second save
//!   to the same path wait for the first; loading takes the lock shared, so a reader never opens
//!   files across a swap (and `model.json`'s weights checksum catches a copy torn by other means).

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use rustix::fs::{flock, renameat_with, FlockOperation, RenameFlags, CWD};

use crate::error::HostError;

/// Every file recblocks writes into a model directory.
pub const OWN_FILES: &[&str] = &[
    "model.json",
    "dataset_schema.json",
    "weights.safetensors",
    "optimizer.safetensors",
    "best_weights.safetensors",
    "trainer_state.json",
    "train_log.csv",
    "training_curve.svg",
    // Written by `evaluate --out` beside the model it describes.
    "evaluation.json",
];

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |e| HostError::io(path, e)
}

/// The path a model directory really is: an existing path resolved (`.`, `m/..`, a symlink to a
/// directory: the swap must replace the real directory, not the link), a new one as given.
pub fn real_path(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The directory's parent and file name.
fn split(dir: &Path) -> Result<(PathBuf, String), HostError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| HostError::Other(format!("{}: does not name a directory", dir.display())))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((parent, name))
}

/// A held lock on a model directory path; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks the path `dir` (exclusively to write, shared to read), waiting for other holders.
/// `None` when the lock file cannot be created (a read-only parent when reading).
fn lock(dir: &Path, exclusive: bool) -> Result<Option<DirLock>, HostError> {
    let (parent, name) = match split(&real_path(dir)) {
        Ok(parts) => parts,
        Err(_) if !exclusive => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = parent.join(format!(".{name}.lock"));
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(_) if !exclusive => return Ok(None),
        Err(e) => return Err(HostError::io(&path, e)),
    };
    let op = if exclusive {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::LockShared
    };
    flock(&file, op).map_err(|e| HostError::io(&path, e.into()))?;
    Ok(Some(DirLock { _file: file }))
}

/// Takes the shared (reader's) lock on `dir`, when its lock file can be made.
pub fn lock_for_reading(dir: &Path) -> Result<Option<DirLock>, HostError> {
    lock(dir, false)
}

/// Whether `dir` holds a recblocks model (a `model.json` with the format marker).
fn is_model_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["format"] == crate::artifact::FORMAT_NAME)
}

fn sync_dir(dir: &Path) {
    // A directory that cannot be opened or synced (some file systems) is left as written.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Test hook: with `RECBLOCKS_SAVE_FAILPOINT=N` in a debug build, the process exits at step N of
/// a save, as if killed there.
fn failpoint(step: u32) {
    #[cfg(debug_assertions)]
    if std::env::var("RECBLOCKS_SAVE_FAILPOINT").ok() == Some(step.to_string()) {
        std::process::exit(86);
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// Removes our files from `dir`, moves anything else into `keep` (when given), and removes
/// `dir` if it is then empty.
fn dismantle(dir: &Path, keep: Option<&Path>) -> Result<(), HostError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let path = entry.path();
        if OWN_FILES.iter().any(|f| name == *f) {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        } else if let Some(keep) = keep {
            let target = keep.join(&name);
            if !target.exists() {
                std::fs::rename(&path, &target).map_err(io_err(&path))?;
            }
        }
    }
    // Fails (and keeps it) when a file that is not ours had nowhere to go.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Whether `file` is `prefix` followed by a process id, or by a process id, `-` and a number
/// (the name [`fresh_temp`] takes when the first is held by a leftover it could not clean).
fn leftover(file: &str, prefix: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    file.strip_prefix(prefix)
        .is_some_and(|rest| match rest.split_once('-') {
            Some((pid, n)) => number(pid) && number(n),
            None => number(rest),
        })
}

/// Creates this save's temporary directory beside the model, `.<name>.tmp-<pid>`. When a
/// leftover of an earlier save holds that name ([`recover`] could not empty it: it keeps a file of
/// the user's whose name is taken in the model directory), it is left alone with a warning naming
/// it and what it holds, and the save uses `.<name>.tmp-<pid>-<n>` instead.
fn fresh_temp(parent: &Path, name: &str, dir: &Path) -> Result<PathBuf, HostError> {
    let pid = std::process::id();
    for n in 0..1000u32 {
        let tmp = match n {
            0 => parent.join(format!(".{name}.tmp-{pid}")),
            n => parent.join(format!(".{name}.tmp-{pid}-{n}")),
        };
        match std::fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let held: Vec<String> = std::fs::read_dir(&tmp)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .take(3)
                    .map(|e| format!("`{}`", e.file_name().to_string_lossy()))
                    .collect();
                tracing::warn!(
                    "{}: left by an earlier save of {} and not cleaned up (it holds {}, which \
                     could not move back because {} has files of the same names); it is kept \
                     for you to look at, and this save writes through another temporary \
                     directory",
                    tmp.display(),
                    dir.display(),
                    if held.is_empty() {
                        "something that is not a file of recblocks'".to_string()
                    } else {
                        held.join(", ")
                    },
                    dir.display()
                );
            }
            Err(e) => return Err(HostError::io(&tmp, e)),
        }
    }
    Err(HostError::Other(format!(
        "{}: 1000 temporary directories .{name}.tmp-{pid}-<n> beside it already exist; remove \
         them to save here",
        dir.display()
    )))
}

/// Where the two-rename fallback parks the old model: `.<name>.old-<pid>`, or, when a leftover
/// that [`recover`] could not empty holds that name (a rename onto it would fail with "Directory
/// not empty"), the first free `.<name>.old-<pid>-<n>`, which recovery also recognises.
fn fresh_old(parent: &Path, name: &str) -> PathBuf {
    let pid = std::process::id();
    let candidate = |n: u32| match n {
        0 => parent.join(format!(".{name}.old-{pid}")),
        n => parent.join(format!(".{name}.old-{pid}-{n}")),
    };
    (0..1000u32)
        .map(candidate)
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| candidate(1000))
}

/// Cleans what crashed saves of `dir` left beside it. A model left under `.<name>.old-<pid>` (the
/// two-rename fallback) is restored when `dir` is missing, removed (our files only) otherwise;
/// then a temporary directory goes back into shape: files that are not ours move back into `dir`,
/// ours are removed.
fn recover(parent: &Path, name: &str, dir: &Path) -> Result<(), HostError> {
    let tmp_prefix = format!(".{name}.tmp-");
    let old_prefix = format!(".{name}.old-");
    let entries: Vec<(String, PathBuf)> = std::fs::read_dir(parent)
        .map_err(io_err(parent))?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(_, p)| p.is_dir() && !p.is_symlink())
        .collect();
    for (file, path) in &entries {
        if leftover(file, &old_prefix) {
            if dir.exists() {
                dismantle(path, None)?;
            } else {
                std::fs::rename(path, dir).map_err(io_err(path))?;
            }
        }
    }
    for (file, path) in &entries {
        if leftover(file, &tmp_prefix) {
            dismantle(path, dir.is_dir().then_some(dir))?;
        }
    }
    Ok(())
}

/// Writes a model into `dir` by `write` (which fills a fresh directory with [`OWN_FILES`]), as
/// described in the module documentation.
pub fn replace(
    dir: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> Result<(), HostError>,
) -> Result<(), HostError> {
    let dir = &real_path(dir);
    let (parent, name) = split(dir)?;
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let _lock = lock(dir, true)?;
    recover(&parent, &name, dir)?;
    if dir.exists() {
        if !dir.is_dir() {
            return Err(HostError::Other(format!(
                "{}: exists and is not a directory; refusing to replace it",
                dir.display()
            )));
        }
        let empty = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .next()
            .is_none();
        let model = is_model_dir(dir);
        if !empty && !model && force {
            // Forced into someone else's directory: never delete a file of theirs that happens
            // to carry one of our names.
            if let Some(clash) = OWN_FILES.iter().find(|f| dir.join(f).exists()) {
                return Err(HostError::Other(format!(
                    "{}: holds a file named `{clash}`, which recblocks would overwrite; it is not \
                     a recblocks model directory, so the file is left alone and nothing is written",
                    dir.display()
                )));
            }
        }
        if !empty && !model && !force {
            return Err(HostError::Other(format!(
                "{}: exists, is not empty and is not a recblocks model directory (no model.json \
                 with format \"{}\"); refusing to write into it. Choose another --out, or pass \
                 --force to write the model beside its files (they are kept)",
                dir.display(),
                crate::artifact::FORMAT_NAME
            )));
        }
    }
    let tmp = fresh_temp(&parent, &name, dir)?;
    failpoint(1);
    if let Err(e) = write(&tmp) {
        let _ = dismantle(&tmp, None);
        return Err(e);
    }
    sync_dir(&tmp);
    failpoint(2);
    if !dir.exists() {
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        sync_dir(&parent);
        return Ok(());
    }
    // The user's files go with the new model; if one cannot move, they all go back.
    let moved = (|| -> Result<(), HostError> {
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if !OWN_FILES.iter().any(|f| entry.file_name() == *f) {
                let target = tmp.join(entry.file_name());
                std::fs::rename(entry.path(), &target).map_err(io_err(&entry.path()))?;
                failpoint(3);
            }
        }
        Ok(())
    })();
    if let Err(e) = moved {
        let _ = dismantle(&tmp, Some(dir));
        return Err(e);
    }
    failpoint(4);
    match renameat_with(CWD, &tmp, CWD, dir, RenameFlags::EXCHANGE) {
        Ok(()) => {
            sync_dir(&parent);
            failpoint(5);
            // `tmp` now holds the old model's files only.
            dismantle(&tmp, None)
        }
        // A file system without the atomic exchange: two renames, the old model kept under
        // `.<name>.old-<pid>` in between (restored by the next save if a crash falls there).
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            let old = fresh_old(&parent, &name);
            if let Err(e) = std::fs::rename(dir, &old) {
                let _ = dismantle(&tmp, Some(dir));
                return Err(HostError::io(dir, e));
            }
            failpoint(5);
            if let Err(e) = std::fs::rename(&tmp, dir) {
                // Put the old model (and, from the temporary directory, the user's files) back.
                let _ = std::fs::rename(&old, dir);
                let _ = dismantle(&tmp, Some(dir));
                return Err(HostError::io(dir, e));
            }
            sync_dir(&parent);
            dismantle(&old, None)
        }
        Err(e) => {
            // Put the user's files back where they were.
            let _ = dismantle(&tmp, Some(dir));
            Err(HostError::io(dir, e.into()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes a minimal model (a `model.json` with the format marker) into a save's directory.
    fn write_model(version: &str) -> impl FnOnce(&Path) -> Result<(), HostError> + '_ {
        move |tmp| {
            let json = format!(
                r#"{{"format": "{}", "version": "{version}"}}"#,
                crate::artifact::FORMAT_NAME
            );
            std::fs::write(tmp.join("model.json"), json).map_err(io_err(tmp))
        }
    }

    #[test]
    fn a_leftover_temp_directory_that_cannot_be_emptied_does_not_block_the_next_save() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("m");
        replace(&dir, false, write_model("1")).unwrap();
        std::fs::write(dir.join("NOTES.md"), "the user's notes").unwrap();
        // A crashed save of this process id left its temporary directory holding a file of the
        // user's whose name is now taken in the model directory: it cannot move back, so the
        // leftover cannot be removed.
        let stale = parent.path().join(format!(".m.tmp-{}", std::process::id()));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("NOTES.md"), "an older copy").unwrap();

        replace(&dir, false, write_model("2")).unwrap();
        let saved = std::fs::read_to_string(dir.join("model.json")).unwrap();
        assert!(saved.contains(r#""version": "2""#), "{saved}");
        assert_eq!(
            std::fs::read_to_string(dir.join("NOTES.md")).unwrap(),
            "the user's notes"
        );
        // The stale copy is kept, not deleted, and nothing else is left behind.
        assert_eq!(
            std::fs::read_to_string(stale.join("NOTES.md")).unwrap(),
            "an older copy"
        );
        let mut names: Vec<String> = std::fs::read_dir(parent.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".m.lock".to_string(),
                stale.file_name().unwrap().to_string_lossy().into_owned(),
                "m".to_string()
            ]
        );
    }

    #[test]
    fn the_fallback_parks_the_old_model_beside_a_leftover_it_cannot_replace() {
        let parent = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let first = fresh_old(parent.path(), "m");
        assert_eq!(first, parent.path().join(format!(".m.old-{pid}")));
        // A leftover of that name holding a user's file: the next name, which recovery knows.
        std::fs::create_dir(&first).unwrap();
        std::fs::write(first.join("NOTES.md"), "mine").unwrap();
        let next = fresh_old(parent.path(), "m");
        assert_eq!(next, parent.path().join(format!(".m.old-{pid}-1")));
        assert!(leftover(&format!(".m.old-{pid}-1"), ".m.old-"));
        // A rename of a model directory there succeeds where one onto the leftover fails.
        let model = parent.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("model.json"), "{}").unwrap();
        assert!(std::fs::rename(&model, &first).is_err());
        std::fs::rename(&model, &next).unwrap();
    }

    #[test]
    fn leftovers_are_recognised_by_pid_or_pid_and_number() {
        for (name, is) in [
            (".m.tmp-123", true),
            (".m.tmp-123-4", true),
            (".m.tmp-", false),
            (".m.tmp-123-", false),
            (".m.tmp--4", false),
            (".m.tmp-1-2-3", false),
            (".m.tmp-12a", false),
        ] {
            assert_eq!(leftover(name, ".m.tmp-"), is, "{name}");
        }
    }

    #[test]
    fn a_crashed_save_under_a_numbered_temp_name_is_cleaned_by_the_next() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("m");
        replace(&dir, false, write_model("1")).unwrap();
        // What a save through `.m.tmp-<pid>-1` leaves when killed after moving the user's file
        // into it: our files and the user's.
        let crashed = parent.path().join(".m.tmp-999999-1");
        std::fs::create_dir(&crashed).unwrap();
        std::fs::write(crashed.join("model.json"), "{}").unwrap();
        std::fs::write(crashed.join("eval.txt"), "kept").unwrap();
        replace(&dir, false, write_model("2")).unwrap();
        assert!(!crashed.exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("eval.txt")).unwrap(),
            "kept"
        );
    }
}
