//! Scheduler decisions under a controlled clock: leases, requeueing, the job state machine,
//! bad-line failure, and persistence across a restart.

use std::time::{Duration, Instant};

use super::*;

const LEASE: Duration = Duration::from_secs(10);

fn job_file(dir: &Path, rows: usize, extra: &str) -> String {
    let data = dir.join("data.svm");
    let text: String = (0..rows).map(|i| format!("{} {}:1\n", i % 2, i % 7)).collect();
    std::fs::write(&data, text).unwrap();
    format!(
        "version = 1\nname = \"t\"\n[data]\nformat = \"libsvm\"\npaths = [\"{}\"]\ntest_split = 0.25\n{extra}\n[model]\nkind = \"lr\"\n",
        data.display()
    )
}

fn report(rows: u64) -> ItemReport {
    ItemReport { rows, loss_sum: rows as f64 * 0.5, ..Default::default() }
}

#[test]
fn a_job_trains_every_item_then_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 16).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "127.0.0.1:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let id = s.submit(job_file(dir.path(), 20_000, ""), t0).unwrap();
    // 20,000 rows / 32 items -> 625 rows per item: 24 train items, then 8 test items.
    let mut test_items = 8;
    let mut held = Vec::new();
    while let Some(a) = s.next_work(&w, t0).unwrap() {
        assert_eq!(a.range.phase, Phase::Train, "no test item before every train item is done");
        assert_eq!(a.range.rows, 625);
        held.push(a);
    }
    assert_eq!(held.len(), 24);
    for a in held.drain(..) {
        s.report(&w, &id, a.item_id, report(a.range.rows), t0).unwrap();
    }
    assert_eq!(s.jobs(Some(&id)).unwrap()[0].state, JobState::Evaluating);
    while let Some(a) = s.next_work(&w, t0).unwrap() {
        assert_eq!(a.range.phase, Phase::Test);
        let n = a.range.rows as usize;
        let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
        let probs: Vec<f32> = labels.iter().map(|y| 0.2 + 0.6 * y).collect();
        s.report(
            &w,
            &id,
            a.item_id,
            ItemReport { rows: n as u64, probs, labels, ..Default::default() },
            t0 + Duration::from_secs(3),
        )
        .unwrap();
        test_items -= 1;
    }
    assert_eq!(test_items, 0);
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.rows_trained, job.test_rows()), (15_000, 5_000));
    assert_eq!(job.test_auc, Some(1.0));
    assert!((job.progressive_logloss() - 0.5).abs() < 1e-9);
    assert_eq!(job.elapsed_seconds, 3.0);
}

#[test]
fn expired_leases_requeue_items_and_ps_servers_keep_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    let ps1 = s.register(Role::Ps, "a:1".into(), t0);
    s.register(Role::Ps, "b:2".into(), t0 + Duration::from_secs(8));
    let (v, endpoints, owners) = s.shard_map();
    assert_eq!((endpoints.len(), owners.clone()), (2, vec![0, 1, 0, 1, 0, 1, 0, 1]));
    let (w1, w2) =
        (s.register(Role::Worker, "w1".into(), t0), s.register(Role::Worker, "w2".into(), t0 + Duration::from_secs(8)));
    let id = s.submit(job_file(dir.path(), 250, ""), t0).unwrap(); // 225 train rows: one item of at least 256
    let first = s.next_work(&w1, t0).unwrap().unwrap();
    assert!(s.next_work(&w2, t0 + Duration::from_secs(8)).unwrap().is_none(), "the only train item is held");
    // w1 and ps1 stop heartbeating; w2 keeps going.
    let later = t0 + Duration::from_secs(15);
    s.heartbeat(&w2, later).unwrap();
    let again = s.next_work(&w2, later).unwrap().unwrap();
    assert_eq!(again.item_id, first.item_id, "the dead worker's item is handed out again");
    assert!(matches!(s.heartbeat(&w1, later), Err(SchedulerError::UnknownMember(_))));
    // The ps-server's rows live at its address: its slots wait for it, and a restart there
    // takes them back without changing the map.
    assert_eq!(s.shard_map(), (v, vec!["a:1".to_string(), "b:2".to_string()], owners.clone()));
    let back = s.register(Role::Ps, "a:1".into(), later);
    assert_ne!(back, ps1);
    assert_eq!(s.shard_map().0, v, "same servers, same map");
    s.register(Role::Ps, "c:3".into(), later);
    let (v3, endpoints, _) = s.shard_map();
    assert!(v3 > v);
    assert_eq!(endpoints, vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()]);
    let _ = id;
}

