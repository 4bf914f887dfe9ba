//! The error vocabulary ([`ember_core::Code`]) on the wire: a code's gRPC status, in one place,
//! and a wire value's error's code.

use ember_core::{Code, HasCode};
use tonic::Status;

use crate::ConvertError;

/// The gRPC status code of `code`.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Internal => tonic::Code::Internal,
    }
}

/// The status a service answers with for `err`: its code, its message.
pub fn status(err: &(impl HasCode + ?Sized)) -> Status {
    Status::new(grpc_code(err.code()), err.to_string())
}

/// The code of a status (a client's view of a refusal; codes outside the vocabulary, such as a
/// transport's Unknown or Cancelled, count as Unavailable).
pub fn code_of(status: &Status) -> Code {
    match status.code() {
        tonic::Code::Ok => Code::Internal,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Code::InvalidArgument,
        tonic::Code::NotFound => Code::NotFound,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => Code::FailedPrecondition,
        tonic::Code::ResourceExhausted => Code::ResourceExhausted,
        tonic::Code::Unauthenticated => Code::Unauthenticated,
        tonic::Code::PermissionDenied => Code::PermissionDenied,
        tonic::Code::Internal | tonic::Code::Unimplemented | tonic::Code::DataLoss => Code::Internal,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            Code::Unavailable
        }
    }
}

impl HasCode for ConvertError {
    /// A wire value that makes no domain value is always the sender's mistake.
    fn code(&self) -> Code {
        Code::InvalidArgument
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each code's gRPC and HTTP status, in one place (the HTTP side is `Code::http_status`).
    #[test]
    fn each_code_maps_to_one_grpc_and_one_http_status_and_back() {
        let table = [
            (Code::InvalidArgument, tonic::Code::InvalidArgument, 400),
            (Code::NotFound, tonic::Code::NotFound, 404),
            (Code::FailedPrecondition, tonic::Code::FailedPrecondition, 409),
            (Code::ResourceExhausted, tonic::Code::ResourceExhausted, 429),
            (Code::Unavailable, tonic::Code::Unavailable, 503),
            (Code::Unauthenticated, tonic::Code::Unauthenticated, 401),
            (Code::PermissionDenied, tonic::Code::PermissionDenied, 403),
            (Code::Internal, tonic::Code::Internal, 500),
        ];
        assert_eq!(table.len(), Code::ALL.len());
        for (code, grpc, http) in table {
            assert_eq!(grpc_code(code), grpc, "{code:?}");
            assert_eq!(code.http_status(), http, "{code:?}");
            assert_eq!(code_of(&Status::new(grpc, "x")), code, "{code:?} round trip");
        }
        let refusal = ember_core::Refusal::too_large("over");
        let s = status(&refusal);
        assert_eq!((s.code(), s.message()), (tonic::Code::ResourceExhausted, "over"));
    }
}
