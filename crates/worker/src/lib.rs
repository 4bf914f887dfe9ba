//! The Ember worker: reads samples, hashes features, trains models against ps-servers.
//!
//! Layout:
//! - [`agent`]: the worker process's loop: work items from the scheduler, trained or evaluated.
//! - [`features`]: field-aware 64-bit feature hashing, bucketizing.
//! - [`reader`]: Criteo TSV, libsvm, libffm and CSV readers over files, globs and gzip, with
//!   bad-line accounting.
//! - [`model`]: batch indexing and the models (LR, FM).
//! - [`synth`]: synthetic Criteo-format data from a hidden model, with oracle probabilities.
//! - [`train`]: one worker's training loop (prefetching pulls, async pushes, progressive
//!   validation) and read-only batch prediction.

pub mod agent;
pub mod features;
pub mod model;
pub mod reader;
pub mod synth;
pub mod train;
