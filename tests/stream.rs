//! A job that follows a directory, on a cluster of real processes: `ember gen-data --stream`
//! writes a drifting stream, its files are renamed into the followed directory while the job
//! runs (as a stream processor's file sink does), the scheduler is stopped and restarted in the
//! middle, and `ember stop` ends the job. Every row is trained once, each window is evaluated
//! before it is trained on, and the lag and window figures reach the scheduler's metrics.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{ember, http_get, job_status as status, start, start_one, wait_for, Proc};

const FILES: usize = 6;
const ROWS: u64 = 3000;
const WINDOW: u64 = 1000;

/// Renames window `n` of the generated stream into the followed directory (one rename: the
/// follower never sees half a file).
fn arrive(generated: &Path, follow: &Path, n: usize) {
    let name = format!("part-{n:06}.tsv");
    std::fs::rename(generated.join(&name), follow.join(&name)).unwrap();
}

fn start_scheduler(state: &Path, listen: &str, root: &str) -> (Proc, Vec<String>) {
    let args = ["scheduler", "--listen", listen, "--state-dir", state.to_str().unwrap(), "--lease-ms", "1500"];
    let args: Vec<&str> = args.into_iter().chain(["--data-root", root, "--metrics-listen", "127.0.0.1:0"]).collect();
    start(&args, &["ember scheduler listening on ", "ember scheduler metrics on "])
}

