//! Reading the raw dataset's files, which its metadata names: the metadata is outside input,
//! so what it names must stay inside the dataset root, and only regular files of a bounded
//! size are read.
//!
//! The rule for symlinks: a path the metadata gives may not leave the root by itself
//! (absolute, `..`), but symlinks that are in the root are followed wherever they point. A
//! folder of symlinks to images kept elsewhere is a real layout (a shared image store, a
//! subset made with `ln -s`), and whoever can place a symlink in the root could as well
//! copy the file there. What a followed path reaches must still be a regular file: devices
//! (`/dev/zero`) and FIFOs are skipped before any byte is read, so they can neither grow memory
//! nor hang the run.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest source file read: 512 MiB, far above any photo (a 100 MP JPEG is about 30 MB).
pub const MAX_SOURCE_BYTES: u64 = 512 << 20;

/// `root/rel` when `rel` stays inside `root`; otherwise the skip reason, which does not say
/// whether anything exists at the path named.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    match schemas::manifest::stays_inside(rel) {
        true => Ok(root.join(rel)),
        false => Err(format!(
            "{rel:?} is not a relative path inside the dataset folder (absolute, `..` or empty): not read"
        )),
    }
}

/// The bytes of the regular file at `root/rel`, at most `MAX_SOURCE_BYTES`; an error is a
/// skip reason.
pub fn read_source(root: &Path, rel: &str) -> Result<Vec<u8>, String> {
    let path = inside(root, rel)?;
    read_regular(&path, MAX_SOURCE_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "file listed in the metadata is missing".to_string(),
        std::io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("cannot read: {e}"),
    })
}

/// The bytes of the regular file at `path`, at most `max`: a device (`/dev/zero`), a FIFO or a
/// folder is refused before any byte is read, and so is a larger file or one that grows
/// over `max` while read.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let refuse = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut file = open_nonblocking(path)?;
    // The opened file's own type and size: no swap between a check and the read.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(format!("not a regular file ({:?}): not read", meta.file_type())));
    }
    if meta.len() > max {
        return Err(refuse(format!("{} bytes, over the {max}-byte limit", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.by_ref().take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(refuse(format!("grew over the {max}-byte limit while read")));
    }
    Ok(bytes)
}

/// Opens for reading without blocking on a FIFO (regular files ignore the flag).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths_stay_inside_the_root_and_only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/img.jpg"), b"jpeg").unwrap();
        let private = dir.path().join("private.jpg");
        std::fs::write(&private, b"secret").unwrap();
        assert_eq!(read_source(&root, "a/img.jpg").unwrap(), b"jpeg");
        for hostile in [private.to_str().unwrap(), "../private.jpg", "a/../../private.jpg", ""] {
            let err = read_source(&root, hostile).unwrap_err();
            assert!(
                err.contains("not a relative path inside the dataset folder"),
                "{hostile}: {err}"
            );
        }
        assert_eq!(
            read_source(&root, "a/none.jpg").unwrap_err(),
            "file listed in the metadata is missing"
        );
        assert!(read_source(&root, "a").unwrap_err().starts_with("not a regular file"));
    }

    /// The documented rule: a symlink in the root is followed (symlink farms work), and a
    /// device or a FIFO it reaches is skipped without reading or blocking.
    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_to_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = dir.path().join("store.jpg");
        std::fs::write(&store, b"jpeg").unwrap();
        std::os::unix::fs::symlink(&store, root.join("farm.jpg")).unwrap();
        assert_eq!(read_source(&root, "farm.jpg").unwrap(), b"jpeg");
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.jpg")).unwrap();
        assert!(read_source(&root, "zero.jpg")
            .unwrap_err()
            .starts_with("not a regular file"));
        let fifo = root.join("fifo.jpg");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_source(&root, "fifo.jpg")
            .unwrap_err()
            .starts_with("not a regular file"));
    }
}
