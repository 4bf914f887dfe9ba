//! `ember bench ps --op verify`: reads every row of the bench's key space back and checks it.
//!
//! A load run says how fast a server answered, not whether it answered right. This pass reads
//! each key of `[0, --keys)` once with read-only lookups (nothing is created, so a lost row shows
//! as missing instead of being silently re-initialized) and reports:
//! - rows missing, and, with `--expect-initial`, rows whose values differ from the bench table's
//!   initializer (after pull-only runs every row must still hold exactly its initial values, however
//!   often it moved between DRAM and the cold tier);
//! - an order-independent digest of all (key, row) pairs, so two servers, or one server before a
//!   kill and after its restart, can be compared without exporting the rows.
//!
//! With `--expect-initial` any missing or changed row fails the command. Lookups return a row's
//! weights only, so neither check covers optimizer state or row metadata (the store's checkpoint
//! round-trip tests do).

use std::time::Instant;

use anyhow::Context;
use ember_client::PsClient;
use ember_core::mix64;
use serde::Serialize;

use crate::bench::{connect_all, BenchPsArgs, BENCH_INIT, BENCH_SEED};

/// Keys reported by value when rows are wrong (the counts cover all of them).
const SHOWN_BAD_KEYS: usize = 5;

/// What a verify pass found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read.
    pub rows_checked: u64,
    /// Keys no server had a row for.
    pub rows_missing: u64,
    /// Rows whose values differ from the initializer's (meaningful after pull-only runs).
    pub rows_changed: u64,
    /// Wrapping sum over present rows of a hash of (key, value bits), as 16 hex digits.
    pub digest: String,
    /// The first few missing or changed keys.
    pub bad_keys: Vec<u64>,
}

/// Accumulates rows in any order; merging two partial tallies gives the tally of their union.
#[derive(Debug, Default)]
struct Tally {
    checked: u64,
    missing: u64,
    changed: u64,
    digest: u64,
    bad_keys: Vec<u64>,
}

/// Hash of one row: its key and the exact bits of each value.
fn row_hash(key: u64, row: &[f32]) -> u64 {
    row.iter().fold(mix64(key ^ 0x9e37_79b9_7f4a_7c15), |h, v| mix64(h ^ u64::from(v.to_bits())))
}

impl Tally {
    /// Adds the rows of `keys` read back as `values` (`dim` per key; `missing` flags absent keys).
    fn add(&mut self, keys: &[u64], values: &[f32], missing: &[bool], dim: usize) {
        let mut expected = vec![0f32; dim];
        for (i, &key) in keys.iter().enumerate() {
            self.checked += 1;
            if missing.get(i).copied().unwrap_or(false) {
                self.missing += 1;
                self.note_bad(key);
                continue;
            }
            let row = &values[i * dim..(i + 1) * dim];
            self.digest = self.digest.wrapping_add(row_hash(key, row));
            BENCH_INIT.fill(BENCH_SEED, key, &mut expected);
            if row.iter().zip(&expected).any(|(a, b)| a.to_bits() != b.to_bits()) {
                self.changed += 1;
                self.note_bad(key);
            }
        }
    }

    fn note_bad(&mut self, key: u64) {
        if self.bad_keys.len() < SHOWN_BAD_KEYS {
            self.bad_keys.push(key);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.checked += other.checked;
        self.missing += other.missing;
        self.changed += other.changed;
        self.digest = self.digest.wrapping_add(other.digest);
        for key in other.bad_keys {
            self.note_bad(key);
        }
    }

    fn report(self) -> VerifyReport {
        VerifyReport {
            rows_checked: self.checked,
            rows_missing: self.missing,
            rows_changed: self.changed,
            digest: format!("{:016x}", self.digest),
            bad_keys: self.bad_keys,
        }
    }
}

async fn read_lane(client: PsClient, table: String, chunks: Vec<(u64, u64)>, dim: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for (lo, hi) in chunks {
        let keys: Vec<u64> = (lo..hi).collect();
        let rows = client.lookup(&table, &keys).await.with_context(|| format!("looking up keys {lo}..{hi}"))?;
        anyhow::ensure!(
            rows.dim == dim && rows.values.len() == keys.len() * dim,
            "table {table} has rows of {} values, --dim says {dim}",
            rows.dim
        );
        tally.add(&keys, &rows.values, &rows.missing, dim);
    }
    Ok(tally)
}

/// Reads every key of the bench key space once and checks it.
pub async fn verify(args: &BenchPsArgs) -> anyhow::Result<(VerifyReport, f64)> {
    anyhow::ensure!(args.batch > 0 && args.keys > 0 && args.dim > 0, "--batch, --keys and --dim must be > 0");
    let clients = connect_all(args).await?;
    let started = Instant::now();
    let chunks: Vec<(u64, u64)> =
        (0..args.keys).step_by(args.batch).map(|lo| (lo, (lo + args.batch as u64).min(args.keys))).collect();
    let lanes = args.concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let mine = chunks.iter().copied().skip(lane).step_by(lanes).collect();
        tasks.spawn(read_lane(clients[lane % clients.len()].clone(), args.table.clone(), mine, args.dim as usize));
    }
    let mut all = Tally::default();
    while let Some(done) = tasks.join_next().await {
        all.merge(done.context("verify task")??);
    }
    Ok((all.report(), started.elapsed().as_secs_f64()))
}

