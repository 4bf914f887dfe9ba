//! Damage to checkpoint files on disk: every file of a chain in turn, the newest full, files
//! left by a killed writer, and what pruning may delete.

use std::fs;
use std::path::Path;

use ember_core::SplitMix64;

use super::*;

/// The ways a file gets damaged on disk.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipByte,
    Truncate,
    Delete,
}

fn apply(damage: Damage, path: &Path) {
    match damage {
        Damage::FlipByte => {
            let mut bytes = fs::read(path).unwrap();
            let at = bytes.len() / 3;
            bytes[at] ^= 0x01;
            fs::write(path, bytes).unwrap();
        }
        Damage::Truncate => {
            let len = fs::metadata(path).unwrap().len();
            fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
        }
        Damage::Delete => fs::remove_file(path).unwrap(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn empty_store() -> Store {
    Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 100_000, ..StoreConfig::default() })
}

/// Checkpoints of one churned store: `kinds[i]` written after more churn, with the store's
/// contents at each. Returns (file name, contents at that checkpoint) per checkpoint.
fn history(dir: &Path, seed: u64, kinds: &[CheckpointKind]) -> Vec<(String, BTreeMap<String, Rows>)> {
    let (store, ckpt) = (new_store(), Checkpointer::open(dir).unwrap());
    let mut rng = SplitMix64::new(seed);
    kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            churn(&store, &mut rng, 12);
            let info = ckpt.write(&store, kind, i as u64).unwrap();
            assert_eq!(info.kind, kind);
            (info.file, contents(&store))
        })
        .collect()
}

#[test]
fn damaging_each_file_of_a_chain_restores_the_newest_intact_prefix() {
    use CheckpointKind::{Full, Incremental};
    let kinds = [Full, Incremental, Incremental, Incremental];
    let original = tempfile::tempdir().unwrap();
    let written = history(original.path(), 11, &kinds);
    for damage in [Damage::FlipByte, Damage::Truncate, Damage::Delete] {
        for (victim, (file, _)) in written.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            apply(damage, &dir.path().join(file));
            let store = empty_store();
            let result = Checkpointer::open(dir.path()).unwrap().restore(&store, IfNoIntactChain::Refuse);
            if victim == 0 {
                // The only full is gone: refuse, naming it (unless deleted: then the orphaned
                // incrementals are named).
                let err = result.unwrap_err();
                assert!(matches!(err, CheckpointError::NoIntactChain { .. }), "{damage:?}: {err}");
                let named = if matches!(damage, Damage::Delete) { &written[1].0 } else { file };
                assert!(err.to_string().contains(named.as_str()), "{damage:?}: {err}");
                assert!(store.list_tables().is_empty());
                continue;
            }
            let chain = result.unwrap_or_else(|e| panic!("{damage:?} on file {victim}: {e}"));
            assert_eq!(chain.len(), victim, "{damage:?} on file {victim}");
            assert_eq!(contents(&store), written[victim - 1].1, "{damage:?} on file {victim}");
        }
        // The manifest is for operators: damaging it changes nothing that restore applies.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        let manifest = dir.path().join("MANIFEST.json");
        if matches!(damage, Damage::Delete) {
            fs::remove_file(&manifest).unwrap();
        } else {
            fs::write(&manifest, b"{ not json").unwrap();
        }
        let store = empty_store();
        let chain = Checkpointer::open(dir.path()).unwrap().restore(&store, IfNoIntactChain::Refuse).unwrap();
        assert_eq!(chain.len(), kinds.len());
        assert_eq!(contents(&store), written[kinds.len() - 1].1);
    }
}

#[test]
fn a_damaged_newest_full_restores_the_previous_generation() {
    use CheckpointKind::{Full, Incremental};
    let original = tempfile::tempdir().unwrap();
    let written = history(original.path(), 12, &[Full, Incremental, Full, Incremental]);
    for (victim, expected) in [(2, 1), (3, 2), (0, 3), (1, 3)] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        apply(Damage::FlipByte, &dir.path().join(&written[victim].0));
        let store = empty_store();
        Checkpointer::open(dir.path()).unwrap().restore(&store, IfNoIntactChain::Refuse).unwrap();
        assert_eq!(contents(&store), written[expected].1, "damaged file {victim}");
    }
}

