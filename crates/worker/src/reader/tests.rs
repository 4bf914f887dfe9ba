//! Readers on real data (`../shared/data`) and on broken lines.

use std::io::Write;
use std::path::PathBuf;

use ember_core::job::{CsvSchema, DataFormat, DataSpec};

use super::*;
use crate::features::{feature_id, Feature};

fn shared(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (CI always has ../shared)", path.display());
        None
    }
}

fn data_spec(format: DataFormat, paths: Vec<String>, schema: Option<CsvSchema>) -> DataSpec {
    DataSpec { paths, ..DataSpec::of(format, schema) }
}

fn read_all(spec: &DataSpec) -> Result<(Vec<Example>, BadLines), ReadError> {
    let files = expand_paths(&spec.paths, &ember_model::DataRoots::unrestricted())?;
    let parser = LineParser::new(spec, &files)?;
    let mut all = Vec::new();
    let bad = read_rows(&files, &parser, (0, u64::MAX), 1000, spec.max_bad_ratio, |b| {
        all.extend(b);
        true
    })?;
    Ok((all, bad))
}

#[test]
fn criteo_slice_reads_every_line() {
    let Some(path) = shared("criteo/train_10k.tsv") else { return };
    let spec = data_spec(DataFormat::Criteo, vec![path.display().to_string()], None);
    let files = expand_paths(&spec.paths, &ember_model::DataRoots::unrestricted()).unwrap();
    let parser = LineParser::new(&spec, &files).unwrap();
    assert_eq!(count_rows(&files, &parser).unwrap(), 10_000);
    let (examples, bad) = read_all(&spec).unwrap();
    assert_eq!((examples.len(), bad.count), (10_000, 0));
    assert!(examples.iter().all(|e| e.features.len() == 39));
    let positives = examples.iter().filter(|e| e.label == 1.0).count();
    assert!((2_100..2_300).contains(&positives), "README says 21.8% positive, got {positives}");
    // A row range reads exactly those rows.
    let mut tail = Vec::new();
    read_rows(&files, &parser, (9_000, 10_000), 128, 0.01, |b| {
        tail.extend(b);
        true
    })
    .unwrap();
    assert_eq!(tail, examples[9_000..]);
}

#[test]
fn census_income_reads_as_headerless_csv() {
    let Some(path) = shared("census/census-income.test.gz") else { return };
    let columns: Vec<String> = (0..42).map(|i| format!("c{i}")).collect();
    let schema = CsvSchema {
        delimiter: ',',
        columns: Some(columns.clone()),
        label: "c41".into(),
        positive: vec!["50000+.".into()],
        categorical: columns[1..41].iter().filter(|c| *c != "c24").cloned().collect(),
        numeric: vec!["c0".into()],
        ignore: vec!["c24".into()],
    };
    let spec = data_spec(DataFormat::Csv, vec![path.display().to_string()], Some(schema));
    let (examples, bad) = read_all(&spec).unwrap();
    assert_eq!((examples.len(), bad.count), (99_762, 0));
    assert_eq!(examples.iter().filter(|e| e.label == 1.0).count(), 6_186);
    assert!(examples.iter().all(|e| e.features.len() == 40));
}

#[test]
fn broken_lines_are_counted_skipped_and_reported_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("1\t{}\t{}", ["5"; 13].join("\t"), ["68fd1e64"; 26].join("\t"));
    let path = dir.path().join("part.tsv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{good}\n2\t{}\n{good}\nnot a line\n{}", &good[2..], good.replace("\t5\t", "\tfive\t")).unwrap();
    let mut spec = data_spec(DataFormat::Criteo, vec![path.display().to_string()], None);
    spec.max_bad_ratio = 1.0;
    let (examples, bad) = read_all(&spec).unwrap();
    assert_eq!((examples.len(), bad.count), (2, 3));
    assert!(bad.first[0].ends_with("part.tsv:2: label \"2\" is not 0 or 1"), "{:?}", bad.first);
    assert!(bad.first[1].contains(":4: label \"not a line\""), "{:?}", bad.first);
    assert!(bad.first[2].contains(":5: I1: \"five\" is not an integer"), "{:?}", bad.first);
    spec.max_bad_ratio = 0.5;
    let err = read_all(&spec).unwrap_err().to_string();
    assert!(err.contains("3 of 5 lines malformed") && err.contains("part.tsv:2"), "{err}");
}

