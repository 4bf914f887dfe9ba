//! Splitting a job's data into work items: line-aligned byte ranges of plain files, line ranges
//! of compressed ones.
//!
//! Two passes over the files: the first counts data rows (so the test split, the last
//! `test_split` of the rows, is exact), the second cuts items of about total / 32 rows and at the
//! train/test boundary. A `.gz` file cannot be cut into byte ranges: its items are ranges of
//! lines of the decompressed stream (a worker decompresses from the start and skips to its
//! range), and the second pass needs only its line count. A `.gz` that breaks off (truncated or
//! corrupt) keeps the lines before the break; its last item reads on to the break, where the
//! worker counts one bad line, so the job goes on or fails by `max_bad_ratio`.

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
    /// `start` and `end` count lines of the decompressed stream (0-based, header included).
    #[serde(default)]
    pub lines: bool,
}

/// Why data could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A path or glob matched nothing, or a pattern is malformed.
    #[error("data path {0:?} matches no file")]
    NoFiles(String),
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
    Ok(files)
}

/// The complete files matching a follow source's patterns now, sorted by name, each once,
/// canonical: names starting with `.` or `_` are files a sink is still writing (renamed into
/// place when complete), and no match is no error (the stream has not started yet).
pub fn list_follow(patterns: &[String], roots: &ember_model::DataRoots) -> Result<Vec<PathBuf>, PlanError> {
    let mut files = Vec::new();
    for pattern in patterns {
        roots.check_pattern(pattern)?;
        let found = glob::glob(pattern).map_err(|_| PlanError::NoFiles(pattern.clone()))?;
        for path in found.filter_map(Result::ok) {
            let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(ember_core::files::is_in_progress);
            if !hidden && path.is_file() {
                files.push(roots.check(&path)?);
            }
        }
    }
    files.sort();
    files.dedup();
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

fn compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Lines of a `.gz` file's decompressed stream (a last line without a newline counts), and
/// whether the stream broke off (truncated or corrupt) after them. Only complete lines count
/// then: the broken one is the bad line the reader will report.
fn count_compressed(path: &Path) -> Result<(u64, bool), PlanError> {
    let io = |source| PlanError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(file));
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(_) => return Ok((lines, true)),
        };
        if chunk.is_empty() {
            return Ok((lines + u64::from(last != b'\n'), false));
        }
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        last = chunk[chunk.len() - 1];
        let n = chunk.len();
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
    let mut counts = Vec::with_capacity(files.len());
    for f in files {
        counts.push(if compressed(f) {
            count_compressed(f)?
        } else {
            let mut lines = 0u64;
            scan(f, |_, _| lines += 1)?;
            (lines, false)
        });
    }
    let total: u64 = counts.iter().map(|(lines, _)| lines.saturating_sub(header_lines)).sum();
    let rows_per_item = (total / size.target_items.max(1)).clamp(size.min_rows.max(1), size.max_rows.max(1));
    let train_rows = total - (total as f64 * test_split).round() as u64;
    let mut ranges = Vec::new();
    let mut row = 0u64;
    for (f, (lines, broken)) in files.iter().zip(counts) {
        let lines_only = compressed(f);
        let mut cut =
            Cutter { path: f, header_lines, rows_per_item, train_rows, lines: lines_only, line_no: 0, current: None };
        if cut.lines {
            // Line ranges need no second read: line i starts at i.
            for i in 0..lines {
                cut.line(i, 1, &mut row, &mut ranges);
            }
        } else {
            scan(f, |start, len| cut.line(start, len, &mut row, &mut ranges))?;
        }
        if let Some(mut last) = cut.current.take() {
            if broken {
                // Read on to the break, which the worker reports as one bad line.
                last.end = u64::MAX;
                last.rows += 1;
            }
            ranges.push(last);
        }
    }
    Ok(ranges)
}

/// Cuts one file's lines into ranges.
struct Cutter<'a> {
    path: &'a Path,
    header_lines: u64,
    rows_per_item: u64,
    train_rows: u64,
    /// Line ranges (a compressed file), not byte ranges.
    lines: bool,
    /// Lines of this file seen.
    line_no: u64,
    current: Option<Range>,
}

