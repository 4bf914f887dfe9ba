//! Fuzz entry points: each takes arbitrary bytes and must return, without panicking, hanging or
//! allocating without bound, whatever the bytes are. They cover every decoder of input Ember
//! does not control: the four data readers, job files, every gRPC request (decoded and handled
//! by a real ps-server service over an in-memory store, or converted to domain types for the
//! scheduler and serving), serving's REST bodies, checkpoint files and manifests, and the
//! gradient codecs.
//!
//! `fuzz/` (cargo-fuzz) runs each under libFuzzer; `tests/replay.rs` feeds every committed
//! corpus and crash file through the same functions on every `make test`.

mod requests;

use std::io::Cursor;
use std::path::Path;

use ember_core::codec::{self, Compression};
use ember_core::job::{CsvSchema, DataFormat, DataSpec};
use ember_worker::reader::{read_from, LineParser};

pub use requests::{ps_request, scheduler_request, serving_request};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every entry point, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("reader_criteo", reader_criteo),
    ("reader_libsvm", reader_libsvm),
    ("reader_libffm", reader_libffm),
    ("reader_csv", reader_csv),
    ("job_file", job_file),
    ("ps_request", ps_request),
    ("scheduler_request", scheduler_request),
    ("serving_request", serving_request),
    ("serving_json", serving_json),
    ("checkpoint", checkpoint),
    ("manifest", manifest),
    ("codec", codec),
];

fn read_all(format: DataFormat, schema: Option<CsvSchema>, data: &[u8]) {
    let spec = DataSpec { max_bad_ratio: 1.0, ..DataSpec::of(format, schema) };
    let Ok(parser) = LineParser::new(&spec, &[]) else { return };
    let mut rows = 0usize;
    let bad = read_from(&mut Cursor::new(data), Path::new("fuzz"), &parser, 1, 64, |batch| {
        rows += batch.len();
        true
    });
    if let Ok(bad) = bad {
        assert!(bad.first.iter().all(|s| s.len() < 1024), "bad-line samples are short");
        assert!(bad.count as usize + rows <= data.len() + 1, "more lines than bytes");
    }
}

/// Criteo TSV lines.
pub fn reader_criteo(data: &[u8]) {
    read_all(DataFormat::Criteo, None, data);
}

/// libsvm lines.
pub fn reader_libsvm(data: &[u8]) {
    read_all(DataFormat::Libsvm, None, data);
}

/// libffm lines.
pub fn reader_libffm(data: &[u8]) {
    read_all(DataFormat::Libffm, None, data);
}

/// CSV lines under a fixed schema (label, a categorical and a numeric column, one ignored).
pub fn reader_csv(data: &[u8]) {
    let schema = CsvSchema {
        delimiter: ',',
        columns: Some(vec!["id".into(), "clicked".into(), "country".into(), "age".into()]),
        label: "clicked".into(),
        positive: vec!["1".into()],
        categorical: vec!["country".into()],
        numeric: vec!["age".into()],
        ignore: vec!["id".into()],
    };
    read_all(DataFormat::Csv, Some(schema), data);
}

/// A REST predict body (TF Serving's `{"instances": [...]}`), parsed as the HTTP handler does.
pub fn serving_json(data: &[u8]) {
    let _ = ember_serving::http::parse_instances(data);
}

/// A job file: parsed and validated; a valid one is within the limits.
pub fn job_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(job) = ember_core::JobSpec::from_toml(text) {
        assert!(job.training.batch_size <= ember_core::job::limits::BATCH_SIZE);
        assert!(job.name.chars().count() <= ember_core::job::limits::NAME_CHARS);
    }
}

/// A checkpoint file, as found (the checksum rarely holds) and sealed with a valid trailer (so
/// the body parser sees every input), restored into an empty store.
pub fn checkpoint(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    for file in [data.to_vec(), ember_store::checkpoint::seal(data)] {
        let path = dir.path().join("0000000000000001-full.ckpt");
        if std::fs::write(&path, &file).is_err() {
            return;
        }
        let Ok(checkpoints) = ember_store::Checkpointer::open(dir.path()) else { return };
        let store = ember_store::Store::new(ember_store::StoreConfig {
            shard_bits: 1,
            max_batch_keys: 1024,
            ..Default::default()
        });
        if checkpoints.restore(&store, ember_store::IfNoIntactChain::Refuse).is_ok() {
            // Whatever the file held, no restored row is NaN or Inf.
            for table in store.all_tables() {
                if let ember_store::Table::Sparse(t) = table {
                    t.scan(|_, values, _| assert!(values.iter().all(|v| v.is_finite())));
                }
            }
        }
    }
}

/// A checkpoint manifest (JSON).
pub fn manifest(data: &[u8]) {
    let _ = serde_json::from_slice::<ember_store::checkpoint::Manifest>(data);
}

/// The gradient codecs' decoders: the first byte picks the encoding, the next two the number of
/// values, the rest is the encoded gradient. A decoded gradient has exactly that many values.
pub fn codec(data: &[u8]) {
    let [which, a, b, rest @ ..] = data else { return };
    let encoding = match which % 3 {
        0 => Compression::None,
        1 => Compression::Fp16,
        _ => Compression::Onebit,
    };
    let values = usize::from(u16::from_le_bytes([*a, *b]));
    if let Ok(decoded) = codec::decode(encoding, rest, values) {
        assert_eq!(decoded.len(), values);
    }
}
