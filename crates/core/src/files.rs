//! Replacing a file whole: readers see the old contents or the new, never a torn mix.
//!
//! The new bytes go to a temporary file in the same directory (a dot-name, so directory
//! scanners that skip hidden files never pick it up, and a name of its own per call, so two
//! writers in one process never rename each other's file away), are synced, and are renamed over
//! the target.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a file name is one a writer has not finished: a dot-name (as [`write_atomically`] and
/// Flink's file sink use while writing) or an underscore-name. Readers of directories that keep
/// receiving files (follow sources, the label join) skip them until they are renamed into place.
pub fn is_in_progress(name: &str) -> bool {
    name.starts_with(['.', '_'])
}

/// Writes `bytes` to `path` through a synced temporary file renamed into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::write_atomically;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = std::env::temp_dir().join(format!("ember-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("state.json");
        write_atomically(&path, b"one").unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&path, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"two");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        assert_eq!(names, ["state.json"]);
        assert!(write_atomically(&dir.join("no-such-dir").join("x"), b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