#[test]
fn a_followed_directory_is_trained_once_across_a_scheduler_restart_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, follow) = (dir.path().join("generated"), dir.path().join("follow"));
    std::fs::create_dir_all(&follow).unwrap();
    let (windows, rows) = (FILES.to_string(), ROWS.to_string());
    let gen_args = ["gen-data", "--stream", "--windows", &windows, "--rows", &rows, "--id-shift", "500", "--out"];
    ember(&gen_args.into_iter().chain([generated.to_str().unwrap()]).collect::<Vec<_>>());
    for n in 0..2 {
        arrive(&generated, &follow, n);
    }
    // A file still being written is not read.
    std::fs::write(follow.join(".part-000009.tsv.inprogress"), "garbage\n").unwrap();

    let root = dir.path().to_str().unwrap();
    let state = dir.path().join("scheduler");
    let (sched, found) = start_scheduler(&state, "127.0.0.1:0", root);
    let addr = found[0].clone();
    let ps_dir = dir.path().join("ps");
    let _ps = start_one(
        &["ps", "--listen", "127.0.0.1:0", "--data-dir", ps_dir.to_str().unwrap(), "--scheduler", &addr],
        "ember ps listening on ",
    );
    let _workers: Vec<Proc> = ["w1", "w2"]
        .iter()
        .map(|name| {
            start_one(&["worker", "--scheduler", &addr, "--name", name, "--data-root", root], "ember worker ").0
        })
        .collect();
    let job = dir.path().join("follow.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\nname = \"follow\"\n[data]\nformat = \"criteo\"\nsource = \"follow\"\npaths = [\"{}/part-*.tsv\"]\n\
             [data.follow]\npoll_ms = 100\nwindow_rows = {WINDOW}\n[model]\nkind = \"lr\"\n[training]\nbatch_size = 256\n",
            follow.display()
        ),
    )
    .unwrap();
    let id = ember(&["submit", "--scheduler", &addr, job.to_str().unwrap()]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_for(&addr, &id, deadline, |s| s["rows_trained"] == 2 * ROWS);
    assert_eq!(status(&addr, &id)["follow"]["lag_rows"], 0, "caught up");
    arrive(&generated, &follow, 2);
    wait_for(&addr, &id, deadline, |s| s["follow"]["files_found"] == 3);

    // The scheduler stops (SIGTERM: its last state is written) and comes back on its address.
    let pid = sched.0.id().to_string();
    assert!(Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().unwrap().success());
    let mut sched = sched;
    sched.0.wait().unwrap();
    for n in 3..FILES {
        arrive(&generated, &follow, n);
    }
    let (_sched, found) = start_scheduler(&state, &addr, root);
    wait_for(&addr, &id, deadline, |s| s["follow"]["files_found"] == FILES && s["rows_trained"] == FILES as u64 * ROWS);
    let human = ember(&["status", "--scheduler", &addr, "--job", &id]);
    assert!(human.contains(&format!("following: {FILES} files found, lag 0 rows")), "{human}");
    let metrics = http_get(&found[1]);
    let job_label = format!("job=\"{id}\"");
    for name in ["ember_job_lag_rows", "ember_job_window_auc", "ember_job_window_positive_rate"] {
        assert!(metrics.lines().any(|l| l.starts_with(name) && l.contains(&job_label)), "no {name} in:\n{metrics}");
    }

    ember(&["stop", &id, "--scheduler", &addr]);
    wait_for(&addr, &id, deadline, |s| s["state"] == "succeeded");
    let done = status(&addr, &id);
    assert_eq!(done["rows_trained"], FILES as u64 * ROWS, "every row once: {done}");
    let path = dir.path().join("report.json");
    ember(&["status", "--scheduler", &addr, "--job", &id, "--report", path.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let windows = report["stream"]["windows"].as_array().unwrap();
    assert_eq!(windows.len(), FILES * (ROWS / WINDOW) as usize, "{windows:?}");
    assert!(windows.iter().all(|w| w["rows"] == WINDOW), "{windows:?}");
    let files: std::collections::BTreeSet<&str> = windows.iter().map(|w| w["file"].as_str().unwrap()).collect();
    assert_eq!(files.len(), FILES, "{files:?}");
    // Each window was predicted before it was trained on; a model that learns nothing scores 0.5.
    let late: Vec<f64> = windows[windows.len() - 6..].iter().map(|w| w["auc"].as_f64().unwrap()).collect();
    assert!(late.iter().sum::<f64>() / 6.0 > 0.6, "late window AUCs {late:?}");
    eprintln!("windows: {:?}", windows.iter().map(|w| w["auc"].as_f64().unwrap()).collect::<Vec<_>>());
}

/// `ember train` (an embedded cluster) on a followed directory of 12 windows whose 6th has
/// flipped labels, with a version per window behind the gate: the poisoned window's version is
/// written but held, never current; the stream's later versions are published again; the job
/// ends by itself once no file has arrived for `idle_seconds`.
#[test]
fn the_gate_holds_the_poisoned_windows_version_and_publishes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let rows = ROWS.to_string();
    let gen_args =
        ["gen-data", "--stream", "--windows", "12", "--rows", &rows, "--drift", "0", "--id-shift", "0", "--poison"];
    ember(&gen_args.into_iter().chain(["5..5", "--out", stream.to_str().unwrap()]).collect::<Vec<_>>());
    let models = dir.path().join("models");
    let report = support::train_report(
        dir.path(),
        "gated",
        &format!(
            "version = 1\nname = \"gated\"\n[data]\nformat = \"criteo\"\nsource = \"follow\"\npaths = [\"{}/part-*.tsv\"]\n\
             [data.follow]\npoll_ms = 50\nwindow_rows = {ROWS}\nidle_seconds = 1\n[model]\nkind = \"lr\"\n\
             [publish]\nmodel_dir = \"{}\"\nevery = {ROWS}\nkeep = 50\n[publish.gate]\nmax_auc_drop = 0.05\n",
            stream.display(),
            models.display()
        ),
    );
    assert_eq!(report["rows_trained"], 12 * ROWS);
    let held: Vec<u64> =
        report["held"].as_array().unwrap().iter().map(|h| h["rows_trained"].as_u64().unwrap()).collect();
    assert!(held.contains(&(6 * ROWS)), "the version after the poisoned window (rows 6 x {ROWS}) is held: {report}");
    // The first window's version may be held: a model that has seen nothing does not beat the
    // positive rate. Past it, no clean version before the poison is.
    assert!(held.iter().all(|r| *r == ROWS || *r > 5 * ROWS), "held before the poison: {held:?}");
    let published = report["published"].as_array().unwrap();
    let listed = ember(&["model", "list", "--model-dir", models.to_str().unwrap(), "--json"]);
    let listed: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let current: Vec<&serde_json::Value> = listed.iter().filter(|v| v["current"] == true).collect();
    assert_eq!(current.len(), 1, "{listed:?}");
    assert!(current[0]["held"].is_null(), "a held version is never current: {listed:?}");
    assert_eq!(Some(&current[0]["version"]), published.last(), "the newest version published is current");
    assert!(current[0]["rows_trained"].as_u64().unwrap() > 6 * ROWS, "published again after the poison: {listed:?}");
    let held_listed = listed.iter().filter(|v| v["held"].is_string()).count();
    assert_eq!(held_listed, held.len(), "{listed:?}");
    eprintln!("held: {}", report["held"]);
}

/// Rollback and replay on processes: a follow job is checkpointed once caught up, then trains a
/// stretch holding poisoned windows; `ember rollback --to LABEL --skip` returns the ps-server's
/// rows to exactly those exported at the label, makes the version published at the label
/// current again, and the job trains on from there without the skipped files.
#[test]
fn a_rollback_returns_the_rows_to_the_checkpoint_and_replays_without_the_skipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, follow) = (dir.path().join("generated"), dir.path().join("follow"));
    std::fs::create_dir_all(&follow).unwrap();
    let rows = ROWS.to_string();
    let gen_args = ["gen-data", "--stream", "--windows", "8", "--rows", &rows, "--poison", "5..6", "--out"];
    ember(&gen_args.into_iter().chain([generated.to_str().unwrap()]).collect::<Vec<_>>());
    for n in 0..4 {
        arrive(&generated, &follow, n);
    }
    let root = dir.path().to_str().unwrap();
    let (_sched, found) = start_scheduler(&dir.path().join("scheduler"), "127.0.0.1:0", root);
    let addr = found[0].clone();
    let ps_dir = dir.path().join("ps");
    let _ps = start_one(
        &["ps", "--listen", "127.0.0.1:0", "--data-dir", ps_dir.to_str().unwrap(), "--scheduler", &addr],
        "ember ps listening on ",
    );
    let worker = || start_one(&["worker", "--scheduler", &addr, "--data-root", root], "ember worker ").0;
    let mut first_worker = worker();
    let models = dir.path().join("models");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\n[data]\nformat = \"criteo\"\nsource = \"follow\"\npaths = [\"{}/part-*.tsv\"]\n\
             [data.follow]\npoll_ms = 50\nwindow_rows = {ROWS}\n[model]\nkind = \"lr\"\n\
             [publish]\nmodel_dir = \"{}\"\nevery = {ROWS}\nkeep = 20\n",
            follow.display(),
            models.display()
        ),
    )
    .unwrap();
    let id = ember(&["submit", "--scheduler", &addr, job.to_str().unwrap()]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let published = |n: usize| move |s: &serde_json::Value| s["published"].as_array().is_some_and(|p| p.len() >= n);
    wait_for(&addr, &id, deadline, |s| s["rows_trained"] == 4 * ROWS && published(4)(s));
    ember(&["checkpoint", "--scheduler", &addr, "--job", &id]);
    let table = format!("{id}.w");
    let export = |name: &str| {
        let path = dir.path().join(name);
        ember(&["export", "--scheduler", &addr, "--table", &table, "--out", path.to_str().unwrap()]);
        std::fs::read_to_string(path).unwrap()
    };
    let at_label = export("at-label.tsv");
    for n in 4..8 {
        arrive(&generated, &follow, n);
    }
    wait_for(&addr, &id, deadline, |s| s["rows_trained"] == 8 * ROWS);
    assert_ne!(export("after-poison.tsv"), at_label);
    // Nothing trains while the rows are compared: the worker goes away first.
    first_worker.0.kill().unwrap();
    first_worker.0.wait().unwrap();

    let wrong =
        Command::new(support::EMBER).args(["rollback", &id, "--to", "12345", "--scheduler", &addr]).output().unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains(&format!("labeled [{}]", 4 * ROWS)), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    let label = (4 * ROWS).to_string();
    let out =
        ember(&["rollback", &id, "--to", &label, "--skip", "part-000005.tsv..part-000006.tsv", "--scheduler", &addr]);
    assert!(out.contains(&format!("{} rows skipped", 2 * ROWS)), "{out}");
    assert_eq!(export("after-rollback.tsv"), at_label, "the rows are those at the label");
    let listed = ember(&["model", "list", "--model-dir", models.to_str().unwrap(), "--json"]);
    let current: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["current"] == true)
        .collect();
    assert_eq!(current[0]["rows_trained"], 4 * ROWS, "serving is back at the label's version: {listed}");

    let _second_worker = worker();
    wait_for(&addr, &id, deadline, |s| s["rows_trained"] == 6 * ROWS && s["follow"]["lag_rows"] == 0);
    ember(&["stop", &id, "--scheduler", &addr]);
    wait_for(&addr, &id, deadline, |s| s["state"] == "succeeded");
    assert_eq!(status(&addr, &id)["rows_trained"], 6 * ROWS, "windows 4 and 7 again; 5 and 6 never");
}

