//! `ember join`'s loop: follows a directory of prediction logs and one of click events (JSON
//! lines, files renamed into place, a file of each per time bucket under the same name), joins
//! them with a [`Joiner`], and writes labelled rows as `part-NNNNNN.tsv` files renamed into place:
//! a directory a `follow` job reads.
//!
//! Bucket X is joined once both `predictions/X` and `labels/X` exist, in name order. When no new
//! bucket has arrived for `idle_ms` (or on stop), click files without a prediction file (late
//! clicks after the last bucket) are read, every open prediction is closed, and the loop ends.
//! Progress (the last bucket joined, the next output file) is kept in `OUT/.join.json`, so a
//! restarted joiner goes on after it; predictions open when it stopped are closed then (a stop)
//! or lost (a crash: counted nowhere, the note says so).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ember_core::files::write_atomically;
use serde::{Deserialize, Serialize};

use super::{Click, JoinStats, Joiner, Prediction};

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// Prediction logs.
    pub predictions: PathBuf,
    /// Click events.
    pub labels: PathBuf,
    /// Where joined rows go.
    pub out: PathBuf,
    /// How long a prediction waits for its click, in event time.
    pub window_ms: u64,
    /// Predictions held at most.
    pub max_open: usize,
    /// How often the directories are listed.
    pub poll: Duration,
    /// End after this long without a new bucket (None: run until stopped).
    pub idle: Option<Duration>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The last bucket joined.
    last: Option<String>,
    /// The next output file's number.
    next_part: u64,
}

/// Files of `dir` in name order (skipping names a sink is still writing: `.` and `_`).
fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !ember_core::files::is_in_progress(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Reads one JSON-lines file into the join; a line that does not parse is counted and skipped.
fn read_lines<T: for<'de> Deserialize<'de>>(
    path: &Path,
    joiner: &mut Joiner,
    mut each: impl FnMut(&mut Joiner, T),
) -> std::io::Result<()> {
    for (n, line) in std::fs::read_to_string(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(v) => each(joiner, v),
            Err(e) => {
                tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping a line that does not parse");
                joiner.bad_line();
            }
        }
    }
    Ok(())
}

/// Runs the join until idle or `stop`; returns its figures.
pub fn run(config: &JoinConfig, stop: &AtomicBool) -> std::io::Result<JoinStats> {
    std::fs::create_dir_all(&config.out)?;
    let progress_path = config.out.join(".join.json");
    let mut progress: Progress = match std::fs::read(&progress_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Progress::default(),
        Err(e) => return Err(e),
    };
    let mut joiner = Joiner::new(config.window_ms, config.max_open);
    let mut rows = Vec::new();
    let mut last_new = Instant::now();
    loop {
        let labels = names(&config.labels)?;
        let ready: Vec<String> = names(&config.predictions)?
            .into_iter()
            .filter(|n| progress.last.as_ref().is_none_or(|last| n > last) && labels.binary_search(n).is_ok())
            .collect();
        for name in &ready {
            read_lines(&config.predictions.join(name), &mut joiner, |j, p: Prediction| j.predict(p, &mut rows))?;
            read_lines(&config.labels.join(name), &mut joiner, |j, c: Click| j.click(&c))?;
            joiner.advance(&mut rows);
            progress.last = Some(name.clone());
            write_rows(config, &mut progress, &mut rows)?;
            last_new = Instant::now();
        }
        let idle = config.idle.is_some_and(|idle| last_new.elapsed() >= idle);
        if idle || stop.load(Ordering::Relaxed) {
            // Late clicks after the last bucket, then the end of every window.
            let late: Vec<&String> =
                labels.iter().filter(|n| progress.last.as_ref().is_none_or(|last| *n > last)).collect();
            for name in late {
                read_lines(&config.labels.join(name), &mut joiner, |j, c: Click| j.click(&c))?;
                progress.last = Some(name.clone());
            }
            joiner.flush(&mut rows);
            write_rows(config, &mut progress, &mut rows)?;
            return Ok(joiner.stats());
        }
        if ready.is_empty() {
            std::thread::sleep(config.poll);
        }
    }
}

/// Writes the rows closed so far as the next part file (renamed into place), then the progress.
fn write_rows(config: &JoinConfig, progress: &mut Progress, rows: &mut Vec<String>) -> std::io::Result<()> {
    if !rows.is_empty() {
        let path = config.out.join(format!("part-{:06}.tsv", progress.next_part));
        write_atomically(&path, rows.concat().as_bytes())?;
        progress.next_part += 1;
        rows.clear();
    }
    let bytes = serde_json::to_vec(progress).map_err(std::io::Error::other)?;
    write_atomically(&config.out.join(".join.json"), &bytes)
}
