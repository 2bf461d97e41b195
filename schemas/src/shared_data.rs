//! Where the real data shared beside the repository (`../shared`) is, for tests and benches.
//!
//! A test that needs it asks [`find`]. On a developer's machine without the data that is a skip
//! (with a message); where `CI` or `SPLITMASK_REQUIRE_SHARED` is set it is a failure, so a
//! broken path cannot turn a test green without testing anything.

use std::path::PathBuf;

/// Overrides the folder (default: `shared` beside the workspace root).
pub const SHARED_ENV: &str = "SPLITMASK_SHARED";
/// Set (to anything but `0` or empty) to make absent shared data a failure.
pub const REQUIRE_ENV: &str = "SPLITMASK_REQUIRE_SHARED";

/// The shared data folder: `$SPLITMASK_SHARED`, else `../shared` from the workspace root.
pub fn root() -> PathBuf {
    match std::env::var_os(SHARED_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Whether absent shared data must fail the test (`CI` or `SPLITMASK_REQUIRE_SHARED` set).
pub fn required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set(REQUIRE_ENV) || set("CI")
}

/// `<root>/<rel>` where it exists. Absent: `None` with a SKIP message, or a panic naming the
/// path when [`required`].
///
/// # Panics
/// When the path is absent and shared data is required: the caller is a test that must not
/// pass without its data.
pub fn find(rel: &str) -> Option<PathBuf> {
    let path = root().join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required(),
        "{} is absent and shared data is required ({REQUIRE_ENV} or CI is set); \
         put the shared data beside the repository or point {SHARED_ENV} at it",
        path.display()
    );
    eprintln!(
        "SKIP: {} is absent (shared data not beside the repository)",
        path.display()
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the environment is process-wide, and tests of one binary run in parallel.
    #[test]
    fn absent_data_skips_unless_required() {
        let dir = std::env::temp_dir().join(format!("shared-data-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("present")).unwrap();
        std::env::set_var(SHARED_ENV, &dir);
        std::env::remove_var("CI");
        std::env::set_var(REQUIRE_ENV, "0");
        assert_eq!(find("present"), Some(dir.join("present")));
        assert_eq!(find("absent"), None);
        std::env::set_var(REQUIRE_ENV, "1");
        assert_eq!(find("present"), Some(dir.join("present")));
        let failed = std::panic::catch_unwind(|| find("absent"));
        assert!(failed.is_err(), "absent data must fail when required");
        std::env::remove_var(REQUIRE_ENV);
        std::env::remove_var(SHARED_ENV);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
