//! Hashing for routing and initialization.
//!
//! Invariant: [`slot_of`] never changes for a given (key, num_slots); scaling moves slots between
//! servers, it never rehashes keys. Feature ids are already hashes in most pipelines, but raw
//! sequential ids are common too, so keys are always mixed before use.

/// The splitmix64 finalizer: a cheap bijective mix with full avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The virtual slot that owns `key`. `num_slots` must be non-zero.
#[inline]
pub fn slot_of(key: u64, num_slots: u32) -> u32 {
    // The low bits pick the slot; stores pick their internal shard from the high bits, so the
    // two choices stay independent.
    (mix64(key) % u64::from(num_slots.max(1))) as u32
}

/// Hashes u64 keys for hash maps: one salted `mix64`, rotated. Feature ids are often already
/// hashes and std's SipHash costs several times more per probe. The salt keeps map hashes
/// independent of `mix64(key)`, which stores use to pick shards: keys of one shard share those
/// high bits, and hashbrown takes its control bytes from the high bits too.
#[derive(Debug, Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = mix64(self.0 ^ u64::from(*b));
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = mix64(key ^ 0xa076_1d64_78bd_642f).rotate_left(29);
    }
}

impl std::hash::BuildHasher for U64Hasher {
    type Hasher = U64Hasher;
    fn build_hasher(&self) -> U64Hasher {
        U64Hasher(0)
    }
}

/// A hash map keyed by u64 with [`U64Hasher`].
pub type U64Map<V> = std::collections::HashMap<u64, V, U64Hasher>;

/// A tiny, seedable, splittable generator (Steele et al. 2014). Good enough for initializers and
/// load generators; not for anything cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is a pure function of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 24 bits of precision (exactly representable as f32).
    #[inline]
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n); `n` must be non-zero. Multiply-shift (Lemire) without the rejection
    /// step: the bias is below 2^-32 for the n used here.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Ranks in `[0, n)` drawn from a power law with exponent `s` (rank 0 the most frequent), by
/// inverting the CDF of the continuous density x^-s on [1, n + 1). Exact Zipf needs a table per n;
/// this needs none and is what load generators and synthetic data want.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    c: f64,
    inv: f64,
    n: u64,
}

impl Zipf {
    /// A sampler over `n` ranks with exponent `s` (s = 1 is approximated by s = 1 - 1e-9).
    pub fn new(n: u64, s: f64) -> Self {
        let one_minus_s = if (s - 1.0).abs() < 1e-9 { 1e-9 } else { 1.0 - s };
        let n = n.max(1);
        Self { c: ((n as f64) + 1.0).powf(one_minus_s) - 1.0, inv: 1.0 / one_minus_s, n }
    }

    /// The next rank.
    #[inline]
    pub fn draw(&self, rng: &mut SplitMix64) -> u64 {
        ((1.0 + rng.next_f64() * self.c).powf(self.inv) as u64).clamp(1, self.n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_are_skewed_and_in_range() {
        let (zipf, mut rng) = (Zipf::new(1000, 1.1), SplitMix64::new(1));
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[zipf.draw(&mut rng) as usize] += 1;
        }
        // Under Zipf(1.1) the top rank is drawn far more often than the median one.
        assert!(hits[0] > 20 * hits[500].max(1), "top {} median {}", hits[0], hits[500]);
        let one = Zipf::new(10, 1.0);
        assert!((0..1000).all(|_| one.draw(&mut rng) < 10));
    }

    #[test]
    fn slots_are_stable_and_spread() {
        let n = 1024;
        let mut counts = vec![0u32; n as usize];
        for key in 0..1_000_000u64 {
            let s = slot_of(key, n);
            assert_eq!(s, slot_of(key, n));
            counts[s as usize] += 1;
        }
        // Sequential keys must still spread: every slot within 15% of the mean (~977).
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 830 && *max < 1130, "min {min} max {max}");
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let (x, y) = (a.next_f32(), b.next_f32());
            assert_eq!(x.to_bits(), y.to_bits());
            assert!((0.0..1.0).contains(&x));
            assert!(a.below(10) < 10);
            b.below(10);
        }
    }
}
