//! Files that appear under their final name only once complete: written to a new temp file
//! beside `dest` (`<dest>.<random>.tmp`, created exclusively: never an existing file or a
//! planted symlink), synced, then renamed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};

/// `<dest>.<random>.tmp`, removed when dropped unless [`TempFile::persist`] renamed it to `dest`: a
/// write that fails (a full disk) or is abandoned (a signal) leaves neither a partial file nor
/// the space it held, and the previous `dest`, if any, stays as it was.
pub struct TempFile {
    tmp: PathBuf,
    dest: PathBuf,
    armed: bool,
}

impl TempFile {
    /// A temp file for `dest`. A writer killed outright (SIGKILL, power loss) leaves its temp
    /// file behind; the next write of the same `dest` removes it here, as one process writes a
    /// destination at a time (the folder locks).
    pub fn new(dest: &Path) -> Self {
        remove_stale_temps(dest);
        TempFile {
            tmp: tmp_path(dest),
            dest: dest.to_path_buf(),
            armed: true,
        }
    }

    /// Creates the temp file; `create_new` (O_EXCL) fails on any existing entry, a symlink
    /// included, so a name planted in the folder cannot redirect the write.
    pub fn create(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.tmp)
            .map_err(|e| self.failed(e))
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

/// A fresh temp name beside `dest`, unpredictable (64 random bits) so that nothing can be
/// planted under it in advance.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    dest.with_file_name(name)
}

/// Removes the temp files an interrupted writer of `dest` left: `<dest>.<16 hex digits>.tmp`
/// and the older fixed `<dest>.tmp`.
fn remove_stale_temps(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale = |entry: &str| {
        let Some(rest) = entry.strip_prefix(name).and_then(|r| r.strip_suffix(".tmp")) else {
            return false;
        };
        let random = rest.strip_prefix('.').unwrap_or("x");
        rest.is_empty() || (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(stale) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = TempFile::new(dest);
    let mut f = tmp.create()?;
    f.write_all(bytes).map_err(|e| tmp.failed(e))?;
    f.sync_all().map_err(|e| tmp.failed(e))?;
    tmp.persist()
}

/// Writes `img` as a PNG file, atomically like [`write_atomic`].
pub fn write_png(dest: &Path, img: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| PipelineError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    write_atomic(dest, &bytes)
}
