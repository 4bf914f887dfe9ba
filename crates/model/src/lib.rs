//! What training and serving must agree on, in one crate both depend on (role crates never
//! depend on each other):
//!
//! - [`data_roots`]: the directories job data may be read from (`--data-root`).
//! - [`features`]: field-aware 64-bit feature hashing and bucketizing, one function per kind of
//!   cell, so a reader parsing a file and a serving node parsing a request hash identically.
//! - [`schema`]: a model's named input fields (Criteo's I1-I13/C1-C26, a CSV schema's columns),
//!   turning a sample given as (field name, raw value) pairs into an example.
//! - [`model`]: batch indexing and the models (LR, FM, DeepFM) over rows pulled from ps-servers.
//! - [`tables`]: which ps tables hold a model and what shape it has.
//! - [`registry`]: the model directory training publishes versions into and serving loads from.
//!
//! The crate does no network I/O: publishing a version (reading the ps-servers' dense tables) is
//! the scheduler's (`ember_scheduler::publish`).

pub mod data_roots;
pub mod features;
pub mod model;
pub mod registry;
pub mod schema;
pub mod tables;

pub use data_roots::{DataRootError, DataRoots};
pub use registry::{ModelDir, ModelManifest, PublishedModel, RegistryError, SparseCut};
pub use schema::{FieldKind, InputField, InputSchema};
pub use tables::{Model, ModelTables, SparseLayout, TableToCreate};
