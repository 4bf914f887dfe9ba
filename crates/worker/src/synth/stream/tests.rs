//! The stream generator: files in place and in order, drift that moves the model, ids that
//! slide, poisoned windows with flipped labels, and serving logs that join back to the rows.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use super::super::{generate, SynthConfig, Window};
use super::{write_stream, StreamSpec};

fn spec() -> StreamSpec {
    StreamSpec {
        windows: 4,
        rows_per_window: 2_000,
        seed: 5,
        drift: 0.5,
        id_shift: 20_000,
        poisoned: Some((2, 2)),
        start_ms: 1_800_000_000_000,
        window_ms: 60_000,
        serving_log: false,
        label_delay_ms: 30_000,
    }
}

fn window(index: u64, progress: f32, drift: f32, poisoned: bool) -> Window {
    Window { index, progress, drift, id_shift: 20_000, poisoned }
}

/// One window's rows and oracle probabilities.
fn rows(w: Window) -> (Vec<String>, Vec<f32>) {
    let (mut data, mut oracle) = (Vec::new(), Vec::new());
    generate(SynthConfig { rows: 2_000, seed: 5, window: Some(w) }, &mut data, Some(&mut oracle)).unwrap();
    let text = String::from_utf8(data).unwrap();
    let probs = String::from_utf8(oracle).unwrap().lines().map(|p| p.parse().unwrap()).collect();
    (text.lines().map(str::to_string).collect(), probs)
}

#[test]
fn windows_are_whole_files_in_time_order_with_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write_stream(dir.path(), &spec()).unwrap();
    let names: Vec<String> = summary.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, ["part-000000.tsv", "part-000001.tsv", "part-000002.tsv", "part-000003.tsv"]);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, names, "name order is time order");
    for f in &summary.files {
        assert_eq!(std::fs::read_to_string(f).unwrap().lines().count(), 2_000);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left: {leftovers:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stream.json")).unwrap()).unwrap();
    assert_eq!(manifest["windows"], 4);
    assert_eq!(manifest["poisoned"], serde_json::json!([2, 2]));
    assert_eq!(manifest["rows"], 8_000);
    assert_eq!(manifest["positives"].as_u64().unwrap(), summary.positives);
}

#[test]
fn drift_moves_the_hidden_model_and_no_drift_keeps_it() {
    // The same window's rows (same sampling) at the stream's start and end.
    let (rows_start, start) = rows(window(1, 0.0, 0.5, false));
    let (rows_end, end) = rows(window(1, 1.0, 0.5, false));
    assert_eq!(
        rows_start.iter().map(|r| &r[2..]).collect::<Vec<_>>(),
        rows_end.iter().map(|r| &r[2..]).collect::<Vec<_>>()
    );
    let moved = start.iter().zip(&end).filter(|(a, b)| (*a - *b).abs() > 0.02).count();
    assert!(moved > 1_000, "half the weights drift: most rows' probabilities move ({moved} of 2000)");
    let (_, fixed_start) = rows(window(1, 0.0, 0.0, false));
    let (_, fixed_end) = rows(window(1, 1.0, 0.0, false));
    assert_eq!(fixed_start, fixed_end, "without drift the model does not move");
    // At the stream's start, drifting weights are still their first draw.
    assert_eq!(fixed_start, start, "drift starts from the plain model");
}

#[test]
fn large_fields_ids_slide_and_small_fields_keep_theirs() {
    let tokens = |w: u64, column: usize| -> HashSet<String> {
        rows(window(w, 0.0, 0.0, false)).0.iter().map(|r| r.split('\t').nth(column).unwrap().to_string()).collect()
    };
    // C3 (200,000 values) slides; C9 (3 values) does not. Columns: label, I1-I13, C1-C26.
    let (c3, c9) = (1 + 13 + 2, 1 + 13 + 8);
    let (early, late) = (tokens(0, c3), tokens(3, c3));
    let shared = early.intersection(&late).filter(|t| !t.is_empty()).count();
    assert!(shared * 10 < early.len(), "new ids appear and old ones fade: {shared} of {} shared", early.len());
    assert_eq!(tokens(0, c9), tokens(3, c9), "a small field keeps its values");
}

#[test]
fn a_poisoned_window_has_every_label_flipped() {
    let (clean, _) = rows(window(2, 0.5, 0.5, false));
    let (poisoned, _) = rows(window(2, 0.5, 0.5, true));
    for (a, b) in clean.iter().zip(&poisoned) {
        assert_ne!(a[..1], b[..1], "label flipped");
        assert_eq!(a[1..], b[1..], "features unchanged");
    }
}

#[test]
fn serving_logs_join_back_to_the_rows_by_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let joined = tempfile::tempdir().unwrap();
    let mut log_spec = spec();
    log_spec.serving_log = true;
    let summary = write_stream(dir.path(), &log_spec).unwrap();
    write_stream(joined.path(), &spec()).unwrap();
    let read_jsonl = |sub: &str| -> Vec<serde_json::Value> {
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    };
    let predictions = read_jsonl("predictions");
    let labels = read_jsonl("labels");
    assert_eq!(predictions.len(), 8_000);
    assert_eq!(labels.len() as u64, summary.positives, "one click event per positive");
    let clicked: HashMap<&str, u64> =
        labels.iter().map(|l| (l["request_id"].as_str().unwrap(), l["time_ms"].as_u64().unwrap())).collect();
    let times: Vec<u64> = labels.iter().map(|l| l["time_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "click events are in time order across files");
    // Joined in order, the logs give back exactly the rows a joined stream holds.
    let mut rebuilt = String::new();
    for p in &predictions {
        let id = p["request_id"].as_str().unwrap();
        let at = p["time_ms"].as_u64().unwrap();
        if let Some(click) = clicked.get(id) {
            assert_eq!(*click, at + 30_000, "the click comes after its delay");
        }
        let window = id[..6].parse::<u64>().unwrap();
        assert!((log_spec.start_ms + window * 60_000..log_spec.start_ms + (window + 1) * 60_000).contains(&at));
        rebuilt.push_str(&format!("{}\t{}\n", u8::from(clicked.contains_key(id)), p["features"].as_str().unwrap()));
    }
    let mut expected = String::new();
    for n in 0..4 {
        expected.push_str(&std::fs::read_to_string(joined.path().join(format!("part-{n:06}.tsv"))).unwrap());
    }
    assert_eq!(rebuilt, expected);
}
