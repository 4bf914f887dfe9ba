//! Splitting a job's data into work items: line-aligned byte ranges of plain files.
//!
//! Two passes over the files: the first counts data rows (so the test split, the last
//! `test_split` of the rows, is exact), the second cuts items of about total / 32 rows and at the
//! train/test boundary. Compressed files cannot be cut into byte ranges and are refused.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Train or test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Trained on.
    Train,
    /// Held out and evaluated.
    Test,
}

/// A contiguous run of data lines in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The file.
    pub path: PathBuf,
    /// First byte (a line start).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// 1-based line number of the first line.
    pub first_line: u64,
    /// Data lines in the range.
    pub rows: u64,
    /// Train or test.
    pub phase: Phase,
}

/// Why data could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A path or glob matched nothing, or a pattern is malformed.
    #[error("data path {0:?} matches no file")]
    NoFiles(String),
    /// A compressed file (it cannot be split into byte ranges).
    #[error("{0}: compressed files cannot be split into work items; decompress it or use `ember train`")]
    Compressed(PathBuf),
    /// A file lies outside the scheduler's data roots.
    #[error(transparent)]
    Root(#[from] ember_model::DataRootError),
    /// I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Files matching the patterns, sorted per pattern, each once, canonical; each must lie under
/// `roots`.
pub fn expand(patterns: &[String], roots: &ember_model::DataRoots) -> Result<Vec<PathBuf>, PlanError> {
    let mut files = Vec::new();
    for pattern in patterns {
        roots.check_pattern(pattern)?;
        let mut found: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|_| PlanError::NoFiles(pattern.clone()))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(PlanError::NoFiles(pattern.clone()));
        }
        found.sort();
        for f in found {
            files.push(roots.check(&f)?);
        }
    }
    files.dedup();
    for f in &files {
        if f.extension().is_some_and(|e| e == "gz") {
            return Err(PlanError::Compressed(f.clone()));
        }
    }
    Ok(files)
}

/// Calls `each(line_start, line_len)` for every line of `path`, holding no line in memory (a
/// 200 MB line costs a scan, not 200 MB).
fn scan(path: &Path, mut each: impl FnMut(u64, u64)) -> Result<(), PlanError> {
    let io = |source| PlanError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let (mut offset, mut line_start) = (0u64, 0u64);
    loop {
        let chunk = reader.fill_buf().map_err(io)?;
        if chunk.is_empty() {
            if offset > line_start {
                each(line_start, offset - line_start);
            }
            return Ok(());
        }
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                let end = offset + i as u64 + 1;
                each(line_start, end - line_start);
                line_start = end;
            }
        }
        let n = chunk.len();
        offset += n as u64;
        reader.consume(n);
    }
}

/// How big work items are.
#[derive(Debug, Clone, Copy)]
pub struct ItemSize {
    /// Aim for about this many items per job, so there are many more items than workers.
    pub target_items: u64,
    /// Smallest item (keeps per-item overhead low on small data).
    pub min_rows: u64,
    /// Largest item (keeps a lost item cheap to redo on large data).
    pub max_rows: u64,
}

/// Cuts `files` into ranges sized by `size`; the last `test_split` of all rows (skipping
/// `header_lines` per file) become test ranges.
pub fn plan(files: &[PathBuf], header_lines: u64, test_split: f64, size: ItemSize) -> Result<Vec<Range>, PlanError> {
    let mut total = 0u64;
    for f in files {
        let mut lines = 0u64;
        scan(f, |_, _| lines += 1)?;
        total += lines.saturating_sub(header_lines);
    }
    let rows_per_item = (total / size.target_items.max(1)).clamp(size.min_rows.max(1), size.max_rows.max(1));
    let train_rows = total - (total as f64 * test_split).round() as u64;
    let mut ranges = Vec::new();
    let mut row = 0u64;
    for f in files {
        let mut current: Option<Range> = None;
        let mut line_no = 0u64;
        scan(f, |start, len| {
            line_no += 1;
            if line_no <= header_lines {
                return;
            }
            let phase = if row < train_rows { Phase::Train } else { Phase::Test };
            let full = current.as_ref().is_some_and(|r| r.rows >= rows_per_item || r.phase != phase);
            if full {
                ranges.extend(current.take());
            }
            let r = current.get_or_insert_with(|| Range {
                path: f.clone(),
                start,
                end: start,
                first_line: line_no,
                rows: 0,
                phase,
            });
            r.end = start + len;
            r.rows += 1;
            row += 1;
        })?;
        ranges.extend(current);
    }
    Ok(ranges)
}

/// The column names on the first line of a CSV job's first file (empty when unreadable or
/// outside `roots`: the job's own reads report that properly).
pub fn csv_header(data: &ember_core::job::DataSpec, roots: &ember_model::DataRoots) -> Vec<String> {
    use std::io::Read;
    let delimiter = data.schema.as_ref().map_or(',', |s| s.delimiter);
    let Some(first) = expand(&data.paths, roots).ok().and_then(|f| f.into_iter().next()) else { return Vec::new() };
    // A header is one line of at most 1 MiB.
    let mut line = String::new();
    let read = File::open(&first).and_then(|f| BufReader::new(f.take(1 << 20)).read_line(&mut line));
    match read {
        Ok(_) => line.trim_end().split(delimiter).map(|c| c.trim().to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_row_once_and_split_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&a, "h\n1\n2\n3\n4\n5\n").unwrap();
        std::fs::write(&b, "h\n6\n7\n8\n9\n10").unwrap(); // no final newline
        let size = ItemSize { target_items: 100, min_rows: 2, max_rows: 2 };
        let ranges = plan(&[a.clone(), b.clone()], 1, 0.3, size).unwrap();
        let read = |r: &Range| std::fs::read_to_string(&r.path).unwrap()[r.start as usize..r.end as usize].to_string();
        let train: String = ranges.iter().filter(|r| r.phase == Phase::Train).map(read).collect();
        let test: String = ranges.iter().filter(|r| r.phase == Phase::Test).map(read).collect();
        assert_eq!(train, "1\n2\n3\n4\n5\n6\n7\n");
        assert_eq!(test, "8\n9\n10");
        assert!(ranges.iter().all(|r| r.rows <= 2 && r.rows > 0));
        assert_eq!((ranges[0].first_line, ranges[3].first_line), (2, 2), "line numbers count the header");
        assert_eq!(ranges.iter().map(|r| r.rows).sum::<u64>(), 10);
    }

    #[test]
    fn compressed_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tsv.gz"), b"").unwrap();
        let any = ember_model::DataRoots::unrestricted();
        assert!(matches!(expand(&[format!("{}/*.gz", dir.path().display())], &any), Err(PlanError::Compressed(_))));
        assert!(matches!(expand(&[format!("{}/*.nope", dir.path().display())], &any), Err(PlanError::NoFiles(_))));
        let elsewhere = tempfile::tempdir().unwrap();
        let roots = ember_model::DataRoots::new(&[elsewhere.path().to_path_buf()]).unwrap();
        std::fs::write(dir.path().join("x.tsv"), b"1\n").unwrap();
        let outside = expand(&[format!("{}/x.tsv", dir.path().display())], &roots);
        assert!(matches!(outside, Err(PlanError::Root(_))), "{outside:?}");
    }
}
