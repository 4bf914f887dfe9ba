//! Follow jobs under the state's own calls: files found while the job runs become windows, each
//! trained once; in-progress names are skipped; `seen` forgets removed files; done windows are
//! pruned with ids that keep counting; a restart resumes where the state was; stop and idle end.

use std::time::{Duration, Instant};

use super::rollback::RollbackTarget;
use super::stream::{poll, PRUNE_AT};
use super::*;

const LEASE: Duration = Duration::from_secs(10);

/// Writes `rows` libsvm rows (alternating labels) to `dir/name`, as a sink does: under a dot
/// name, then renamed into place.
fn arrive(dir: &Path, name: &str, rows: usize) {
    let text: String = (0..rows).map(|i| format!("{} {}:1\n", i % 2, i % 7)).collect();
    let tmp = dir.join(format!(".{name}.inprogress"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn follow_job(dir: &Path, follow: &str) -> String {
    format!(
        "version = 1\nname = \"s\"\n[data]\nformat = \"libsvm\"\nsource = \"follow\"\npaths = [\"{}/part-*\"]\n\
         [data.follow]\n{follow}\n[model]\nkind = \"lr\"\n",
        dir.display()
    )
}

/// A poll of every follow job, applied at once (what the scheduler's timer does when each is
/// due): each call is an hour after the last, so every job is due.
fn poll_now(s: &mut State) -> Vec<Due> {
    static HOURS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let later = Duration::from_secs(3600 * HOURS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let roots = s.data_roots().clone();
    let polls = s.follow_polls(Instant::now() + later);
    assert!(!polls.is_empty(), "no follow job was due");
    polls.into_iter().map(|p| s.apply_follow(&p.job_id.clone(), poll(&p, &roots)).unwrap()).collect()
}

/// Trains every item handed out; returns (items, rows).
fn train_all(s: &mut State, w: &str, id: &str) -> (u64, u64) {
    let (mut items, mut rows) = (0, 0);
    while let Some(a) = s.next_work(w, Instant::now()).unwrap() {
        assert_eq!(a.range.phase, Phase::Train, "a follow job has no test items");
        let n = a.range.rows as usize;
        let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
        let probs: Vec<f32> = labels.iter().map(|y| 0.3 + 0.4 * y).collect();
        let report = ItemReport { rows: n as u64, loss_sum: 0.5 * n as f64, probs, labels, ..Default::default() };
        s.report(w, id, a.item_id, report, Instant::now()).unwrap();
        (items, rows) = (items + 1, rows + n as u64);
    }
    (items, rows)
}

#[test]
fn files_found_while_the_job_runs_are_windows_trained_once_until_stopped() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    arrive(data.path(), "part-000", 250);
    std::fs::write(data.path().join(".part-001.inprogress"), "1 1:1\n").unwrap();
    std::fs::write(data.path().join("_part-002"), "1 1:1\n").unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let id = s.submit(follow_job(data.path(), "window_rows = 100"), t0).unwrap();
    // 250 rows in windows of 100: 100, 100, 50; the in-progress names are not read.
    assert_eq!(train_all(&mut s, &w, &id), (3, 250));
    assert_eq!(s.jobs(Some(&id)).unwrap()[0].state, JobState::Training, "a follow job waits for more");

    arrive(data.path(), "part-001", 120);
    arrive(data.path(), "part-003", 30);
    poll_now(&mut s);
    poll_now(&mut s); // nothing new: no file is planned twice
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!(job.lag(persist::unix_ms()).0, 150);
    assert_eq!(job.stream.as_ref().map(|st| (st.files_found, st.rows_found)), Some((3, 400)));
    assert_eq!(train_all(&mut s, &w, &id), (3, 150));

    // Stopped with a window found and not trained: it is trained, nothing newer is taken.
    arrive(data.path(), "part-004", 10);
    poll_now(&mut s);
    arrive(data.path(), "part-005", 10);
    let due = s.stop_job(&id).unwrap();
    assert_eq!(due, Due::default(), "no [publish]: nothing due");
    assert!(s.follow_polls(Instant::now() + Duration::from_secs(1 << 30)).is_empty(), "a stopped job lists no more");
    assert_eq!(s.jobs(Some(&id)).unwrap()[0].state, JobState::Training);
    assert_eq!(train_all(&mut s, &w, &id), (1, 10), "the window found before the stop");
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!((job.state, job.rows_trained, job.test_auc), (JobState::Succeeded, 410, None));
    let report = job.report(1, persist::unix_ms());
    let stream = report.stream.expect("a follow job reports its stream");
    assert_eq!(stream.windows.iter().map(|w| w.rows).collect::<Vec<_>>(), vec![100, 100, 50, 100, 20, 30, 10]);
    assert!(stream.windows.iter().all(|w| w.auc == Some(1.0) && w.positive_rate.is_some()), "{stream:?}");
    assert_eq!((stream.lag_rows, stream.files_found), (0, 4), "part-005 came after the stop");
    assert!(report.test_auc.is_none());
}

#[test]
fn stop_is_refused_for_a_job_on_fixed_files_and_idle_ends_a_follow_job() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    std::fs::write(data.path().join("fixed.svm"), "1 1:1\n0 2:1\n").unwrap();
    let fixed = format!(
        "version = 1\n[data]\nformat = \"libsvm\"\npaths = [\"{}/fixed.svm\"]\n[model]\nkind = \"lr\"\n",
        data.path().display()
    );
    let fixed = s.submit(fixed, t0).unwrap();
    assert!(matches!(s.stop_job(&fixed), Err(SchedulerError::NotStream(_))));
    assert!(matches!(s.stop_job("job-99"), Err(SchedulerError::UnknownJob(_))));
    // An empty directory is a stream that has not started, not an error.
    let id = s.submit(follow_job(data.path(), "idle_seconds = 0.05"), t0).unwrap();
    while s.next_work(&w, t0).unwrap().is_some_and(|a| a.job_id == fixed) {
        s.report(&w, &fixed, 0, ItemReport { rows: 2, ..Default::default() }, t0).unwrap();
    }
    arrive(data.path(), "part-0", 5);
    poll_now(&mut s);
    assert_eq!(train_all(&mut s, &w, &id), (1, 5));
    std::thread::sleep(Duration::from_millis(60));
    poll_now(&mut s);
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!((job.state, job.rows_trained), (JobState::Succeeded, 5), "idle past idle_seconds ends the job");
}

#[test]
fn done_windows_are_pruned_ids_keep_counting_and_a_restart_resumes() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rows = PRUNE_AT + 44;
    arrive(data.path(), "part-a", rows);
    let t0 = Instant::now();
    let id = {
        let mut s = State::open(dir.path(), LEASE, 8).unwrap();
        s.register(Role::Ps, "a:1".into(), t0);
        let w = s.register(Role::Worker, "w".into(), t0);
        let id = s.submit(follow_job(data.path(), "window_rows = 1"), t0).unwrap();
        assert_eq!(train_all(&mut s, &w, &id), (rows as u64, rows as u64));
        let job = s.jobs(Some(&id)).unwrap()[0];
        assert!(job.items.len() < PRUNE_AT && job.item_base >= PRUNE_AT as u64, "{}", job.items.len());
        // A late report of a pruned item changes nothing.
        assert_eq!(s.report(&w, &id, 0, report_of(1), t0).unwrap(), Due::default());
        assert_eq!(s.jobs(Some(&id)).unwrap()[0].rows_trained, rows as u64);
        s.force_snapshot().write().unwrap();
        id
    };
    // The restarted scheduler knows the file: a poll plans only what is new.
    arrive(data.path(), "part-b", 3);
    std::fs::remove_file(data.path().join("part-a")).unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    poll_now(&mut s);
    let ids: Vec<u64> = std::iter::from_fn(|| s.next_work(&w, t0).unwrap()).map(|a| a.item_id).collect();
    assert_eq!(ids, vec![rows as u64, rows as u64 + 1, rows as u64 + 2], "ids go on past the pruned ones");
    let job = s.jobs(Some(&id)).unwrap()[0];
    let seen: Vec<_> = job.stream.as_ref().unwrap().seen.iter().cloned().collect();
    assert_eq!(seen, vec![data.path().join("part-b").canonicalize().unwrap()], "a removed file is forgotten");
}

fn report_of(rows: u64) -> ItemReport {
    ItemReport { rows, ..Default::default() }
}

/// Versions every few milliseconds behind a gate: the window of flipped labels gives a version
/// the gate holds (recorded with its reason, not as published); the next clean window's version
/// is published.
#[test]
fn the_gate_holds_a_poisoned_windows_version_and_publishes_the_next_good_one() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["part-0", "part-1", "part-2"] {
        arrive(data.path(), name, 200);
    }
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let publish = format!(
        "[publish]\nmodel_dir = \"{}\"\nevery_seconds = 0.001\n[publish.gate]\nmin_rows = 100\n",
        dir.path().join("models").display()
    );
    let id = s.submit(format!("{}\n{publish}", follow_job(data.path(), "window_rows = 200")), t0).unwrap();
    let mut verdicts = Vec::new();
    for (n, poisoned) in [false, true, false].into_iter().enumerate() {
        let a = s.next_work(&w, t0).unwrap().unwrap();
        let labels: Vec<f32> = (0..200).map(|i| (i % 4 == 0) as u8 as f32).collect();
        let probs: Vec<f32> = labels.iter().map(|y| if poisoned { 0.8 - 0.7 * y } else { 0.1 + 0.7 * y }).collect();
        let loss_sum = ember_core::eval::logloss(&probs, &labels) * 200.0;
        std::thread::sleep(Duration::from_millis(5));
        let report = ItemReport { rows: 200, loss_sum, probs, labels, ..Default::default() };
        let due = s.report(&w, &id, a.item_id, report, t0).unwrap().publish.expect("a version is due");
        verdicts.push(due.held.clone());
        s.record_published(&id, due, Ok(n as u64 + 1)).unwrap();
    }
    assert!(verdicts[0].is_none() && verdicts[2].is_none(), "{verdicts:?}");
    assert!(verdicts[1].as_deref().is_some_and(|r| r.contains("baseline")), "{verdicts:?}");
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!(job.published, vec![(1, 200), (3, 600)]);
    assert_eq!(job.held.iter().map(|h| (h.version, h.rows_trained)).collect::<Vec<_>>(), vec![(2, 400)]);
    assert_eq!(job.report(1, persist::unix_ms()).held.len(), 1);
}