#[test]
fn globs_and_gzip_are_read_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.svm"), "0 7:1 9:0.5\n").unwrap();
    let gz = std::fs::File::create(dir.path().join("a.svm.gz")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::default());
    enc.write_all(b"1 3:2\n-1 4:1\n").unwrap();
    enc.finish().unwrap();
    let spec = data_spec(DataFormat::Libsvm, vec![format!("{}/*.svm*", dir.path().display())], None);
    let (examples, _) = read_all(&spec).unwrap();
    assert_eq!(examples.iter().map(|e| e.label).collect::<Vec<_>>(), vec![1.0, 0.0, 0.0]);
    assert_eq!(examples[0].features, vec![Feature { field: 0, id: feature_id(0, b"3"), value: 2.0 }]);
    let missing = data_spec(DataFormat::Libsvm, vec![format!("{}/*.nope", dir.path().display())], None);
    assert!(matches!(read_all(&missing), Err(ReadError::NoFiles(_))));
}

#[test]
fn libffm_and_csv_lines_parse_and_bad_schemas_are_refused() {
    let ffm = LineParser::new(&data_spec(DataFormat::Libffm, Vec::new(), None), &[]).unwrap();
    let ex = ffm.parse("1 2:10:1 5:3:0.5").unwrap();
    assert_eq!(ex.features[1], Feature { field: 5, id: feature_id(5, b"3"), value: 0.5 });
    assert!(ffm.parse("1 10:1").unwrap_err().contains("field:index:value"));
    assert!(ffm.parse("1 2:10:nan").is_err());
    // Issue 21, item 9: labels `nan` / `inf` parse as f32 but are no label; values that would
    // overflow a prediction are refused too.
    let svm = LineParser::new(&data_spec(DataFormat::Libsvm, Vec::new(), None), &[]).unwrap();
    for bad in ["nan 3:1", "inf 3:1", "-inf 3:1", "1 3:3e38", "1 3:-1e7"] {
        assert!(svm.parse(bad).is_err(), "{bad:?} parsed");
    }
    assert!(svm.parse("1 3:1e5").is_ok());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.csv");
    std::fs::write(&path, "id,clicked,country,age\n1,1,fr,33\n2,0,,x\n").unwrap();
    let schema = CsvSchema {
        delimiter: ',',
        columns: None,
        label: "clicked".into(),
        positive: vec!["1".into()],
        categorical: vec!["country".into()],
        numeric: vec!["age".into()],
        ignore: vec!["id".into()],
    };
    let mut s = data_spec(DataFormat::Csv, vec![path.display().to_string()], Some(schema.clone()));
    s.max_bad_ratio = 1.0;
    let (examples, bad) = read_all(&s).unwrap();
    assert_eq!(examples.len(), 1);
    assert_eq!(examples[0].features[0].id, feature_id(0, b"fr"), "feature columns are numbered 0..");
    assert_eq!(examples[0].features[1].field, 1);
    assert!(bad.first[0].contains(":3: column 4: \"x\" is not a number"), "{:?}", bad.first);
    // A serving request naming the same columns hashes to the same features.
    let parser = LineParser::new(&s, std::slice::from_ref(&path)).unwrap();
    let named = parser.input_schema().example([("age", "33"), ("country", "fr")], &[]).unwrap();
    assert_eq!(named.features, examples[0].features);
    let mut missing_col = schema;
    missing_col.ignore.clear();
    let s = data_spec(DataFormat::Csv, vec![path.display().to_string()], Some(missing_col));
    let err = read_all(&s).unwrap_err().to_string();
    assert!(err.contains("column \"id\" is not in the schema"), "{err}");
}

#[test]
fn a_byte_range_reads_exactly_its_lines_with_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.svm");
    std::fs::write(&path, "1 1:1\n0 2:1\nbad\n1 3:1\n").unwrap();
    let spec = data_spec(DataFormat::Libsvm, vec![path.display().to_string()], None);
    let parser = LineParser::new(&spec, std::slice::from_ref(&path)).unwrap();
    let mut got = Vec::new();
    // Bytes 6..22 are lines 2-4.
    let bad = read_range(&path, &parser, (6, 22), 2, 10, |b| {
        got.extend(b);
        true
    })
    .unwrap();
    assert_eq!(got.iter().map(|e| e.label).collect::<Vec<_>>(), vec![0.0, 1.0]);
    assert_eq!(bad.count, 1);
    assert!(bad.first[0].ends_with("d.svm:3: label \"bad\" is not a number"), "{:?}", bad.first);
}
