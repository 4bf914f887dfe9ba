//! Sample readers: Criteo TSV, libsvm, libffm and CSV, from files, globs and gzip.
//!
//! Invariants: a malformed line never stops a read; it is counted and skipped, and the first few
//! are kept with file and line number for the error message. A read fails only on I/O errors or
//! once the share of bad lines passes the job's `max_bad_ratio` (checked after a minimum number of
//! lines, so one bad line early on does not fail a job). Rows are numbered over the concatenation
//! of the files in sorted path order; a train/test split is a range of those numbers, so it is
//! the same in every run.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::features::Example;
use lines::{excerpt, read_line, Line};

mod lines;
mod parse;
pub use lines::MAX_LINE_BYTES;
pub use parse::LineParser;

pub use ember_model::schema::{CRITEO_CAT_COLUMNS, CRITEO_INT_COLUMNS};
/// Bad lines kept (as `file:line: reason`) for error messages and reports.
const KEEP_BAD: usize = 5;
/// Characters of a bad line's reason kept in those samples.
const SAMPLE_CHARS: usize = 160;
/// Lines read before the bad-line ratio may fail a read.
const MIN_LINES_FOR_RATIO: u64 = 1000;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A path or glob matched no file.
    #[error("data path {0:?} matches no file")]
    NoFiles(String),
    /// A file lies outside the process's data roots.
    #[error(transparent)]
    Root(#[from] ember_model::DataRootError),
    /// A glob pattern is malformed.
    #[error("data path {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// A CSV header does not match the schema.
    #[error("{}: {reason}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// More lines were malformed than the job allows.
    #[error("{bad} of {lines} lines malformed ({:.2}% > max_bad_ratio {:.2}%); first: {}", 100.0 * *bad as f64 / *lines as f64, 100.0 * max_ratio, first.join("; "))]
    TooManyBadLines {
        /// Malformed lines.
        bad: u64,
        /// Lines read.
        lines: u64,
        /// The allowed ratio.
        max_ratio: f64,
        /// The first few, as `file:line: reason`.
        first: Vec<String>,
    },
}

/// Malformed lines seen by a read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadLines {
    /// How many.
    pub count: u64,
    /// The first few, as `file:line: reason`.
    pub first: Vec<String>,
}

impl BadLines {
    fn record(&mut self, path: &Path, line: u64, reason: &str) {
        self.count += 1;
        if self.first.len() < KEEP_BAD {
            self.first.push(format!("{}:{line}: {}", path.display(), excerpt(reason, SAMPLE_CHARS)));
        }
    }

    /// Adds another read's bad lines (the hold-out split's to the training split's).
    pub fn merge(&mut self, other: BadLines) {
        self.count += other.count;
        let room = KEEP_BAD.saturating_sub(self.first.len());
        self.first.extend(other.first.into_iter().take(room));
    }
}

/// Expands paths and globs into files, sorted, each once; every file must lie under `roots`
/// and is returned in its canonical form (the path then opened).
pub fn expand_paths(patterns: &[String], roots: &ember_model::DataRoots) -> Result<Vec<PathBuf>, ReadError> {
    let mut files = Vec::new();
    for pattern in patterns {
        roots.check_pattern(pattern)?;
        let matches = glob::glob(pattern)
            .map_err(|e| ReadError::BadPattern { pattern: pattern.clone(), reason: e.to_string() })?;
        let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|p| p.is_file()).collect();
        if found.is_empty() {
            return Err(ReadError::NoFiles(pattern.clone()));
        }
        found.sort();
        for f in found {
            files.push(roots.check(&f)?);
        }
    }
    files.dedup();
    Ok(files)
}

/// Opens a file for line reading, decompressing `.gz`.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>, ReadError> {
    let file = File::open(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

/// Counts the data rows of `files` (lines, less each file's header).
pub fn count_rows(files: &[PathBuf], parser: &LineParser) -> Result<u64, ReadError> {
    let mut rows = 0u64;
    for path in files {
        let mut reader = open_lines(path)?;
        let mut lines = 0u64;
        let mut last_byte = b'\n';
        loop {
            let buf = reader.fill_buf().map_err(|source| ReadError::Io { path: path.clone(), source })?;
            if buf.is_empty() {
                break;
            }
            lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
            last_byte = buf[buf.len() - 1];
            let len = buf.len();
            reader.consume(len);
        }
        if last_byte != b'\n' {
            lines += 1; // a last line without a newline
        }
        rows += lines.saturating_sub(parser.header_lines());
    }
    Ok(rows)
}

/// Parses lines into batches, counting bad lines, handing full batches to a sink.
struct Batcher<'a, F> {
    parser: &'a LineParser,
    batch_size: usize,
    batch: Vec<Example>,
    bad: BadLines,
    sink: F,
}

