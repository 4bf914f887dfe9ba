//! Ember's wire contract: the tonic/prost code generated from `proto/ember/v1/*.proto`, and the
//! conversions between wire messages and `ember-core` domain types.
//!
//! Invariant: a message that cannot be turned into a valid domain value (missing oneof, unknown
//! enum, bad hyper-parameter) is a [`ConvertError`], which every service maps to
//! `InvalidArgument`; nothing here panics on client input.

mod convert;

/// Generated code for package `ember.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ember.v1");
}

pub use convert::{f32s_to_bytes, ConvertError};
