//! Writes the seed inputs of every fuzz target into fuzz/corpus/TARGET/: valid messages,
//! lines, job files, a real checkpoint, so fuzzing starts from inputs that reach deep code.
//! `cargo run -p ember-fuzz-targets --example seeds` (scripts/fuzz.sh runs it when a corpus is
//! missing). No Criteo data: the Criteo-format seeds come from the project's own generator.

use std::path::{Path, PathBuf};

use ember_core::{Optimizer, TableSpec};
use ember_proto::v1;
use prost::Message;

fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}

fn with_tag(tag: u8, msg: &impl Message) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(msg.encode_to_vec());
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root: PathBuf = std::env::args()
        .nth(1)
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"), PathBuf::from);
    // Readers.
    let mut rng = ember_core::SplitMix64::new(3);
    let criteo: String = (0..8)
        .map(|_| {
            let ints: Vec<String> = (0..13).map(|_| (rng.next_u64() % 50).to_string()).collect();
            let cats: Vec<String> = (0..26).map(|_| format!("{:08x}", rng.next_u64() as u32)).collect();
            format!("{}\t{}\t{}\n", rng.next_u64() % 2, ints.join("\t"), cats.join("\t"))
        })
        .collect();
    put(&root, "reader_criteo", "lines", criteo.as_bytes())?;
    put(
        &root,
        "reader_criteo",
        "empty-cells",
        b"0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n",
    )?;
    put(&root, "reader_libsvm", "lines", b"1 3:1 7:0.5\n-1 4:2\n0 1:1e3 2:-4\n")?;
    put(&root, "reader_libffm", "lines", b"1 0:3:1 2:7:0.5\n0 1:4:2\n")?;
    put(&root, "reader_csv", "lines", b"1,1,fr,33\n2,0,,x\n3,1,de,\n")?;
    // Job files: every example, plus one of each model.
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            put(&root, "job_file", &name, &std::fs::read(&path)?)?;
        }
    }
    // ps requests, one per method (the tag picks the method, see requests.rs).
    let sgd = Optimizer::Sgd { learning_rate: 0.1 };
    let spec: v1::TableSpec = TableSpec::sparse("u", 4, sgd).into();
    let grads: Vec<u8> = [0.5f32; 8].iter().flat_map(|g| g.to_le_bytes()).collect();
    let ps: Vec<(u8, Vec<u8>)> = vec![
        (0, with_tag(0, &v1::CreateTableRequest { spec: Some(spec), initial_values: Default::default() })),
        (1, with_tag(1, &v1::ListTablesRequest {})),
        (2, with_tag(2, &v1::DropTableRequest { table: "t".into() })),
        (3, with_tag(3, &v1::PullRequest { table: "t".into(), keys: vec![1, 2, 3] })),
        (4, with_tag(4, &v1::LookupRequest { table: "t".into(), keys: vec![1, 9] })),
        (
            5,
            with_tag(
                5,
                &v1::PushRequest {
                    table: "t".into(),
                    keys: vec![1, 2],
                    gradients: grads.clone().into(),
                    ..Default::default()
                },
            ),
        ),
        (6, with_tag(6, &v1::PullTablesRequest { tables: vec!["t".into()], keys: vec![4, 5] })),
        (
            7,
            with_tag(
                7,
                &v1::PushTablesRequest {
                    keys: vec![1, 2],
                    tables: vec![v1::TableGradients {
                        table: "t".into(),
                        gradients: grads.clone().into(),
                        ..Default::default()
                    }],
                },
            ),
        ),
        (8, with_tag(8, &v1::PullDenseRequest { names: vec!["d".into()] })),
        (
            9,
            with_tag(
                9,
                &v1::PushDenseRequest {
                    gradients: vec![v1::DenseGradient {
                        name: "d".into(),
                        gradients: grads[..16].to_vec().into(),
                        ..Default::default()
                    }],
                },
            ),
        ),
        (10, with_tag(10, &v1::DeleteKeysRequest { table: "t".into(), keys: vec![1] })),
        (11, with_tag(11, &v1::StatsRequest {})),
        (12, with_tag(12, &v1::CheckpointRequest { full: true, label: 1 })),
        (13, with_tag(13, &v1::FlushPendingRequest {})),
        (
            14,
            with_tag(
                14,
                &v1::WorkerClockRequest { group: "g".into(), worker: "w".into(), clock: 3, ..Default::default() },
            ),
        ),
        (15, with_tag(15, &v1::ExportRequest { table: "t".into() })),
    ];
    for (tag, bytes) in ps {
        put(&root, "ps_request", &format!("method-{tag}"), &bytes)?;
    }
    // Scheduler and serving requests.
    let job = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/criteo-ftrl.toml"))?;
    put(&root, "scheduler_request", "submit", &with_tag(0, &v1::SubmitJobRequest { job_toml: job }))?;
    let report = v1::ReportWorkRequest {
        rows: 2,
        predictions: [0.2f32, 0.9].iter().flat_map(|g| g.to_le_bytes()).collect::<Vec<u8>>().into(),
        labels: [0f32, 1.0].iter().flat_map(|g| g.to_le_bytes()).collect::<Vec<u8>>().into(),
        ..Default::default()
    };
    put(&root, "scheduler_request", "report", &with_tag(1, &report))?;
    put(
        &root,
        "scheduler_request",
        "register",
        &with_tag(2, &v1::RegisterRequest { role: 1, address: "127.0.0.1:7070".into() }),
    )?;
    let sample = v1::Sample {
        fields: [("I1".to_string(), "3".to_string()), ("C1".to_string(), "68fd1e64".to_string())].into_iter().collect(),
        hashed: vec![v1::HashedFeature { field: 40, id: 7, value: 0.5 }],
        ..Default::default()
    };
    let by_row = v1::Sample { row: (0..39).map(|i| i.to_string()).collect(), ..Default::default() };
    put(
        &root,
        "serving_request",
        "predict",
        &v1::PredictRequest { model: String::new(), samples: vec![sample, by_row], version: 0 }.encode_to_vec(),
    )?;
    put(
        &root,
        "serving_json",
        "instances",
        br#"{"instances": [{"I1": 3, "C1": "68fd1e64"}, {"I2": null, "C3": "x"}]}"#,
    )?;
    // A real checkpoint (its body: the target seals it) and its manifest.
    let dir = tempfile::tempdir()?;
    let store = ember_store::Store::default();
    store.create_table(TableSpec::sparse("t", 2, sgd), None)?;
    store.create_table(TableSpec::dense("d", 2, sgd), None)?;
    store.pull("t", &[1, 2, 3])?;
    let checkpoints = ember_store::Checkpointer::open(dir.path())?;
    let info = checkpoints.write(&store, ember_store::CheckpointKind::Full, 1)?;
    let file = std::fs::read(dir.path().join(&info.file))?;
    put(&root, "checkpoint", "full-sealed", &file)?;
    put(&root, "checkpoint", "full-body", &file[..file.len() - 16])?;
    put(&root, "manifest", "manifest", &std::fs::read(dir.path().join("MANIFEST.json"))?)?;
    // Codecs: each encoding of 8 values.
    let values = [0.5f32, -1.0, 2.0, 0.0, 3.5, -0.25, 1.0, -2.0];
    for (tag, encoding) in [
        (0u8, ember_core::codec::Compression::None),
        (1, ember_core::codec::Compression::Fp16),
        (2, ember_core::codec::Compression::Onebit),
    ] {
        let mut residual = vec![0f32; values.len()];
        let mut bytes = vec![tag, 8, 0];
        bytes.extend(ember_core::codec::encode_with_residual(encoding, &values, &mut residual));
        put(&root, "codec", &format!("encoding-{tag}"), &bytes)?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
