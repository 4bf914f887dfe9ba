//! What the handlers share about a request: the checks a request must pass before it reaches
//! the store (an encoding the server knows, a bounded set of tables), and the replies built from
//! the store's answers (with the metrics those carry).

use ember_core::codec::Compression;
use ember_core::Refusal;
use ember_proto::f32s_to_bytes;
use ember_proto::v1;
use ember_store::{PushOutcome, StoreError};
use metrics::{counter, histogram};
use tonic::Status;

use crate::error::status_of;

/// The codec a push names; an unknown encoding number is InvalidArgument.
pub(crate) fn encoding_of(wire: i32) -> Result<Compression, Status> {
    match v1::GradientEncoding::try_from(wire) {
        Ok(v1::GradientEncoding::F32) => Ok(Compression::None),
        Ok(v1::GradientEncoding::Fp16) => Ok(Compression::Fp16),
        Ok(v1::GradientEncoding::Onebit) => Ok(Compression::Onebit),
        Err(_) => Err(status_of(&Refusal::invalid(format!("unknown gradient encoding {wire}")))),
    }
}

/// Most tables one multi-table or dense request may name.
const MAX_TABLES_PER_REQUEST: usize = 256;

/// Bounds the work of a request that names several tables: each at most once (a pull that
/// listed one table 200 times took a server from 16 MB to 1.68 GB), at most
/// [`MAX_TABLES_PER_REQUEST`] of them, and `keys` x tables within the server's key limit.
pub(crate) fn check_tables<'a>(
    names: impl ExactSizeIterator<Item = &'a str>,
    keys: usize,
    max_keys: usize,
) -> Result<(), Status> {
    let n = names.len();
    if n > MAX_TABLES_PER_REQUEST {
        return Err(status_of(&Refusal::invalid(format!(
            "{n} tables in one request; the limit is {MAX_TABLES_PER_REQUEST}"
        ))));
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    for name in names {
        if !seen.insert(name) {
            return Err(status_of(&Refusal::invalid(format!("table {name:?} is named twice in one request"))));
        }
    }
    let total = keys.saturating_mul(n);
    if total > max_keys {
        return Err(status_of(&StoreError::BatchTooLarge { got: total, limit: max_keys }));
    }
    Ok(())
}

/// The reply to a pull of one table.
pub(crate) fn pull_reply(rows: ember_store::Rows) -> v1::PullResponse {
    v1::PullResponse { dim: rows.dim, values: f32s_to_bytes(rows.values), version: rows.version }
}

/// The reply to a push to `table`, whose staleness goes into the histogram.
pub(crate) fn push_reply(table: &str, out: PushOutcome) -> v1::PushResponse {
    histogram!("ember_ps_push_staleness", "table" => table.to_string()).record(out.staleness as f64);
    if out.rows_rejected > 0 {
        counter!("ember_ps_rejected_nonfinite_total", "table" => table.to_string()).increment(out.rows_rejected);
    }
    v1::PushResponse {
        rows_updated: out.rows_updated,
        version: out.version,
        staleness: out.staleness,
        buffered: out.buffered,
        rows_rejected: out.rows_rejected,
    }
}
