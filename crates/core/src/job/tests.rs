//! Job files: parsing, defaults, refusals, the checkpoint schedule, the follow source, and every
//! example job in examples/.

use super::*;

const LR: &str = r#"
    version = 1
    [data]
    format = "criteo"
    paths = ["a.tsv"]
    [model]
    kind = "lr"
    [optimizer.sparse]
    kind = "ftrl"
    alpha = 0.1
    l1 = 0.5
"#;

#[test]
fn a_minimal_job_parses_with_defaults() {
    let job = JobSpec::from_toml(LR).unwrap();
    assert_eq!(job.optimizer.sparse, Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.5, l2: 0.0 });
    assert_eq!((job.data.test_split, job.training.batch_size, job.cluster.workers), (0.1, 512, 1));
}

#[test]
fn unknown_keys_wrong_versions_and_bad_values_are_refused() {
    let typo = LR.replace("format = \"criteo\"", "format = \"criteo\"\nformt = 1");
    assert!(JobSpec::from_toml(&typo).unwrap_err().to_string().contains("formt"));
    let opt_typo = LR.replace("l1 = 0.5", "l3 = 0.5");
    assert!(JobSpec::from_toml(&opt_typo).is_err());
    let v2 = LR.replace("version = 1", "version = 2");
    assert!(JobSpec::from_toml(&v2).unwrap_err().to_string().contains("version 2"));
    let split = LR.replace("paths = [\"a.tsv\"]", "paths = [\"a.tsv\"]\ntest_split = 1.5");
    assert!(JobSpec::from_toml(&split).unwrap_err().to_string().contains("test_split"));
    let csv = LR.replace("\"criteo\"", "\"csv\"");
    assert!(JobSpec::from_toml(&csv).unwrap_err().to_string().contains("schema"));
    let alpha = LR.replace("alpha = 0.1", "alpha = -1.0");
    assert!(JobSpec::from_toml(&alpha).unwrap_err().to_string().contains("optimizer.sparse"));
}

#[test]
fn unbounded_values_and_unused_sections_are_refused() {
    let deepfm = LR.replace("kind = \"lr\"", "kind = \"deepfm\"");
    assert!(JobSpec::from_toml(&deepfm).is_ok());
    let cases = [
        (LR.replace("[model]", "[training]\nbatch_size = 9223372036854775807\n[model]"), "batch_size"),
        (deepfm.replace("kind = \"deepfm\"", "kind = \"deepfm\"\nhidden = [100000, 100000]"), "hidden"),
        (deepfm.replace("kind = \"deepfm\"", "kind = \"deepfm\"\nhidden = [4096, 4096, 4096]"), "MLP"),
        (format!("name = \"{}\"\n{LR}", "x".repeat(5000)), "name"),
        (format!("name = \"a\\u0000b\"\n{LR}"), "control"),
        (LR.replace("[model]", "[cluster]\nps = 1000\n[model]"), "cluster.ps"),
        (LR.replace("alpha = 0.1", "alpha = 1e30"), "alpha"),
        (format!("{LR}\n[optimizer.dense]\nkind = \"sgd\"\nlearning_rate = 0.1\n"), "optimizer.dense"),
        (LR.replace("kind = \"lr\"", "kind = \"lr\"\nembedding_dim = 16"), "embedding_dim"),
        (format!("{LR}\n# {}\n", "x".repeat(limits::JOB_BYTES)), "bytes"),
    ];
    for (text, word) in cases {
        let err = JobSpec::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(word), "expected {word:?} in: {err}");
    }
}

#[test]
fn a_follow_source_parses_and_refuses_what_it_cannot_honour() {
    let follow = LR.replace("paths = [\"a.tsv\"]", "paths = [\"d/part-*\"]\nsource = \"follow\"");
    let job = JobSpec::from_toml(&follow).unwrap();
    assert_eq!((job.data.source, job.data.follow), (DataSource::Follow, FollowSpec::default()));
    let tuned = format!("{follow}\n[data.follow]\nwindow_rows = 1000\nidle_seconds = 30\n");
    assert_eq!(JobSpec::from_toml(&tuned).unwrap().data.follow.window_rows, 1000);
    let cases = [
        (follow.replace("source", "test_split = 0.1\nsource"), "test_split"),
        (format!("{follow}\n[training]\nepochs = 2\n"), "epochs"),
        (format!("{follow}\n[data.follow]\nwindow_rows = 0\n"), "window_rows"),
        (format!("{follow}\n[data.follow]\npoll_ms = 1\n"), "poll_ms"),
        (format!("{follow}\n[data.follow]\nidle_seconds = -1.0\n"), "idle_seconds"),
        (format!("{follow}\n[data.follow]\nwindow = 5\n"), "window"),
        (format!("{LR}\n[data.follow]\npoll_ms = 100\n"), "source = \"follow\""),
        (LR.replace("paths", "source = \"kafka\"\npaths"), "kafka"),
    ];
    for (text, word) in cases {
        let err = JobSpec::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(word), "expected {word:?} in: {err}");
    }
}

#[test]
fn checkpoints_fall_due_when_rows_cross_a_multiple() {
    let spec = CheckpointSpec { incremental_every: 1000, full_every: 5000 };
    assert_eq!(spec.due(0, 999), None);
    assert_eq!(spec.due(900, 1100), Some(false));
    assert_eq!(spec.due(4900, 5100), Some(true), "full wins when both are due");
    assert_eq!(CheckpointSpec::default().due(0, 1 << 40), None);
    let job = JobSpec::from_toml(&format!("{LR}\n[checkpoint]\nincremental_every = 10000\n")).unwrap();
    assert_eq!(job.checkpoint.incremental_every, 10_000);
}

#[test]
fn every_example_job_file_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            JobSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parsed += 1;
        }
    }
    assert!(parsed >= 4, "found only {parsed} example jobs in {}", dir.display());
}
