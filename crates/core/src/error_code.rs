//! The one error-code vocabulary of every Ember service (DESIGN.md, "Wire conventions").
//!
//! Each service's error type says its [`Code`] ([`HasCode`]); this file maps a code to its HTTP
//! status and metrics label, and `ember_proto::error` to its gRPC status, each in one place.
//! Codes are deliberately few; Internal is kept for bugs (a panicked task), never for input.

/// What kind of failure an error is, as every service reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The request is malformed; retrying it cannot help.
    InvalidArgument,
    /// What the request names does not exist.
    NotFound,
    /// The system is not in a state the request needs (wrong table kind, no ps registered).
    FailedPrecondition,
    /// Over a limit (keys per request, values per reply): split the request.
    ResourceExhausted,
    /// A server or disk failed or is away: retrying later may work.
    Unavailable,
    /// No (or an unknown) token.
    Unauthenticated,
    /// The token's role may not do this.
    PermissionDenied,
    /// A bug.
    Internal,
}

impl Code {
    /// Every code, for tests and dashboards.
    pub const ALL: [Code; 8] = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
        Code::Unavailable,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Internal,
    ];

    /// The HTTP status of an error with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::FailedPrecondition => 409,
            Code::ResourceExhausted => 429,
            Code::Internal => 500,
            Code::Unavailable => 503,
        }
    }

    /// The `code` label of request metrics.
    pub fn label(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::FailedPrecondition => "failed_precondition",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::Internal => "internal",
        }
    }
}

/// An error that knows its [`Code`]; its `Display` is the message clients see.
pub trait HasCode: std::fmt::Display {
    /// The code this error maps to.
    fn code(&self) -> Code;
}

/// A request refused for what it is (not a domain error of a store or a scheduler): the few
/// checks a service makes itself before calling its core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Its code.
    pub code: Code,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { code: Code::InvalidArgument, message: message.into() }
    }

    /// A request over a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self { code: Code::ResourceExhausted, message: message.into() }
    }

    /// A request the system's state does not allow.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self { code: Code::FailedPrecondition, message: message.into() }
    }

    /// A role that may not do this.
    pub fn denied(message: impl Into<String>) -> Self {
        Self { code: Code::PermissionDenied, message: message.into() }
    }

    /// A failure that may pass.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { code: Code::Unavailable, message: message.into() }
    }

    /// A bug (a panicked task).
    pub fn internal(message: impl Into<String>) -> Self {
        Self { code: Code::Internal, message: message.into() }
    }
}

impl HasCode for Refusal {
    fn code(&self) -> Code {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_http_status_and_label() {
        let mut statuses: Vec<u16> = Code::ALL.iter().map(|c| c.http_status()).collect();
        let mut labels: Vec<&str> = Code::ALL.iter().map(|c| c.label()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!((statuses.len(), labels.len()), (8, 8));
        assert_eq!(Code::InvalidArgument.http_status(), 400);
        assert_eq!(Code::Unavailable.http_status(), 503);
        assert_eq!(Refusal::invalid("x").code(), Code::InvalidArgument);
    }
}
