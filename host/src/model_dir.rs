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

/// Whether `file` is `prefix` followed by a process id.
fn leftover(file: &str, prefix: &str) -> bool {
    file.strip_prefix(prefix)
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
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
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
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
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
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
