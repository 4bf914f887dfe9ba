//! The Ember worker: reads samples, hashes features, trains models against ps-servers.
//!
//! Layout:
//! - [`features`]: field-aware 64-bit feature hashing, bucketizing.
//! - [`reader`]: Criteo TSV, libsvm, libffm and CSV readers over files, globs and gzip, with
//!   bad-line accounting.

pub mod features;
pub mod reader;
