//! Ember's wire contract: the tonic/prost code generated from `proto/ember/v1/*.proto`, and the
//! conversions between wire messages and `ember-core` domain types.
//!
//! Invariant: a message that cannot be turned into a valid domain value (missing oneof, unknown
//! enum, bad hyper-parameter) is a [`ConvertError`], which every service maps to
//! `InvalidArgument`; nothing here panics on client input.

pub mod auth;
pub mod codec;
mod convert;
pub mod error;
pub mod tls;
pub mod trace;

/// Generated code for package `ember.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ember.v1");
}

pub use convert::{f32s_to_bytes, ConvertError};

/// HTTP/2 settings of the ps-server's connections, set alike on its server and on its clients:
/// a training step moves about 1.5 MB (rows, gradients, dense layers) each way over one
/// connection.
pub mod http2 {
    /// Per-stream flow-control window: a batch of rows (256 KiB at 4096 x 16 f32) does not stall
    /// on flow control over loopback or a LAN.
    pub const STREAM_WINDOW: u32 = 4 << 20;
    /// Connection-level flow-control window.
    pub const CONNECTION_WINDOW: u32 = 16 << 20;
    /// Largest frame each side accepts. The protocol's default, 16 KiB, cuts a DeepFM step into
    /// ~100 frames; 1 MiB frames made DeepFM training 5% faster on loopback
    /// (docs/benchmarks.md, "Bounded pull-ahead").
    pub const MAX_FRAME: u32 = 1 << 20;
}
