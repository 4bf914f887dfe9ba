//! Replays every committed fuzz input (fuzz/corpus/TARGET/* and any fuzz/artifacts/TARGET/*
//! crash files) through its target: a crash found once stays fixed. Bounded: each input is one
//! call, and the corpora are a few thousand small files.

use std::path::Path;

#[test]
fn every_committed_fuzz_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut total = 0;
    for (name, target) in ember_fuzz_targets::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                target(&bytes);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus committed for fuzz target {name}");
        total += inputs;
    }
    eprintln!("replayed {total} fuzz inputs");
}
