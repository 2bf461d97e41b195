//! Files that appear under their final name only once complete: written to `<dest>.tmp`,
//! synced, then renamed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};

/// `<dest>.tmp`, removed when dropped unless [`TempFile::persist`] renamed it to `dest`: a
/// write that fails (a full disk) or is abandoned (a signal) leaves neither a partial file nor
/// the space it held, and the previous `dest`, if any, stays as it was.
pub struct TempFile {
    tmp: PathBuf,
    dest: PathBuf,
    armed: bool,
}

impl TempFile {
    pub fn new(dest: &Path) -> Self {
        TempFile {
            tmp: tmp_path(dest),
            dest: dest.to_path_buf(),
            armed: true,
        }
    }

    pub fn create(&self) -> Result<File> {
        File::create(&self.tmp).map_err(|e| self.failed(e))
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// An I/O error while writing the temp file, named by the file it was to become.
    pub fn failed(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.dest.clone(),
            tmp: self.tmp.clone(),
            source,
        }
    }

    /// Renames the (synced) temp file into place and syncs the folder, so the new name
    /// survives a power cut as well as the contents.
    pub fn persist(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.failed(e))?;
        self.armed = false;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Some file systems refuse to sync a folder; the rename itself has happened.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = TempFile::new(dest);
    let mut f = tmp.create()?;
    f.write_all(bytes).map_err(|e| tmp.failed(e))?;
    f.sync_all().map_err(|e| tmp.failed(e))?;
    tmp.persist()
}
