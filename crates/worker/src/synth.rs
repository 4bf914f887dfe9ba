//! Synthetic Criteo-format data from a hidden model, with the true click probability of each row.
//!
//! Each row: 13 integer columns (log-normal counts, some missing) and 26 categorical columns
//! (8-hex tokens, values drawn from a Zipf(1.1) law over per-field cardinalities, some missing).
//! The hidden model is logistic: a bias, one weight per (field, value) (per bucket for integers),
//! and four pairwise interactions, each the dot product of small per-value vectors (so an FM can
//! represent them exactly, an LR cannot). Weights are pure functions of (seed, field, value): the
//! same seed always gives the same model. The oracle file holds sigmoid(logit) per row, so the best
//! achievable AUC on a sample is known.
//!
//! A [`Window`] makes the rows one window of a time-ordered stream whose hidden model drifts: a
//! share of the weights moves linearly from one draw to another over the stream, the large
//! categorical fields' ids slide (new ids appear, old ones fade), and a poisoned window's labels
//! are flipped. Window 0 of a stream without drift is the plain generator's model.

use std::io::Write;

use ember_core::eval::sigmoid;
use ember_core::{mix64, Initializer, SplitMix64, Zipf};

use crate::features::bucketize;

pub mod stream;

/// Distinct values per categorical field (capped real Criteo cardinalities, scaled down).
const CARDINALITY: [u64; 26] = [
    1_400, 550, 200_000, 100_000, 300, 24, 12_000, 630, 3, 50_000, 5_600, 150_000, 3_200, 27, 14_000, 120_000, 11,
    5_000, 2_100, 4, 130_000, 18, 15, 90_000, 100, 60_000,
];
/// Share of missing cells per categorical field (a few fields are often empty, as in Criteo).
const CAT_MISSING: [f64; 26] = [
    0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03,
    0.76, 0.0, 0.03, 0.44, 0.03,
];
/// Field pairs with a hidden interaction (indices over the 39 fields: 0-12 integers, 13-38 categories).
const PAIRS: [(usize, usize); 4] = [(13, 14), (17, 18), (21, 26), (0, 13)];
const RANK: usize = 4;

/// Generator settings.
#[derive(Debug, Clone, Copy)]
pub struct SynthConfig {
    /// Rows to write.
    pub rows: u64,
    /// Seeds both the hidden model and the sampling.
    pub seed: u64,
    /// Where in a drifting stream these rows are (None: the plain, fixed model).
    pub window: Option<Window>,
}

/// One window of a drifting stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// The window's number (it also seeds the window's sampling).
    pub index: u64,
    /// Position in the stream, 0 at its start and 1 at its end: how far drifting weights have
    /// moved.
    pub progress: f32,
    /// Share (0..=1) of the weights that drift.
    pub drift: f32,
    /// How far the large categorical fields' ids slide per window.
    pub id_shift: u64,
    /// Labels flipped (a poisoned source).
    pub poisoned: bool,
}

/// Categorical fields with at least this many values slide their ids in a stream.
const SLIDING_CARDINALITY: u64 = 10_000;

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSummary {
    /// Rows written.
    pub rows: u64,
    /// Share of positive labels.
    pub positive_rate: f64,
}

/// The hidden model's weight for `value` in `field`.
fn weight(seed: u64, field: usize, value: u64, stddev: f32) -> f32 {
    let mut w = [0f32];
    Initializer::Normal { mean: 0.0, stddev }.fill(mix64(seed ^ field as u64), value, &mut w);
    w[0]
}

/// The weight at a point of a drifting stream: the drifting share moves linearly from its first
/// draw to a second, independent one.
fn weight_at(seed: u64, field: usize, value: u64, stddev: f32, window: Option<&Window>) -> f32 {
    let w0 = weight(seed, field, value, stddev);
    match window {
        Some(w) if w.drift > 0.0 => {
            let pick = mix64(seed ^ 0xd21f7 ^ ((field as u64) << 40) ^ value) >> 11;
            if (pick as f64) < f64::from(w.drift) * (1u64 << 53) as f64 {
                let w1 = weight(seed ^ 0xd21f7, field, value, stddev);
                w0 + (w1 - w0) * w.progress
            } else {
                w0
            }
        }
        _ => w0,
    }
}

fn factor(seed: u64, pair: usize, side: usize, value: u64) -> [f32; RANK] {
    let mut u = [0f32; RANK];
    Initializer::Normal { mean: 0.0, stddev: 0.6 }.fill(
        mix64(seed ^ 0xfac7 ^ ((pair * 2 + side) as u64) << 32),
        value,
        &mut u,
    );
    u
}

