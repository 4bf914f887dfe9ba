use super::*;
use crate::model::DeepFm;
use crate::tables::Model;

fn manifest() -> (ModelManifest, Vec<Layer>) {
    let m = DeepFm { k: 2, fields: 3, hidden: vec![4] };
    let dense = m.init_dense(7);
    let tables = ModelTables {
        linear: "job.w".into(),
        embedding: Some("job.v".into()),
        dense: vec![("job.mlp0.w".into(), "job.mlp0.b".into()), ("job.mlp1.w".into(), "job.mlp1.b".into())],
        model: Model::DeepFm(m),
    };
    let manifest = ModelManifest {
        format: 0,
        version: 0,
        name: "ctr".into(),
        job: "job-1".into(),
        rows_trained: 1000,
        created_unix_ms: 0,
        tables,
        sparse_tables: Vec::new(),
        data_format: DataFormat::Criteo,
        schema: InputSchema::criteo(),
        checkpoint: Some(1000),
        sparse_cuts: vec![SparseCut { stream_id: 7, seq: 42 }],
        sparse_checkpoints: vec![3, 5],
        dense_values: 0,
        dense_xxh3: 0,
        held: None,
    };
    (manifest, dense)
}

#[test]
fn published_versions_load_back_and_become_current() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path().join("models"));
    assert_eq!(models.current().unwrap(), None);
    let (m, dense) = manifest();
    assert_eq!(models.publish(m.clone(), &dense, 5).unwrap(), 1);
    let mut dense2 = dense.clone();
    dense2[0].w[0] += 1.0;
    assert_eq!(models.publish(m, &dense2, 5).unwrap(), 2);
    assert_eq!(models.current().unwrap(), Some(2));
    let loaded = models.load(1).unwrap();
    assert_eq!(loaded.dense, dense);
    assert_eq!(loaded.manifest.version, 1);
    assert_eq!(loaded.manifest.schema, InputSchema::criteo());
    assert_eq!(models.load(2).unwrap().dense, dense2);
    assert!(matches!(models.load(3), Err(RegistryError::NoVersion(3))));
}

#[test]
fn publishing_keeps_the_newest_versions_and_never_the_current_one_away() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path());
    let (m, dense) = manifest();
    for _ in 0..4 {
        models.publish(m.clone(), &dense, 2).unwrap();
    }
    assert_eq!(models.versions().unwrap(), vec![3, 4]);
    models.rollback(3).unwrap();
    assert_eq!(models.current().unwrap(), Some(3));
    // A publish makes the new version current; the rolled-back-to version is then the oldest.
    models.publish(m.clone(), &dense, 2).unwrap();
    assert_eq!(models.versions().unwrap(), vec![4, 5]);
    models.rollback(4).unwrap();
    models.publish(m, &dense, 1).unwrap();
    assert_eq!(models.versions().unwrap(), vec![6]);
    assert!(matches!(models.rollback(2), Err(RegistryError::NoVersion(2))));
}

#[test]
fn corrupt_versions_are_refused_and_rollback_to_them_fails() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path());
    let (m, dense) = manifest();
    models.publish(m.clone(), &dense, 5).unwrap();
    models.publish(m, &dense, 5).unwrap();
    let file = models.version_dir(1).join(DENSE);
    let mut bytes = fs::read(&file).unwrap();
    bytes[5] ^= 0x40;
    fs::write(&file, &bytes).unwrap();
    let err = models.load(1).unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err}");
    assert!(models.rollback(1).is_err());
    assert_eq!(models.current().unwrap(), Some(2), "a failed rollback changes nothing");
    fs::write(models.version_dir(2).join(MANIFEST), b"{").unwrap();
    assert!(matches!(models.load(2), Err(RegistryError::Corrupt { .. })));
    let listed = models.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[1].manifest.is_err() && listed[1].current, "listed with its error, still current");
}

#[test]
fn a_stray_temporary_directory_is_not_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path());
    fs::create_dir(dir.path().join(".tmp-1-2")).unwrap();
    assert_eq!(models.versions().unwrap(), Vec::<u64>::new());
    assert!(models.current().unwrap().is_none());
}

#[test]
fn concurrent_publishes_of_one_process_all_succeed() {
    // Each publish renames its own temporary CURRENT into place; sharing one name made one of two
    // concurrent publishes fail with "CURRENT: No such file or directory".
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path());
    let (m, dense) = manifest();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    models.publish(m.clone(), &dense, 200).unwrap();
                }
            });
        }
    });
    assert_eq!(models.versions().unwrap().len(), 100, "every publish wrote a version");
    assert!(models.current().unwrap().is_some());
}

/// A held version is written and listed with its reason, but never current: not by its
/// publish, not as the newest without `CURRENT`, not by rollback.
#[test]
fn held_versions_are_kept_but_never_made_current() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelDir::new(dir.path().join("models"));
    let (m, dense) = manifest();
    let held = ModelManifest { held: Some("window AUC 0.41 < 0.70 - 0.02".into()), ..m.clone() };
    assert_eq!(models.publish(held.clone(), &dense, 5).unwrap(), 1);
    assert_eq!(models.current().unwrap(), None, "the only version is held");
    assert_eq!(models.publish(m.clone(), &dense, 5).unwrap(), 2);
    assert_eq!(models.publish(held, &dense, 5).unwrap(), 3);
    assert_eq!(models.current().unwrap(), Some(2));
    std::fs::remove_file(dir.path().join("models").join(CURRENT)).unwrap();
    assert_eq!(models.current().unwrap(), Some(2), "the newest version not held");
    let err = models.rollback(3).unwrap_err();
    assert!(matches!(&err, RegistryError::Held(3, r) if r.contains("0.41")), "{err}");
    assert_eq!(models.current().unwrap(), Some(2), "a refused rollback changes nothing");
    let listed: Vec<_> =
        models.list().unwrap().into_iter().map(|l| (l.version, l.manifest.unwrap().held.is_some())).collect();
    assert_eq!(listed, vec![(1, true), (2, false), (3, true)]);
}