/// `ember bench ps --op verify`: prints the report; fails on bad rows under `--expect-initial`.
pub async fn run(args: &BenchPsArgs) -> anyhow::Result<()> {
    let (report, seconds) = verify(args).await?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["op"] = "verify".into();
        value["seconds"] = seconds.into();
        value["keys_per_sec"] = (report.rows_checked as f64 / seconds.max(1e-9)).into();
        println!("{value}");
    } else {
        println!(
            "verify: {} rows read in {seconds:.1}s, {} missing, {} differ from the initializer, digest {}",
            report.rows_checked, report.rows_missing, report.rows_changed, report.digest
        );
    }
    if args.expect_initial {
        anyhow::ensure!(
            report.rows_missing == 0 && report.rows_changed == 0,
            "{} rows missing and {} changed (first keys: {:?})",
            report.rows_missing,
            report.rows_changed,
            report.bad_keys
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial_rows(keys: &[u64], dim: usize) -> Vec<f32> {
        let mut values = vec![0f32; keys.len() * dim];
        for (key, row) in keys.iter().zip(values.chunks_mut(dim)) {
            BENCH_INIT.fill(BENCH_SEED, *key, row);
        }
        values
    }

    #[test]
    fn initial_rows_pass_and_a_changed_or_missing_row_is_caught() {
        let (keys, dim) = ((0..100).collect::<Vec<u64>>(), 4);
        let mut values = initial_rows(&keys, dim);
        let mut good = Tally::default();
        good.add(&keys, &values, &[], dim);
        assert_eq!((good.checked, good.missing, good.changed), (100, 0, 0));

        values[7 * dim + 2] = f32::from_bits(values[7 * dim + 2].to_bits() ^ 1); // one ulp
        let mut missing = vec![false; keys.len()];
        missing[42] = true;
        let mut bad = Tally::default();
        bad.add(&keys, &values, &missing, dim);
        assert_eq!((bad.checked, bad.missing, bad.changed, bad.bad_keys.clone()), (100, 1, 1, vec![7, 42]));
        assert_ne!(bad.digest, good.digest);
    }

    #[test]
    fn the_digest_does_not_depend_on_order_or_on_how_rows_are_split() {
        let (keys, dim) = ((1000..1300).collect::<Vec<u64>>(), 3);
        let values = initial_rows(&keys, dim);
        let mut whole = Tally::default();
        whole.add(&keys, &values, &[], dim);

        let (mut a, mut b) = (Tally::default(), Tally::default());
        let rev_keys: Vec<u64> = keys[..150].iter().rev().copied().collect();
        let rev_values: Vec<f32> = values[..150 * dim].chunks(dim).rev().flatten().copied().collect();
        a.add(&rev_keys, &rev_values, &[], dim);
        b.add(&keys[150..], &values[150 * dim..], &[], dim);
        b.merge(a);
        assert_eq!(b.report(), whole.report());
    }

    #[test]
    fn swapping_two_rows_changes_the_digest() {
        let (keys, dim) = ([5u64, 6], 2);
        let values = initial_rows(&keys, dim);
        let swapped: Vec<f32> = values[dim..].iter().chain(&values[..dim]).copied().collect();
        let (mut a, mut b) = (Tally::default(), Tally::default());
        a.add(&keys, &values, &[], dim);
        b.add(&keys, &swapped, &[], dim);
        assert_ne!(a.digest, b.digest);
        assert_eq!(b.changed, 2);
    }
}