/// Writes `config.rows` rows of Criteo TSV to `out`, and each row's true probability to `oracle`.
pub fn generate(
    config: SynthConfig,
    out: &mut impl Write,
    mut oracle: Option<&mut dyn Write>,
) -> std::io::Result<SynthSummary> {
    let window = config.window.as_ref();
    let mut rng = SplitMix64::new(mix64(config.seed ^ 0x5eed ^ window.map_or(0, |w| mix64(w.index + 1))));
    let zipfs: Vec<Zipf> = CARDINALITY.iter().map(|n| Zipf::new(*n, 1.1)).collect();
    let mut positives = 0u64;
    let mut line = String::with_capacity(256);
    // Values of the 39 fields for the current row (bucket for integers, rank for categories);
    // u64::MAX marks a missing cell.
    let mut values = [0u64; 39];
    for _ in 0..config.rows {
        line.clear();
        let mut logit = -1.9f32;
        for (j, value) in values.iter_mut().take(13).enumerate() {
            if rng.next_f64() < 0.1 + 0.03 * j as f64 {
                *value = u64::MAX;
                continue;
            }
            // Log-normal counts with a field-specific scale.
            let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let x = ((0.5 + 0.25 * j as f64) + 1.3 * z).exp().floor() as i64 - 1;
            let bucket = bucketize(x);
            *value = bucket as u64;
            logit += weight_at(config.seed, j, bucket as u64, 0.25, window);
        }
        for (c, zipf) in zipfs.iter().enumerate() {
            let field = 13 + c;
            if rng.next_f64() < CAT_MISSING[c] {
                values[field] = u64::MAX;
                continue;
            }
            let mut rank = zipf.draw(&mut rng);
            if let Some(w) = window.filter(|_| CARDINALITY[c] >= SLIDING_CARDINALITY) {
                rank += w.index * w.id_shift;
            }
            values[field] = rank;
            logit += weight_at(config.seed, field, rank, 0.35, window);
        }
        for (p, (a, b)) in PAIRS.iter().enumerate() {
            if values[*a] != u64::MAX && values[*b] != u64::MAX {
                let (ua, ub) = (factor(config.seed, p, 0, values[*a]), factor(config.seed, p, 1, values[*b]));
                logit += ua.iter().zip(&ub).map(|(x, y)| x * y).sum::<f32>();
            }
        }
        let prob = sigmoid(logit);
        let clicked = rng.next_f32() < prob;
        let label = u8::from(clicked != window.is_some_and(|w| w.poisoned));
        positives += u64::from(label);
        line.push(char::from(b'0' + label));
        for value in values.iter().take(13) {
            line.push('\t');
            if *value != u64::MAX {
                // Write a representative count of the bucket (the bucket itself for small values).
                line.push_str(&representative(*value as i64).to_string());
            }
        }
        for (c, value) in values.iter().skip(13).enumerate() {
            line.push('\t');
            if *value != u64::MAX {
                let token = mix64(config.seed ^ mix64(((c as u64) << 40) | *value)) >> 32;
                line.push_str(&format!("{token:08x}"));
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        if let Some(o) = oracle.as_deref_mut() {
            writeln!(o, "{prob:.6}")?;
        }
    }
    out.flush()?;
    if let Some(o) = oracle {
        o.flush()?;
    }
    Ok(SynthSummary { rows: config.rows, positive_rate: positives as f64 / config.rows.max(1) as f64 })
}

/// The smallest count whose bucket is `bucket` (inverse of bucketize on its range).
fn representative(bucket: i64) -> i64 {
    if bucket <= 2 {
        return bucket;
    }
    let x = (bucket as f64).sqrt().exp().ceil() as i64;
    (x - 1..=x + 1).find(|x| *x > 2 && bucketize(*x) == bucket).unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{LineParser, CRITEO_CAT_COLUMNS};
    use ember_core::eval::auc;
    use ember_core::job::{DataFormat, DataSpec};

    #[test]
    fn rows_parse_as_criteo_and_the_oracle_is_informative() {
        let (mut data, mut oracle) = (Vec::new(), Vec::new());
        let summary =
            generate(SynthConfig { rows: 5_000, seed: 3, window: None }, &mut data, Some(&mut oracle)).unwrap();
        assert!((0.1..0.45).contains(&summary.positive_rate), "{summary:?}");
        let spec = DataSpec { max_bad_ratio: 0.0, ..DataSpec::of(DataFormat::Criteo, None) };
        let parser = LineParser::new(&spec, &[]).unwrap();
        let text = String::from_utf8(data.clone()).unwrap();
        let labels: Vec<f32> = text.lines().map(|l| parser.parse(l).unwrap().label).collect();
        assert_eq!(labels.len(), 5_000);
        assert!(text.lines().all(|l| l.split('\t').count() == 1 + 13 + CRITEO_CAT_COLUMNS));
        let probs: Vec<f32> = String::from_utf8(oracle).unwrap().lines().map(|p| p.parse().unwrap()).collect();
        let best = auc(&probs, &labels);
        assert!(best > 0.75, "the oracle must separate the classes well, AUC {best}");
        // Same seed, same data.
        let mut again = Vec::new();
        generate(SynthConfig { rows: 5_000, seed: 3, window: None }, &mut again, None).unwrap();
        assert_eq!(again, data);
    }

    #[test]
    fn representative_counts_land_in_their_bucket() {
        for b in [-1, 0, 1, 2, 3, 5, 10, 21, 50, 100] {
            assert_eq!(bucketize(representative(b)), b, "bucket {b}");
        }
    }
}