#[test]
fn starting_empty_when_allowed_keeps_the_damaged_files_for_a_generation() {
    use CheckpointKind::{Full, Incremental};
    let dir = tempfile::tempdir().unwrap();
    let written = history(dir.path(), 13, &[Full, Incremental]);
    apply(Damage::Truncate, &dir.path().join(&written[0].0));
    let store = new_store();
    let ckpt = Checkpointer::open(dir.path()).unwrap();
    assert!(ckpt.restore(&empty_store(), IfNoIntactChain::Refuse).is_err());
    assert!(ckpt.restore(&store, IfNoIntactChain::StartEmpty).unwrap().is_empty());
    // The first new full prunes nothing: the damaged chain is still there for an operator.
    ckpt.write(&store, CheckpointKind::Full, 10).unwrap();
    let files = names(dir.path());
    assert!(files.contains(&written[0].0) && files.contains(&written[1].0), "{files:?}");
}

#[test]
fn no_chain_is_deleted_until_two_newer_verified_fulls_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    let mut rng = SplitMix64::new(14);
    let mut write = |kind| {
        churn(&store, &mut rng, 5);
        ckpt.write(&store, kind, 0).map(|info| info.file)
    };
    let f1 = write(CheckpointKind::Full).unwrap();
    let i2 = write(CheckpointKind::Incremental).unwrap();
    let f3 = write(CheckpointKind::Full).unwrap();
    let files = names(dir.path());
    assert!(files.contains(&f1) && files.contains(&i2), "one newer full is not enough: {files:?}");
    // A full that fails (disk full) or fails its read-back prunes nothing.
    ckpt.fail_writes_after(Some(100));
    assert!(write(CheckpointKind::Full).is_err());
    ckpt.fail_writes_after(None);
    ckpt.damage_next_write();
    let err = write(CheckpointKind::Full).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    let files = names(dir.path());
    assert!(files.contains(&f1) && files.contains(&i2) && files.contains(&f3), "{files:?}");
    assert!(files.iter().all(|n| !n.ends_with(".tmp")), "{files:?}");
    assert_eq!(files.iter().filter(|n| n.ends_with(".ckpt")).count(), 3, "the damaged file was removed: {files:?}");
    // A verified full after it: now the first chain has two newer fulls and goes.
    let f6 = write(CheckpointKind::Full).unwrap();
    let files = names(dir.path());
    assert!(!files.contains(&f1) && !files.contains(&i2), "{files:?}");
    assert!(files.contains(&f3) && files.contains(&f6), "{files:?}");
}

#[test]
fn temporary_files_of_a_killed_writer_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let written = history(dir.path(), 15, &[CheckpointKind::Full]);
    // What kill -9 during a write leaves: a partial checkpoint and manifest under .tmp names.
    fs::write(dir.path().join("0000000000000002-full.ckpt.tmp"), vec![7u8; 4096]).unwrap();
    fs::write(dir.path().join("MANIFEST.json.tmp"), b"{").unwrap();
    let ckpt = Checkpointer::open(dir.path()).unwrap();
    assert_eq!(names(dir.path()), vec![written[0].0.clone(), "MANIFEST.json".to_string()]);
    let store = empty_store();
    assert_eq!(ckpt.restore(&store, IfNoIntactChain::Refuse).unwrap().len(), 1);
    assert_eq!(contents(&store), written[0].1);
}

#[test]
fn a_row_holding_nan_in_a_checkpoint_is_skipped_not_restored() {
    use ember_core::{Initializer, Optimizer, TableSpec};
    let dir = tempfile::tempdir().unwrap();
    let store = empty_store();
    let sgd = Optimizer::Sgd { learning_rate: 1.0 };
    store.create_table(TableSpec::sparse("s", 1, sgd).with_initializer(Initializer::Zeros, 0), None).unwrap();
    store.push("s", &[7, 8], &[(-1234.5f32).to_le_bytes(), (-2.0f32).to_le_bytes()].concat()).unwrap();
    let info = Checkpointer::open(dir.path()).unwrap().write(&store, CheckpointKind::Full, 0).unwrap();
    // What a checkpoint written before the store guarded its updates could hold: row 7 is NaN.
    let path = dir.path().join(&info.file);
    let file = fs::read(&path).unwrap();
    let mut body = file[..file.len() - 16].to_vec();
    let at = body.windows(4).position(|w| w == 1234.5f32.to_le_bytes()).unwrap();
    body[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&path, format::seal(&body)).unwrap();
    let copy = empty_store();
    Checkpointer::open(dir.path()).unwrap().restore(&copy, IfNoIntactChain::Refuse).unwrap();
    let table = copy.sparse("s").unwrap();
    assert!(table.get(7).is_none(), "the NaN row was not restored");
    assert_eq!(table.get(8).map(|(v, _)| v[0]), Some(2.0));
}
