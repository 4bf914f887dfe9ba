//! Data roots: the directories a worker or scheduler reads job data from.
//!
//! A job file names its data paths, and anyone who can submit a job chooses them; without a
//! bound, a job could make the cluster's processes read any file they can (and show its lines
//! back as bad-line samples). A server started with `--data-root DIR` (several allowed) reads
//! only files whose canonical path (symlinks and `..` resolved) lies under one of them.
//!
//! Invariant: [`DataRoots::check`] is called on every file before it is opened, on the path that
//! is then opened (the canonical one), so a symlink swapped in later cannot lead outside.

use std::path::{Path, PathBuf};

/// Why a data path was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataRootError {
    /// The path resolves outside every root.
    #[error("data path {0} is outside this server's data roots (its --data-root options)")]
    Outside(PathBuf),
    /// The path could not be resolved (missing, unreadable directory).
    #[error("data path {path}: {source}")]
    Resolve {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The directories data may be read from; [`DataRoots::unrestricted`] for a process that only
/// reads its own user's job files (`ember train`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoots {
    /// Canonical directories; `None` reads anything.
    roots: Option<Vec<PathBuf>>,
}

impl DataRoots {
    /// Roots at `dirs`, each resolved now (so a root that does not exist is a startup error).
    pub fn new(dirs: &[PathBuf]) -> Result<Self, DataRootError> {
        let roots = dirs
            .iter()
            .map(|d| d.canonicalize().map_err(|source| DataRootError::Resolve { path: d.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roots: Some(roots) })
    }

    /// No restriction: every readable file.
    pub fn unrestricted() -> Self {
        Self { roots: None }
    }

    /// The roots, for logs (`None` when unrestricted).
    pub fn dirs(&self) -> Option<&[PathBuf]> {
        self.roots.as_deref()
    }

    /// Checks a path or glob before it is expanded: the directory it starts from (its
    /// components up to the first with `*`, `?` or `[`) must lie under a root. Without this a
    /// pattern like `/**/*` would walk the whole filesystem before any match is refused.
    pub fn check_pattern(&self, pattern: &str) -> Result<(), DataRootError> {
        let Some(roots) = &self.roots else { return Ok(()) };
        let literal: PathBuf = Path::new(pattern)
            .components()
            .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
            .collect();
        let start = if literal.as_os_str().is_empty() { PathBuf::from(".") } else { literal };
        // A plain path names a file: its directory is where the read starts.
        let start = if start.is_file() { start.parent().map(Path::to_path_buf).unwrap_or(start) } else { start };
        let start = if start.as_os_str().is_empty() { PathBuf::from(".") } else { start };
        match start.canonicalize() {
            Ok(dir) if roots.iter().any(|r| dir.starts_with(r)) => Ok(()),
            Ok(_) => Err(DataRootError::Outside(PathBuf::from(pattern))),
            // A directory that does not exist matches nothing; the expansion says so.
            Err(_) => Ok(()),
        }
    }

    /// The canonical form of `path` if it lies under a root.
    pub fn check(&self, path: &Path) -> Result<PathBuf, DataRootError> {
        let canonical =
            path.canonicalize().map_err(|source| DataRootError::Resolve { path: path.to_path_buf(), source })?;
        match &self.roots {
            None => Ok(canonical),
            Some(roots) if roots.iter().any(|r| canonical.starts_with(r)) => Ok(canonical),
            Some(_) => Err(DataRootError::Outside(path.to_path_buf())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_a_root_pass_whatever_the_path_says() {
        let dir = tempfile::tempdir().unwrap();
        let (root, other) = (dir.path().join("data"), dir.path().join("secret"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(root.join("a.tsv"), "1\n").unwrap();
        std::fs::write(other.join("key.pem"), "private\n").unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&root)).unwrap();
        assert!(roots.check(&root.join("a.tsv")).is_ok());
        for escape in [other.join("key.pem"), root.join("../secret/key.pem")] {
            assert!(matches!(roots.check(&escape), Err(DataRootError::Outside(_))), "{}", escape.display());
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(other.join("key.pem"), root.join("link.tsv")).unwrap();
            assert!(matches!(roots.check(&root.join("link.tsv")), Err(DataRootError::Outside(_))));
        }
        assert!(matches!(roots.check(&root.join("missing")), Err(DataRootError::Resolve { .. })));
        assert!(DataRoots::unrestricted().check(&other.join("key.pem")).is_ok());
        // Patterns are checked before they are expanded.
        assert!(roots.check_pattern(&format!("{}/*.tsv", root.display())).is_ok());
        assert!(roots.check_pattern(&root.join("a.tsv").display().to_string()).is_ok());
        for outside in ["/**/*", "/etc/*"] {
            assert!(matches!(roots.check_pattern(outside), Err(DataRootError::Outside(_))), "{outside}");
        }
        let sneaky = format!("{}/../secret/*", root.display());
        assert!(matches!(roots.check_pattern(&sneaky), Err(DataRootError::Outside(_))));
        assert!(DataRoots::new(&[dir.path().join("nope")]).is_err());
    }
}
