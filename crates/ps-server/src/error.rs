//! Store and conversion errors -> gRPC status, through the one vocabulary
//! ([`ember_core::Code`], mapped to gRPC in `ember_proto::error`).
//!
//! The codes are deliberately few: InvalidArgument (the request is malformed and retrying it
//! cannot help), NotFound (unknown table), FailedPrecondition (the table is of the other kind or
//! exists with another spec), ResourceExhausted (over the key limit: split the batch),
//! Unavailable (the cold tier's disk failed: retrying later may work). Internal is kept for bugs
//! (a panicked blocking task).

use ember_core::HasCode;
use tonic::Status;

/// The status an error maps to; the message is the error's own text.
pub fn status_of(err: &(impl HasCode + ?Sized)) -> Status {
    ember_proto::error::status(err)
}

#[cfg(test)]
mod tests {
    use ember_store::StoreError;
    use tonic::Code;

    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        let cases = [
            (StoreError::TableNotFound("t".into()), Code::NotFound),
            (StoreError::BatchTooLarge { got: 10, limit: 5 }, Code::ResourceExhausted),
            (StoreError::NonFinite { table: "t".into(), key: 1, value: f32::NAN }, Code::InvalidArgument),
            (
                StoreError::BadEncoding { table: "t".into(), reason: "onebit chunk length 0".into() },
                Code::InvalidArgument,
            ),
            (StoreError::WrongKind { name: "t".into(), actual: "dense", expected: "sparse" }, Code::FailedPrecondition),
            (StoreError::Tier { table: "t".into(), reason: "disk".into() }, Code::Unavailable),
        ];
        for (err, code) in cases {
            let status = status_of(&err);
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }
}
