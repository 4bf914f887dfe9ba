//! `ember gen-data --stream`: a time-ordered stream of windows from a drifting hidden model, as
//! a stream processor's file sink would leave it in a directory.
//!
//! Layout of the directory:
//! - `part-NNNNNN.tsv`: window N's rows, Criteo TSV (the joined samples a `follow` source reads).
//!   Each is written under a dot-name and renamed into place when complete, so a reader never
//!   sees half a file; name order is time order.
//! - `oracle/part-NNNNNN.txt`: each row's true click probability under the window's model.
//! - with `serving_log`, instead of the TSV files: `predictions/part-NNNNNN.jsonl` (one line per
//!   prediction: `request_id`, `time_ms`, `model_version`, `features`, the 39 raw cells joined
//!   by tabs) and `labels/part-NNNNNN.jsonl` (one line per click: `request_id`, `time_ms`, in the
//!   file of the window its time falls in). A prediction without a click event is a negative
//!   once the join's window closes.
//! - `stream.json`: what was generated (windows, rows, times, drift, poisoned windows).
//!
//! Window N's rows carry times in `[start + N * window, start + (N + 1) * window)`.

use std::path::{Path, PathBuf};

use ember_core::files::write_atomically;

use super::{generate, SynthConfig, Window};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Windows to write.
    pub windows: u64,
    /// Rows per window.
    pub rows_per_window: u64,
    /// Seeds the hidden model and the sampling.
    pub seed: u64,
    /// Share of weights that drift over the stream (0..=1).
    pub drift: f32,
    /// How far large fields' ids slide per window.
    pub id_shift: u64,
    /// Windows whose labels are flipped (inclusive range), if any.
    pub poisoned: Option<(u64, u64)>,
    /// Time of the first row, in milliseconds since the epoch.
    pub start_ms: u64,
    /// Length of a window, in milliseconds.
    pub window_ms: u64,
    /// Write prediction logs and click events instead of joined rows.
    pub serving_log: bool,
    /// Delay from a prediction to its click event, in milliseconds.
    pub label_delay_ms: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSummary {
    /// Rows (predictions, with `serving_log`) written.
    pub rows: u64,
    /// Positives among them (click events, with `serving_log`).
    pub positives: u64,
    /// The data files, in time order.
    pub files: Vec<PathBuf>,
}

fn part(dir: &Path, n: u64, ext: &str) -> PathBuf {
    dir.join(format!("part-{n:06}.{ext}"))
}

/// Writes the stream into `dir` (created if missing).
pub fn write_stream(dir: &Path, spec: &StreamSpec) -> std::io::Result<StreamSummary> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    if spec.windows == 0 || spec.rows_per_window == 0 || spec.window_ms == 0 {
        return Err(invalid("windows, rows per window and the window length must be positive"));
    }
    if !(0.0..=1.0).contains(&spec.drift) {
        return Err(invalid("drift is a share between 0 and 1"));
    }
    for sub in ["oracle", "predictions", "labels"].iter().take(if spec.serving_log { 3 } else { 1 }) {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let mut summary = StreamSummary { rows: 0, positives: 0, files: Vec::new() };
    // Click events by the window their time falls in (a late click lands in a later file).
    let mut late_labels: Vec<(u64, u64, String)> = Vec::new();
    for n in 0..spec.windows {
        let window = Window {
            index: n,
            progress: if spec.windows > 1 { n as f32 / (spec.windows - 1) as f32 } else { 0.0 },
            drift: spec.drift,
            id_shift: spec.id_shift,
            poisoned: spec.poisoned.is_some_and(|(a, b)| (a..=b).contains(&n)),
        };
        let (mut rows, mut oracle) = (Vec::new(), Vec::new());
        let config = SynthConfig { rows: spec.rows_per_window, seed: spec.seed, window: Some(window) };
        generate(config, &mut rows, Some(&mut oracle))?;
        write_atomically(&part(&dir.join("oracle"), n, "txt"), &oracle)?;
        let text = String::from_utf8_lossy(&rows);
        summary.rows += spec.rows_per_window;
        summary.positives += text.lines().filter(|l| l.starts_with('1')).count() as u64;
        if !spec.serving_log {
            let path = part(dir, n, "tsv");
            write_atomically(&path, &rows)?;
            summary.files.push(path);
            continue;
        }
        let mut predictions = String::new();
        for (i, line) in text.lines().enumerate() {
            let (label, features) = line.split_once('\t').unwrap_or((line, ""));
            let time_ms = spec.start_ms + n * spec.window_ms + i as u64 * spec.window_ms / spec.rows_per_window;
            let id = format!("{n:06}-{i:08}");
            let record =
                serde_json::json!({ "request_id": id, "time_ms": time_ms, "model_version": 0, "features": features });
            predictions.push_str(&record.to_string());
            predictions.push('\n');
            if label == "1" {
                let at = time_ms + spec.label_delay_ms;
                let event = serde_json::json!({ "request_id": id, "time_ms": at });
                late_labels.push(((at - spec.start_ms) / spec.window_ms, at, event.to_string()));
            }
        }
        let path = part(&dir.join("predictions"), n, "jsonl");
        write_atomically(&path, predictions.as_bytes())?;
        summary.files.push(path);
        let (now, later): (Vec<_>, Vec<_>) = late_labels.drain(..).partition(|(w, _, _)| *w <= n);
        late_labels = later;
        write_atomically(&part(&dir.join("labels"), n, "jsonl"), lines(&now).as_bytes())?;
    }
    // Clicks after the last window's end: one more labels file.
    if spec.serving_log && !late_labels.is_empty() {
        write_atomically(&part(&dir.join("labels"), spec.windows, "jsonl"), lines(&late_labels).as_bytes())?;
    }
    let manifest = serde_json::json!({
        "windows": spec.windows, "rows_per_window": spec.rows_per_window, "seed": spec.seed,
        "drift": (f64::from(spec.drift) * 1e6).round() / 1e6, "id_shift": spec.id_shift,
        "poisoned": spec.poisoned.map(|(a, b)| vec![a, b]),
        "start_ms": spec.start_ms, "window_ms": spec.window_ms, "serving_log": spec.serving_log,
        "label_delay_ms": spec.label_delay_ms, "rows": summary.rows, "positives": summary.positives,
    });
    write_atomically(&dir.join("stream.json"), format!("{manifest:#}\n").as_bytes())?;
    Ok(summary)
}

/// The events as JSON lines, in time order (a window's file holds late clicks of earlier windows).
fn lines(events: &[(u64, u64, String)]) -> String {
    let mut sorted: Vec<&(u64, u64, String)> = events.iter().collect();
    sorted.sort_by_key(|(_, at, _)| *at);
    sorted.iter().map(|(_, _, e)| format!("{e}\n")).collect()
}

#[cfg(test)]
mod tests;