/// `ember join` on the serving logs `gen-data --stream --serving-log` writes gives back exactly
/// the labelled rows `gen-data --stream` writes for the same seed (a click makes a positive, the
/// window's end a negative), in order; with fewer open predictions allowed than a window holds,
/// the overflow is counted and no row is lost; a follow job trains on what it writes.
#[test]
fn the_join_of_prediction_logs_and_clicks_gives_back_the_labelled_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, rows) = (dir.path().join("logs"), dir.path().join("rows"));
    let common = ["gen-data", "--stream", "--windows", "4", "--rows", "500", "--window-seconds", "60"];
    ember(
        &common
            .into_iter()
            .chain(["--serving-log", "--label-delay-seconds", "30", "--out", logs.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    ember(&common.into_iter().chain(["--out", rows.to_str().unwrap()]).collect::<Vec<_>>());
    let concat = |d: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        names.retain(|p| p.extension().is_some_and(|e| e == "tsv"));
        names.sort();
        names.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>()
    };
    let expected = concat(&rows);
    let join = |out: &Path, max_open: &str| -> serde_json::Value {
        let (p, l) = (logs.join("predictions"), logs.join("labels"));
        let args = ["join", "--predictions", p.to_str().unwrap(), "--labels", l.to_str().unwrap(), "--out"];
        let rest = ["--window-seconds", "120", "--idle-seconds", "0.3", "--poll-ms", "20", "--max-open", max_open];
        let out = ember(&args.into_iter().chain([out.to_str().unwrap()]).chain(rest).collect::<Vec<_>>());
        serde_json::from_str(out.trim()).unwrap()
    };
    let joined = dir.path().join("joined");
    let stats = join(&joined, "1000000");
    let positives = expected.lines().filter(|l| l.starts_with('1')).count() as u64;
    assert_eq!((stats["positives"].as_u64(), stats["negatives"].as_u64()), (Some(positives), Some(2000 - positives)));
    assert_eq!((stats["unmatched"].as_u64(), stats["overflowed"].as_u64()), (Some(0), Some(0)), "{stats}");
    assert_eq!(concat(&joined), expected, "the joined rows are the stream's rows, in order");

    let tight = join(&dir.path().join("tight"), "100");
    assert!(tight["overflowed"].as_u64().unwrap() > 0, "{tight}");
    assert_eq!(tight["positives"].as_u64().unwrap() + tight["negatives"].as_u64().unwrap(), 2000, "{tight}");

    let report = support::train_report(
        dir.path(),
        "joined",
        &format!(
            "version = 1\n[data]\nformat = \"criteo\"\nsource = \"follow\"\npaths = [\"{}/part-*.tsv\"]\n\
             [data.follow]\npoll_ms = 50\nidle_seconds = 0.5\n[model]\nkind = \"lr\"\n",
            joined.display()
        ),
    );
    assert_eq!(report["rows_trained"], 2000);
}

/// Serving logs what it answered: `ember serve --prediction-log` writes each sample's request id,
/// version and raw cells in time-bucket files; click events for the positives, written under the
/// same bucket names, joined by `ember join`, give back exactly the rows that were served.
#[test]
fn served_predictions_are_logged_and_join_back_to_the_rows_served() {
    let t = support::serving::train();
    let dir = tempfile::tempdir().unwrap();
    let (logs, clicks, joined) = (dir.path().join("predictions"), dir.path().join("clicks"), dir.path().join("joined"));
    let models = t.models.to_str().unwrap();
    let args = ["serve", "--ps", &t.ps, "--model-dir", models, "--listen", "127.0.0.1:0", "--prediction-log"];
    let args: Vec<&str> =
        args.into_iter().chain([logs.to_str().unwrap(), "--prediction-log-bucket-seconds", "1"]).collect();
    let (_serve, addr) = start_one(&args, "ember serve listening on ");
    let out = dir.path().join("preds.txt");
    ember(&["predict", "--serving", &addr, "--data", t.test_data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let rows: Vec<String> = std::fs::read_to_string(&t.test_data).unwrap().lines().map(String::from).collect();
    // Every bucket's file is renamed into place a second after the bucket ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let mut files: Vec<_> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'));
        let records: Vec<(String, serde_json::Value)> = files
            .iter()
            .flat_map(|f| {
                let name = f.file_name().unwrap().to_str().unwrap().to_string();
                let text = std::fs::read_to_string(f).unwrap();
                text.lines().map(|l| (name.clone(), serde_json::from_str(l).unwrap())).collect::<Vec<_>>()
            })
            .collect();
        if records.len() == rows.len() {
            break records;
        }
        assert!(Instant::now() < deadline, "{} of {} records logged", records.len(), rows.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    // The label of each served row, by its cells (the join must pair them by request id).
    let mut label_of: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for row in &rows {
        let (label, cells) = row.split_once('\t').unwrap();
        label_of.entry(cells).or_default().push(label);
    }
    std::fs::create_dir_all(&clicks).unwrap();
    let mut by_bucket: std::collections::BTreeMap<String, String> = Default::default();
    for (name, r) in &records {
        assert!(r["model_version"].as_u64().unwrap() > 0, "{r}");
        let label = label_of.get_mut(r["features"].as_str().unwrap()).and_then(|l| l.pop()).expect("a served row");
        let clicks = by_bucket.entry(name.clone()).or_default();
        if label == "1" {
            let click =
                serde_json::json!({ "request_id": r["request_id"], "time_ms": r["time_ms"].as_u64().unwrap() + 1 });
            clicks.push_str(&format!("{click}\n"));
        }
    }
    for (name, text) in &by_bucket {
        std::fs::write(clicks.join(name), text).unwrap();
    }
    let (l, c, j) = (logs.to_str().unwrap(), clicks.to_str().unwrap(), joined.to_str().unwrap());
    ember(&["join", "--predictions", l, "--labels", c, "--out", j, "--window-seconds", "10", "--idle-seconds", "0.3"]);
    let mut got: Vec<String> = std::fs::read_dir(&joined)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .collect();
    let mut want = rows.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the joined rows are the rows served, with their labels");
}
