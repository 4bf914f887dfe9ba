//! Pure logic shared by every Ember role. No I/O, no async, no internal dependencies.
//!
//! Layout:
//! - [`hash`]: 64-bit mixing, slot routing (`slot = mix(key) % num_slots`), a tiny seeded RNG.
//! - [`init`]: deterministic per-key initializers: a row's initial value is a pure function of
//!   (table seed, key), so any server, replayed pull or read-only lookup sees the same row.
//! - [`optim`]: server-side optimizers (SGD, Adagrad, FTRL-Proximal, Adam) applied in place to a
//!   row's weights and optimizer state.
//! - [`codec`]: the wire's f32 value encoding (little-endian) and the gradient codecs (fp16,
//!   1-bit with per-chunk scales), each with a residual so quantization error is delayed, not lost.
//! - [`error_code`]: the one error-code vocabulary every service maps its errors to.
//! - [`eval`]: exact AUC and logloss.
//! - [`job`]: job files (TOML): data, model, optimizers, cluster, training.
//! - [`sync`]: sync modes (async, staleness, softsync, ssp, sync), the rule a table applies
//!   gradients by, and the staleness histogram.
//! - [`table`]: the table spec (name, kind, dim, optimizer, initializer, seed) and its validation.

pub mod codec;
pub mod error_code;
pub mod eval;
pub mod files;
pub mod hash;
pub mod init;
pub mod job;
pub mod optim;
pub mod sync;
pub mod table;

pub use error_code::{Code, HasCode, Refusal};

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before it): the one
/// timestamp of reports, manifests, checkpoints and logs.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
pub use hash::{mix64, slot_of, SplitMix64, U64Hasher, U64Map, Zipf};
pub use init::Initializer;
pub use job::{JobError, JobSpec};
pub use optim::Optimizer;
pub use table::{validate_name, DemotePolicy, FeaturePolicy, RowHead, SpecError, TableKind, TableSpec};
