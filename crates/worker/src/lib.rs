//! The Ember worker: reads samples, hashes features, trains models against ps-servers.
//!
//! Layout:
//! - [`agent`]: the worker process's loop: work items from the scheduler, trained or evaluated.
//! - [`compress`]: error-feedback residuals for compressed gradient pushes.
//! - [`ssp`]: a worker's SSP clock (waits only when it is more than the bound ahead).
//! - [`reader`]: Criteo TSV, libsvm, libffm and CSV readers over files, globs and gzip, with
//!   bad-line accounting.
//! - [`synth`]: synthetic Criteo-format data from a hidden model, with oracle probabilities.
//! - [`train`]: one worker's training loop (prefetching pulls, async pushes, progressive
//!   validation) and read-only batch prediction.

pub mod agent;
pub mod compress;
pub mod join;
pub mod reader;
pub mod ssp;
pub mod synth;
pub mod train;

// The models and feature hashing live in `ember-model`, shared with serving.
pub use ember_model::{features, model};
