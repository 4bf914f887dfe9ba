//! Store and conversion errors -> gRPC status, in one place.
//!
//! The codes are deliberately few: InvalidArgument (the request is malformed and retrying it
//! cannot help), NotFound (unknown table), FailedPrecondition (the table is of the other kind or
//! exists with another spec), ResourceExhausted (over the key limit: split the batch),
//! Unavailable (the cold tier's disk failed: retrying later may work). Internal is
//! kept for bugs (a panicked blocking task).

use ember_proto::ConvertError;
use ember_store::StoreError;
use tonic::{Code, Status};

/// The status a store error maps to; the message is the error's own text.
pub fn status_of(err: &StoreError) -> Status {
    let code = match err {
        StoreError::TableNotFound(_) => Code::NotFound,
        StoreError::WrongKind { .. } | StoreError::SpecConflict { .. } => Code::FailedPrecondition,
        StoreError::InvalidSpec(_)
        | StoreError::BadLength { .. }
        | StoreError::BadEncoding { .. }
        | StoreError::NonFinite { .. } => Code::InvalidArgument,
        StoreError::BatchTooLarge { .. } => Code::ResourceExhausted,
        StoreError::Tier { .. } => Code::Unavailable,
    };
    Status::new(code, err.to_string())
}

/// A conversion error is always the client's: InvalidArgument.
pub fn status_of_convert(err: &ConvertError) -> Status {
    Status::invalid_argument(err.to_string())
}

#[cfg(test)]
mod tests {
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
        ];
        for (err, code) in cases {
            let status = status_of(&err);
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }
}
