//! The serving tests' common setup: a ps-server (with metrics) holding a DeepFM trained by
//! `ember train --model-dir`, its published versions, and the hold-out rows.

use std::path::{Path, PathBuf};

use ember_proto::v1;

use super::{ember, start, Proc};

/// A ps-server holding a trained DeepFM, its model directory, and the hold-out rows.
pub struct Trained {
    pub _ps: Proc,
    pub ps: String,
    /// The ps-server's `/metrics` URL.
    pub ps_metrics: String,
    pub models: PathBuf,
    pub test_data: PathBuf,
    /// The training side's predictions of the hold-out rows.
    pub test_probs: Vec<f32>,
    pub _dir: tempfile::TempDir,
}

pub fn train() -> Trained {
    train_with("")
}

/// `train` with `extra` appended to the job file.
pub fn train_with(extra: &str) -> Trained {
    train_with_ps(extra, &[])
}

/// `train_with`, the ps-server started with `ps_flags` too.
pub fn train_with_ps(extra: &str, ps_flags: &[&str]) -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth.tsv");
    ember(&["gen-data", "--rows", "5000", "--seed", "3", "--out", data.to_str().unwrap()]);
    let job = format!(
        r#"
        version = 1
        name = "ctr"
        [data]
        format = "criteo"
        paths = ["{}"]
        test_split = 0.1
        [model]
        kind = "deepfm"
        embedding_dim = 4
        hidden = [16]
        [training]
        batch_size = 256
        [publish]
        every = 500
        keep = 10
        {extra}
        "#,
        data.display()
    );
    let job_path = dir.path().join("job.toml");
    std::fs::write(&job_path, job).unwrap();
    let ps_dir = dir.path().join("ps");
    let mut args = vec![
        "ps",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        ps_dir.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(ps_flags);
    let (ps_proc, found) = start(&args, &["ember ps listening on ", "ember ps metrics on "]);
    let (ps, ps_metrics) = (found[0].clone(), found[1].clone());
    let models = dir.path().join("models");
    let preds = dir.path().join("train-preds.txt");
    ember(&[
        "train",
        job_path.to_str().unwrap(),
        "--ps",
        &ps,
        "--model-dir",
        models.to_str().unwrap(),
        "--test-predictions",
        preds.to_str().unwrap(),
        "--workdir",
        dir.path().to_str().unwrap(),
    ]);
    let test_probs: Vec<f32> = std::fs::read_to_string(&preds).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let text = std::fs::read_to_string(&data).unwrap();
    let test_data = dir.path().join("test.tsv");
    let test_lines: Vec<&str> = text.lines().skip(4500).collect();
    assert_eq!(test_lines.len(), test_probs.len());
    std::fs::write(&test_data, test_lines.join("\n") + "\n").unwrap();
    Trained { _ps: ps_proc, ps, ps_metrics, models, test_data, test_probs, _dir: dir }
}

pub fn samples(path: &Path, n: usize) -> Vec<v1::Sample> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let mut s = v1::Sample::default();
            for (i, cell) in line.split('\t').skip(1).enumerate() {
                let name = if i < 13 { format!("I{}", i + 1) } else { format!("C{}", i - 12) };
                s.fields.insert(name, cell.to_string());
            }
            s
        })
        .collect()
}
