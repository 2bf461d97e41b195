//! One writer per folder: a prepared dataset (`prepare`, `vocab build`, `tokenize`) or a run
//! folder (`trainer pretrain` / `finetune`) is written by one process at a time.
//!
//! The lock is an advisory `flock` on `<folder>/<name>` (std's `File::try_lock`). The kernel
//! drops it when the holder exits, even when it is killed, so a crash never leaves a stale
//! lock to clean by hand. The file also records who holds it, so the refusal names the
//! holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, PipelineError, Result};

/// The lock file of a folder that one process writes at a time.
pub const LOCK_FILE: &str = ".lock";

/// Held until dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    pub path: PathBuf,
}

impl FolderLock {
    /// Takes `<dir>/<name>` (`dir` must exist), or fails with [`PipelineError::Locked`] naming
    /// the process that holds it. `what` says what the holder does ("prepare", "pretrain").
    pub fn acquire(dir: &Path, name: &str, what: &str) -> Result<Self> {
        let path = dir.join(name);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).read(true).write(true);
        // A symlink planted under the lock's name would make the holder's note overwrite
        // whatever it points at: refused (ELOOP) rather than followed.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = options.open(&path).at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(PipelineError::Locked {
                    path,
                    holder: holder.trim().to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(e).at(&path),
        }
        let holder = format!(
            "{what} (pid {}, since {} s after the Unix epoch)",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        file.write_all(holder.as_bytes()).at(&path)?;
        file.flush().at(&path)?;
        Ok(FolderLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path(), LOCK_FILE, "prepare").unwrap();
        let err = FolderLock::acquire(dir.path(), LOCK_FILE, "tokenize")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".lock") && err.contains("prepare") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        // Another lock name in the same folder is another writer's.
        let worker = FolderLock::acquire(dir.path(), ".lock-worker-1", "prepare worker 1").unwrap();
        drop(first);
        let again = FolderLock::acquire(dir.path(), LOCK_FILE, "tokenize").unwrap();
        let text = std::fs::read_to_string(&again.path).unwrap();
        assert!(text.starts_with("tokenize (pid "), "{text}");
        drop(worker);
    }

    /// A lock name planted as a symlink is not followed: its target keeps its contents.
    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious.txt");
        std::fs::write(&target, "keep me").unwrap();
        let folder = dir.path().join("data");
        std::fs::create_dir(&folder).unwrap();
        std::os::unix::fs::symlink(&target, folder.join(LOCK_FILE)).unwrap();
        let err = FolderLock::acquire(&folder, LOCK_FILE, "prepare")
            .unwrap_err()
            .to_string();
        assert!(err.contains(".lock"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