#[test]
fn too_many_bad_lines_fail_the_job_with_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let id = s.submit(job_file(dir.path(), 1_000, "max_bad_ratio = 0.01"), t0).unwrap();
    let a = s.next_work(&w, t0).unwrap().unwrap();
    let n = a.range.rows;
    let bad = ItemReport {
        rows: n - 20,
        bad_lines: 20,
        bad_line_samples: vec!["data.svm:3: bad".into()],
        ..Default::default()
    };
    s.report(&w, &id, a.item_id, bad, t0).unwrap();
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.as_deref().unwrap();
    assert!(error.contains(&format!("20 of {n} lines malformed")) && error.contains("data.svm:3"), "{error}");
    assert!(s.next_work(&w, t0).unwrap().is_none(), "a failed job hands out nothing");
}

#[test]
fn jobs_survive_a_restart_and_held_items_are_pending_again() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let id = {
        let mut s = State::open(dir.path(), LEASE, 8).unwrap();
        s.register(Role::Ps, "a:1".into(), t0);
        let w = s.register(Role::Worker, "w".into(), t0);
        let id = s.submit(job_file(dir.path(), 20_000, ""), t0).unwrap();
        let a = s.next_work(&w, t0).unwrap().unwrap();
        s.report(&w, &id, a.item_id, report(a.range.rows), t0).unwrap();
        s.next_work(&w, t0).unwrap().unwrap(); // held when the scheduler stops
                                               // Reports are written by the persister, off the lock: what it writes is what survives.
        s.snapshot().expect("a report marks the state changed").write().unwrap();
        assert!(s.snapshot().is_none(), "nothing changed since");
        id
    };
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!((job.state, job.items_progress(), job.rows_trained), (JobState::Training, (1, 32), 625));
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    assert_eq!(s.next_work(&w, t0).unwrap().unwrap().item_id, 1, "the item held before the restart is pending again");
    assert!(matches!(s.jobs(Some("job-9")), Err(SchedulerError::UnknownJob(_))));
    let bad = s.submit("version = 1\n[data]\nformat = \"criteo\"\npaths = []\n[model]\nkind = \"lr\"".into(), t0);
    assert!(matches!(bad, Err(SchedulerError::BadJob(_))));
}

#[test]
fn work_is_handed_out_in_submission_order_past_nine_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let ids: Vec<String> = (0..11).map(|_| s.submit(job_file(dir.path(), 250, ""), t0).unwrap()).collect();
    let order: Vec<String> = (0..11).map(|_| s.next_work(&w, t0).unwrap().unwrap().job_id).collect();
    assert_eq!(order, ids, "job-10 must not jump ahead of job-2");
    let listed: Vec<&str> = s.jobs(None).unwrap().iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Issue 21, item 11: a spoofed ReportWork (rows 10^15, loss -1e30) was accepted.