impl<F: FnMut(Vec<Example>) -> bool> Batcher<'_, F> {
    /// Handles one line; false when the sink wants no more.
    fn line(&mut self, path: &Path, line_no: u64, line: Line<'_>) -> bool {
        let parsed = match line {
            Line::Text(text) => self.parser.parse(text),
            Line::NotUtf8(at) => Err(format!("not valid UTF-8 (byte {at})")),
            Line::TooLong(len) => Err(format!("{len} bytes; lines are at most {MAX_LINE_BYTES} bytes")),
        };
        match parsed {
            Ok(example) => self.batch.push(example),
            Err(reason) => self.bad.record(path, line_no, &reason),
        }
        if self.batch.len() < self.batch_size {
            return true;
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        (self.sink)(full)
    }

    fn finish(mut self) -> BadLines {
        if !self.batch.is_empty() {
            (self.sink)(std::mem::take(&mut self.batch));
        }
        self.bad
    }
}

/// Reads rows `[start, end)` of `files` in batches of `batch_size` examples, handing each batch to
/// `sink` (which returns false to stop early). Fails once malformed lines pass `max_bad_ratio`.
/// Blocking: run it on its own thread.
pub fn read_rows(
    files: &[PathBuf],
    parser: &LineParser,
    (start, end): (u64, u64),
    batch_size: usize,
    max_bad_ratio: f64,
    sink: impl FnMut(Vec<Example>) -> bool,
) -> Result<BadLines, ReadError> {
    let mut b = Batcher { parser, batch_size, batch: Vec::with_capacity(batch_size), bad: BadLines::default(), sink };
    let mut row = 0u64;
    let mut seen = 0u64;
    let mut buf = Vec::new();
    'files: for path in files {
        let mut reader = open_lines(path)?;
        let mut line_no = 0u64;
        loop {
            let io = |source| ReadError::Io { path: path.clone(), source };
            let Some(line) = read_line(&mut reader, &mut buf).map_err(io)? else { break };
            line_no += 1;
            if line_no <= parser.header_lines() {
                continue;
            }
            let this_row = row;
            row += 1;
            if this_row < start {
                continue;
            }
            if this_row >= end {
                break 'files;
            }
            seen += 1;
            if !b.line(path, line_no, line) {
                return Ok(b.bad);
            }
            if seen >= MIN_LINES_FOR_RATIO && b.bad.count as f64 > max_bad_ratio * seen as f64 {
                return Err(too_many(&b.bad, seen, max_bad_ratio));
            }
        }
    }
    if b.bad.count as f64 > max_bad_ratio * seen as f64 {
        return Err(too_many(&b.bad, seen, max_bad_ratio));
    }
    Ok(b.finish())
}

/// Reads the lines in bytes `[start, end)` of one plain file (a scheduler work item; `start` is a
/// line start and `first_line` its 1-based number). Bad lines are counted, not judged: the
/// scheduler applies the job's ratio over all items. Returns the bad lines and the rows parsed.
pub fn read_range(
    path: &Path,
    parser: &LineParser,
    (start, end): (u64, u64),
    first_line: u64,
    batch_size: usize,
    sink: impl FnMut(Vec<Example>) -> bool,
) -> Result<BadLines, ReadError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 16, file.take(end.saturating_sub(start)));
    read_from(&mut reader, path, parser, first_line, batch_size, sink)
}

/// Reads lines `[start, end)` of one file, `.gz` decompressed (0-based indexes over every line
/// of the decompressed stream, header included): a scheduler work item of a compressed file,
/// which cannot be cut into byte ranges. A stream that breaks off (truncated or corrupt) is one
/// bad line, numbered where it broke, not an error: the lines before it count.
pub fn read_lines(
    path: &Path,
    parser: &LineParser,
    (start, end): (u64, u64),
    batch_size: usize,
    sink: impl FnMut(Vec<Example>) -> bool,
) -> Result<BadLines, ReadError> {
    let mut reader = open_lines(path)?;
    let mut b = Batcher { parser, batch_size, batch: Vec::with_capacity(batch_size), bad: BadLines::default(), sink };
    let mut buf = Vec::new();
    let mut index = 0u64;
    while index < end {
        match read_line(&mut reader, &mut buf) {
            Ok(None) => break,
            Ok(Some(line)) => {
                if index >= start && !b.line(path, index + 1, line) {
                    break;
                }
            }
            Err(e) => {
                b.bad.record(path, index + 1, &format!("the compressed stream breaks off: {e}"));
                break;
            }
        }
        index += 1;
    }
    Ok(b.finish())
}

/// Reads every line of `reader` (named `path` in bad-line samples, its first line numbered
/// `first_line`) into batches for `sink`, counting bad lines: what [`read_range`] does once the
/// file is open, and what the fuzz targets drive with arbitrary bytes.
pub fn read_from(
    reader: &mut dyn BufRead,
    path: &Path,
    parser: &LineParser,
    first_line: u64,
    batch_size: usize,
    sink: impl FnMut(Vec<Example>) -> bool,
) -> Result<BadLines, ReadError> {
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let mut b = Batcher { parser, batch_size, batch: Vec::with_capacity(batch_size), bad: BadLines::default(), sink };
    let mut buf = Vec::new();
    for line_no in first_line.. {
        match read_line(reader, &mut buf).map_err(io)? {
            Some(line) if b.line(path, line_no, line) => {}
            _ => break,
        }
    }
    Ok(b.finish())
}

fn too_many(bad: &BadLines, lines: u64, max_ratio: f64) -> ReadError {
    ReadError::TooManyBadLines { bad: bad.count, lines, max_ratio, first: bad.first.clone() }
}

#[cfg(test)]
mod tests;
