//! Feature hashing: raw (field, value) pairs -> 64-bit feature ids.
//!
//! Invariant: `feature_id(field, value)` is a pure function of its inputs (xxh3, fixed seeds), so
//! the same raw feature gets the same id in every run, process and role; serving hashes exactly as
//! training did. The field is folded into the seed, so equal values in different fields differ.

use ember_core::mix64;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Largest magnitude of a feature's value (libsvm / libffm values, pre-hashed serving inputs).
/// A value multiplies embeddings and is squared by FM's pairwise term: 3e38 overflowed a
/// prediction to NaN. Values are expected to be normalized well below this.
pub const MAX_FEATURE_VALUE: f32 = 1e6;

/// Seed base for field-aware hashing.
const FIELD_SEED: u64 = 0x0e3b_e12f_6c1d_57a1;

/// One hashed feature of an example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    /// Field (column) number.
    pub field: u32,
    /// Hashed id of (field, raw value).
    pub id: u64,
    /// Feature value (1 for categorical features).
    pub value: f32,
}

/// A labelled example.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    /// 0 or 1.
    pub label: f32,
    /// Its features.
    pub features: Vec<Feature>,
}

/// The id of raw value `value` in field `field`.
#[inline]
pub fn feature_id(field: u32, value: &[u8]) -> u64 {
    xxh3_64_with_seed(value, FIELD_SEED ^ mix64(u64::from(field)))
}

/// The id every model uses for its bias term (a feature present in every example).
pub fn bias_id() -> u64 {
    feature_id(u32::MAX, b"__bias__")
}

/// Criteo-style bucketizing of integer features: small values keep their own bucket, larger ones
/// share floor(ln(x)^2), which grows slowly with magnitude.
#[inline]
pub fn bucketize(x: i64) -> i64 {
    if x <= 2 {
        x
    } else {
        let l = (x as f64).ln();
        (l * l).floor() as i64
    }
}

/// The id of integer value `x` in field `field`, after bucketizing.
#[inline]
pub fn bucket_id(field: u32, x: i64) -> u64 {
    let mut buf = [0u8; 9];
    buf[0] = b'#'; // keeps bucket ids apart from a categorical token with the same bytes
    buf[1..].copy_from_slice(&bucketize(x).to_le_bytes());
    feature_id(field, &buf)
}

/// The id standing for "no value" in field `field`.
#[inline]
pub fn missing_id(field: u32) -> u64 {
    feature_id(field, b"")
}

/// A categorical cell: its raw bytes hashed in `field`; an empty cell is the field's missing id.
#[inline]
pub fn categorical(field: u32, cell: &str) -> Feature {
    let id = if cell.is_empty() { missing_id(field) } else { feature_id(field, cell.as_bytes()) };
    Feature { field, id, value: 1.0 }
}

/// An integer cell (Criteo's I1-I13): bucketized; empty is the field's missing id.
#[inline]
pub fn integer(field: u32, cell: &str) -> Result<Feature, String> {
    let id = if cell.is_empty() {
        missing_id(field)
    } else {
        bucket_id(field, cell.parse().map_err(|_| format!("{cell:?} is not an integer"))?)
    };
    Ok(Feature { field, id, value: 1.0 })
}

/// A numeric cell (a CSV schema's numeric column): rounded, then bucketized like an integer;
/// empty is the field's missing id.
#[inline]
pub fn numeric(field: u32, cell: &str) -> Result<Feature, String> {
    let id = if cell.is_empty() {
        missing_id(field)
    } else {
        let x: f64 = cell.parse().map_err(|_| format!("{cell:?} is not a number"))?;
        if !x.is_finite() {
            return Err(format!("{cell:?} is not finite"));
        }
        bucket_id(field, x.round() as i64)
    };
    Ok(Feature { field, id, value: 1.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_across_runs_and_field_aware() {
        // Pinned values: a change here silently invalidates every trained model and checkpoint.
        assert_eq!(feature_id(0, b"68fd1e64"), feature_id(0, b"68fd1e64"));
        assert_ne!(feature_id(0, b"68fd1e64"), feature_id(1, b"68fd1e64"));
        assert_ne!(missing_id(3), missing_id(4));
        assert_ne!(bucket_id(2, 5), feature_id(2, &5i64.to_le_bytes()));
        let pinned = [feature_id(13, b"68fd1e64"), bucket_id(0, 1000), missing_id(7), bias_id()];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 4] =
        [5_100_999_632_038_278_925, 17_185_756_359_290_899_854, 42_857_541_573_208_400, 8_606_857_518_897_694_751];

    #[test]
    fn bucketize_follows_the_criteo_rule() {
        assert_eq!([bucketize(-1), bucketize(0), bucketize(2)], [-1, 0, 2]);
        assert_eq!(bucketize(3), 1); // ln(3)^2 = 1.2
        assert_eq!(bucketize(100), 21); // ln(100)^2 = 21.2
        assert_eq!(bucketize(1_000_000), 190); // ln(1e6)^2 = 190.9
    }
}