/// A checkpoint stores the windows done when it was decided; a rollback to it pauses the job,
/// then hands out again every window done after it (but those of skipped files, and of files
/// found later in the skipped range), and counts rows from the label again. Unknown labels are
/// refused with the labels there are.
#[test]
fn a_rollback_rewinds_the_source_to_the_checkpoint_and_skips_a_range_of_files() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["part-0", "part-1"] {
        arrive(data.path(), name, 100);
    }
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let id = s.submit(follow_job(data.path(), "window_rows = 50"), t0).unwrap();
    assert_eq!(train_all(&mut s, &w, &id), (4, 200));
    let (label, position) = s.checkpoint_point(&id).unwrap();
    assert_eq!((label, position.clone().map(|p| p.below)), (200, Some(4)));
    let record = CheckpointRecord { label, full: true, ids: vec![7], unix_ms: 1, error: None, position };
    s.record_checkpoint(&id, record).unwrap();
    for name in ["part-2", "part-3", "part-4"] {
        arrive(data.path(), name, 100);
    }
    poll_now(&mut s);
    assert_eq!(train_all(&mut s, &w, &id), (6, 300));

    let refused = s.begin_rollback(&id, RollbackTarget::Label(250), 1).unwrap_err().to_string();
    assert!(refused.contains("labeled [200]"), "{refused}");
    assert!(s.begin_rollback(&id, RollbackTarget::Label(200), 2).unwrap_err().to_string().contains("2"));
    let plan = s.begin_rollback(&id, RollbackTarget::Time(u64::MAX), 1).unwrap();
    assert_eq!((plan.label, plan.ids.clone()), (200, vec![7]));
    arrive(data.path(), "part-5", 100);
    poll_now(&mut s);
    assert!(s.next_work(&w, t0).unwrap().is_none(), "a job rolling back hands out nothing");
    let skip = Some(("part-3".to_string(), "part-5".to_string()));
    let done = s.finish_rollback(&id, &plan, skip, Ok(())).unwrap();
    assert_eq!((done.from_rows, done.requeued, done.skipped_rows), (500, 2, 300), "part-2 again; 3, 4 and 5 skipped");
    assert_eq!(s.jobs(Some(&id)).unwrap()[0].rows_trained, 200);
    // part-2 again; part-3 and part-4 skipped, and part-5, found while paused, too.
    assert_eq!(train_all(&mut s, &w, &id), (2, 100));
    arrive(data.path(), "part-6", 100);
    poll_now(&mut s);
    assert_eq!(train_all(&mut s, &w, &id), (2, 100), "files after the range are trained");
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!((job.rows_trained, job.rollbacks.len()), (400, 1));
    // A failed restore fails the job: the servers' state is unknown.
    let plan = s.begin_rollback(&id, RollbackTarget::Label(200), 1).unwrap();
    assert!(s.finish_rollback(&id, &plan, None, Err("disk".into())).is_err());
    assert_eq!(s.jobs(Some(&id)).unwrap()[0].state, JobState::Failed);
}