#[test]
fn reports_an_item_cannot_hold_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let (w, other) = (s.register(Role::Worker, "w".into(), t0), s.register(Role::Worker, "x".into(), t0));
    let id = s.submit(job_file(dir.path(), 20_000, ""), t0).unwrap();
    let a = s.next_work(&w, t0).unwrap().unwrap();
    let n = a.range.rows;
    let spoofs = [
        ItemReport { rows: 1_000_000_000_000_000, ..report(0) },
        ItemReport { rows: n, bad_lines: 1, ..report(n) },
        ItemReport { loss_sum: -1e30, ..report(n) },
        ItemReport { loss_sum: f64::NAN, ..report(n) },
        ItemReport { probs: vec![0.5; n as usize + 1], labels: vec![1.0; n as usize + 1], ..report(n) },
        ItemReport { probs: vec![1.5; n as usize], labels: vec![1.0; n as usize], ..report(n) },
    ];
    for spoof in spoofs {
        let err = s.report(&w, &id, a.item_id, spoof, t0).unwrap_err();
        assert!(matches!(err, SchedulerError::BadReport(_)), "{err}");
    }
    // Another worker cannot report the item `w` holds.
    assert!(matches!(s.report(&other, &id, a.item_id, report(n), t0), Err(SchedulerError::BadReport(_))));
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!((job.rows_trained, job.items_progress().0, job.loss_sum), (0, 0, 0.0), "nothing was recorded");
    // The honest report still goes through, its long samples trimmed.
    let long = ItemReport { bad_line_samples: vec!["y".repeat(10_000); 9], ..report(n - 1) };
    let long = ItemReport { bad_lines: 1, ..long };
    s.report(&w, &id, a.item_id, long, t0).unwrap();
    let job = s.jobs(Some(&id)).unwrap()[0];
    assert_eq!(job.rows_trained, n - 1);
    assert!(job.bad_line_samples.iter().all(|l| l.len() <= 512), "samples are cut");
}

/// With `[publish]`, the job succeeds only once the version due at the end of training is
/// recorded (whoever waits for the job then finds it); a failed one fails the job. The report
/// adds up what workers sent, and hold-out predictions come back in data order.
#[test]
fn the_last_version_gates_success_and_the_report_adds_up_the_items() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::open(dir.path(), LEASE, 8).unwrap();
    let t0 = Instant::now();
    s.register(Role::Ps, "a:1".into(), t0);
    let w = s.register(Role::Worker, "w".into(), t0);
    let publish = format!("[publish]\nmodel_dir = \"{}\"\n", dir.path().join("models").display());
    for fails in [false, true] {
        let id = s.submit(format!("{}{publish}", job_file(dir.path(), 2_000, "")), t0).unwrap();
        let (mut due, mut tested) = (Vec::new(), Vec::new());
        while let Some(a) = s.next_work(&w, t0).unwrap() {
            let n = a.range.rows as usize;
            let report = if a.range.phase == Phase::Train {
                let stats = crate::report::ItemStats {
                    bytes_pushed: 100,
                    windows: vec![crate::report::Window { rows: n as u64, loss_sum: 0.5, auc: 0.6, end_unix_ms: 1 }],
                    ..Default::default()
                };
                let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
                ItemReport { rows: n as u64, probs: vec![0.5; n], labels, stats, ..Default::default() }
            } else {
                let probs: Vec<f32> = (0..n).map(|i| (a.item_id * 1000 + i as u64) as f32 / 1e6).collect();
                tested.extend_from_slice(&probs);
                ItemReport { rows: n as u64, labels: vec![1.0; n], probs, ..Default::default() }
            };
            due.extend(s.report(&w, &id, a.item_id, report, t0).unwrap().publish);
        }
        let last = due.last().cloned().unwrap();
        assert_eq!((last.rows, last.last, &last.held), (1_500, true, &None), "no gate: nothing held");
        assert_eq!(s.jobs(Some(&id)).unwrap()[0].state, JobState::Evaluating, "waits for the last version");
        let outcome = if fails { Err("disk full".to_string()) } else { Ok(7) };
        s.record_published(&id, last, outcome).unwrap();
        let job = s.jobs(Some(&id)).unwrap()[0];
        if fails {
            assert_eq!(job.state, JobState::Failed);
            assert!(job.error.as_deref().unwrap().contains("disk full"));
            continue;
        }
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.test_predictions().0, tested, "data order");
        let r = job.report(1, 0);
        assert_eq!((r.rows_trained, r.test_rows, r.published.clone()), (1_500, 500, vec![7]));
        assert_eq!(r.bytes_pushed, 100 * r.curve.len() as u64);
        assert_eq!(r.curve.last().map(|p| p.examples), Some(1_500));
        assert_eq!((r.cluster, r.state.as_str()), ((1, 1), "succeeded"));
        assert!(r.progressive_auc.is_some_and(|a| (a - 0.5).abs() < 1e-9), "{:?}", r.progressive_auc);
    }
}