impl Cutter<'_> {
    /// The file's next line, at `start` with `len` (bytes, or 1 line); `row` counts data rows
    /// over all files.
    fn line(&mut self, start: u64, len: u64, row: &mut u64, ranges: &mut Vec<Range>) {
        self.line_no += 1;
        if self.line_no <= self.header_lines {
            return;
        }
        let phase = if *row < self.train_rows { Phase::Train } else { Phase::Test };
        let full = self.current.as_ref().is_some_and(|r| r.rows >= self.rows_per_item || r.phase != phase);
        if full {
            ranges.extend(self.current.take());
        }
        let (path, first_line, lines) = (self.path, self.line_no, self.lines);
        let r = self.current.get_or_insert_with(|| Range {
            path: path.to_path_buf(),
            start,
            end: start,
            first_line,
            rows: 0,
            phase,
            lines,
        });
        r.end = start + len;
        r.rows += 1;
        *row += 1;
    }
}

/// The column names on the first line of a CSV job's first file (empty when unreadable or
/// outside `roots`: the job's own reads report that properly).
pub fn csv_header(data: &ember_core::job::DataSpec, roots: &ember_model::DataRoots) -> Vec<String> {
    use std::io::Read;
    let delimiter = data.schema.as_ref().map_or(',', |s| s.delimiter);
    let Some(first) = expand(&data.paths, roots).ok().and_then(|f| f.into_iter().next()) else { return Vec::new() };
    // A header is one line of at most 1 MiB.
    let mut line = String::new();
    let read = File::open(&first).and_then(|f| {
        let f: Box<dyn Read> =
            if compressed(&first) { Box::new(flate2::read::MultiGzDecoder::new(f)) } else { Box::new(f) };
        BufReader::new(f.take(1 << 20)).read_line(&mut line)
    });
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
    fn missing_and_outside_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let any = ember_model::DataRoots::unrestricted();
        assert!(matches!(expand(&[format!("{}/*.nope", dir.path().display())], &any), Err(PlanError::NoFiles(_))));
        let elsewhere = tempfile::tempdir().unwrap();
        let roots = ember_model::DataRoots::new(&[elsewhere.path().to_path_buf()]).unwrap();
        std::fs::write(dir.path().join("x.tsv"), b"1\n").unwrap();
        let outside = expand(&[format!("{}/x.tsv", dir.path().display())], &roots);
        assert!(matches!(outside, Err(PlanError::Root(_))), "{outside:?}");
    }

    fn gzip(path: &Path, text: &str) {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    }

    /// A `.gz` file is cut into line ranges that cover every data line once, split exactly like
    /// the plain file; a truncated one keeps the lines before the break, and its last range
    /// reads on to the break (one row of room for the bad line the reader will count).
    #[test]
    fn compressed_files_are_cut_into_line_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = std::iter::once("h\n".to_string()).chain((1..=10).map(|i| format!("{i}\n"))).collect();
        let (plain, gz) = (dir.path().join("a.csv"), dir.path().join("a.csv.gz"));
        std::fs::write(&plain, &text).unwrap();
        gzip(&gz, &text);
        let size = ItemSize { target_items: 100, min_rows: 3, max_rows: 3 };
        let (by_bytes, by_lines) =
            (plan(&[plain], 1, 0.3, size).unwrap(), plan(std::slice::from_ref(&gz), 1, 0.3, size).unwrap());
        let shape = |r: &Range| (r.first_line, r.rows, r.phase);
        assert_eq!(by_bytes.iter().map(shape).collect::<Vec<_>>(), by_lines.iter().map(shape).collect::<Vec<_>>());
        assert!(by_lines.iter().all(|r| r.lines && r.end - r.start == r.rows && r.start + 1 == r.first_line));
        assert_eq!((by_lines[0].start, by_lines.last().unwrap().end), (1, 11), "the header is line 0");

        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() - 12]).unwrap(); // cut into the trailer and data
        let broken = plan(&[gz], 1, 0.0, size).unwrap();
        let last = broken.last().unwrap();
        assert_eq!(last.end, u64::MAX, "{broken:?}");
        let data_rows: u64 = broken.iter().map(|r| r.rows).sum::<u64>() - 1;
        assert!(data_rows <= 10, "{broken:?}");
    }
}
