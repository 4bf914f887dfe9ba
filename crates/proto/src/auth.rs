//! Role tokens: who may call which method.
//!
//! A server started with `--auth-tokens FILE` (one `ROLE TOKEN` pair a line) accepts a call only
//! when its `authorization: Bearer TOKEN` metadata names a token of a role allowed that method;
//! no token is Unauthenticated, a role not allowed is PermissionDenied. Health checks stay open
//! (orchestrators probe without credentials). Without a token file every call is allowed, as
//! before: a server that listens only on 127.0.0.1 (the default) is reachable only from its host.
//!
//! The roles and what they may do are in [`allowed`]: one table for the three services, so
//! a reviewer reads the whole policy in one place.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use ember_core::Code;
use tonic::codegen::http;
use tonic::Status;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: operators, the scheduler and ps-servers themselves.
    Admin,
    /// Training: pull and push rows, create tables, take and report work.
    Worker,
    /// Serving nodes and the services calling them: lookups, dense pulls, predictions.
    Serving,
    /// Read-only: status, stats, lookups, exports, predictions.
    Reader,
}

impl Role {
    /// The word used in token files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Serving => "serving",
            Role::Reader => "reader",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [Role::Admin, Role::Worker, Role::Serving, Role::Reader].into_iter().find(|r| r.as_str() == word)
    }
}

/// Whether `role` may call the gRPC method at `path` (`/ember.v1.Service/Method`). Unknown
/// paths are refused to every role but admin.
pub fn allowed(role: Role, path: &str) -> bool {
    use Role::{Admin, Reader, Serving, Worker};
    if role == Admin {
        return true;
    }
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else { return false };
    let roles: &[Role] = match (service, method) {
        ("ember.v1.ParameterServer", m) => match m {
            "Pull" | "Push" | "PullTables" | "PushTables" | "PushDense" | "CreateTable" | "FlushPending"
            | "WorkerClock" => &[Worker],
            "PullDense" => &[Worker, Serving],
            "Lookup" | "ListTables" | "Stats" | "Export" | "SubscribeDeltas" | "ReadCheckpoints" => {
                &[Worker, Serving, Reader]
            }
            // CutDeltas marks a model version: admin (the scheduler) only, as Checkpoint.
            // DropTable, DeleteKeys, Checkpoint: admin only.
            _ => &[],
        },
        ("ember.v1.Scheduler", m) => match m {
            // Register checks the role inside: only admin registers a ps-server.
            "Register" | "Heartbeat" | "NextWork" | "ReportWork" => &[Worker],
            "GetShardMap" | "JobStatus" => &[Worker, Serving, Reader],
            // SubmitJob, Checkpoint: admin only.
            _ => &[],
        },
        ("ember.v1.Serving", "Predict" | "ModelStatus") => &[Serving, Reader],
        ("ember.v1.Replica", "Lookup" | "Status") => &[Serving, Reader],
        _ => &[],
    };
    roles.contains(&role)
}

/// Whether `role` may GET or POST `path` on an HTTP port: serving's REST predictions
/// (`/v1/models/...`) for serving and reader tokens, `/metrics` for any token.
pub fn allowed_http(role: Role, path: &str) -> bool {
    use Role::{Admin, Reader, Serving};
    if path == "/metrics" {
        return true;
    }
    path.starts_with("/v1/models/") && matches!(role, Admin | Serving | Reader)
}

/// The status of a call refused here, through the one vocabulary.
fn refusal(code: Code, message: impl Into<String>) -> Status {
    crate::error::status(&ember_core::Refusal { code, message: message.into() })
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Unreadable.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Cause (in the message, not a `source()`, so a chain prints it once).
        cause: std::io::Error,
    },
    /// A line that is not `ROLE TOKEN`, an unknown role, a short or repeated token.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Shortest token accepted: a token is a secret, not a password to remember.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Tokens and their roles.
#[derive(Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Role>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("Tokens").field("count", &self.by_token.len()).finish()
    }
}

impl Tokens {
    /// Reads `ROLE TOKEN` lines; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| TokenFileError::Io { path: shown.clone(), cause })?;
        Self::parse(&text).map_err(|(line, reason)| TokenFileError::Line { path: shown, line, reason })
    }

    /// Parses a token file's text; an error is (line, reason).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err((i + 1, "expected `ROLE TOKEN`".into()));
            };
            let role = Role::parse(role)
                .ok_or_else(|| (i + 1, format!("unknown role {role:?} (admin, worker, serving or reader)")))?;
            if token.chars().count() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((i + 1, format!("a token is at least {MIN_TOKEN_CHARS} printable ASCII characters")));
            }
            if by_token.insert(token.to_string(), role).is_some() {
                return Err((i + 1, "this token is listed twice".into()));
            }
        }
        if by_token.is_empty() {
            return Err((0, "no tokens".into()));
        }
        Ok(Self { by_token })
    }

    /// The role of a request's `authorization` header value, or why there is none.
    pub fn role_of(&self, header: Option<&http::HeaderValue>) -> Result<Role, Status> {
        let Some(value) = header else {
            return Err(refusal(Code::Unauthenticated, "no token: send `authorization: Bearer TOKEN` (`--token`)"));
        };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match token.and_then(|t| self.by_token.get(t)) {
            Some(role) => Ok(*role),
            None => Err(refusal(Code::Unauthenticated, "unknown token")),
        }
    }
}

/// A tower layer that checks every call against [`Tokens`] and [`allowed`], and puts the
/// caller's [`Role`] in the request's extensions for handlers that look inside the message.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks calls against `tokens`; `None` lets every call through (as [`Role::Admin`]).
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, tokens: self.tokens.clone() }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

/// Checks one request: the role it may act as, or the status that refuses it.
pub fn authorize<B>(tokens: Option<&Tokens>, req: &http::Request<B>) -> Result<Role, Status> {
    let Some(tokens) = tokens else { return Ok(Role::Admin) };
    let path = req.uri().path();
    if path.starts_with("/grpc.health.v1.Health/") {
        return Ok(Role::Reader);
    }
    let role = tokens.role_of(req.headers().get(http::header::AUTHORIZATION))?;
    if allowed(role, path) {
        Ok(role)
    } else {
        Err(refusal(Code::PermissionDenied, format!("role {} may not call {path}", role.as_str())))
    }
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = futures_util_boxed::BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match authorize(self.tokens.as_deref(), &req) {
            Ok(role) => {
                req.extensions_mut().insert(role);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                let response = status.into_http::<RB>();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// A boxed future, named once (no futures crate needed for it).
mod futures_util_boxed {
    /// A pinned, boxed, sendable future.
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
}

/// The role a handler's request was authorized as ([`Role::Admin`] when auth is off or the
/// request did not pass through [`Auth`], e.g. in-process tests).
pub fn role_of<T>(req: &tonic::Request<T>) -> Role {
    req.extensions().get::<Role>().copied().unwrap_or(Role::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# roles\nadmin  aaaaaaaaaaaaaaaaaaaa\nworker wwwwwwwwwwwwwwwwwwww\n\nserving ssssssssssssssssssss\n";

    fn request(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    #[test]
    fn anonymous_wrong_role_and_right_role() {
        let tokens = Tokens::parse(FILE).unwrap();
        let push = "/ember.v1.ParameterServer/Push";
        let code =
            |path: &str, token: Option<&str>| authorize(Some(&tokens), &request(path, token)).map_err(|s| s.code());
        assert_eq!(code(push, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(push, Some("not-a-token-not-a-token")), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(push, Some("ssssssssssssssssssss")), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(push, Some("wwwwwwwwwwwwwwwwwwww")), Ok(Role::Worker));
        assert_eq!(
            code("/ember.v1.ParameterServer/DropTable", Some("wwwwwwwwwwwwwwwwwwww")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code("/ember.v1.ParameterServer/DropTable", Some("aaaaaaaaaaaaaaaaaaaa")), Ok(Role::Admin));
        assert_eq!(code("/ember.v1.ParameterServer/Lookup", Some("ssssssssssssssssssss")), Ok(Role::Serving));
        assert_eq!(code("/grpc.health.v1.Health/Check", None), Ok(Role::Reader));
        assert_eq!(code("/ember.v1.Unknown/Thing", Some("wwwwwwwwwwwwwwwwwwww")), Err(tonic::Code::PermissionDenied));
        // Auth off: everything passes as admin.
        assert_eq!(authorize(None, &request(push, None)).map_err(|s| s.code()), Ok(Role::Admin));
    }

    #[test]
    fn token_files_are_strict() {
        assert!(Tokens::parse("admin short").is_err());
        assert!(Tokens::parse("root aaaaaaaaaaaaaaaaaaaa").unwrap_err().1.contains("unknown role"));
        assert!(Tokens::parse("admin aaaaaaaaaaaaaaaaaaaa\nworker aaaaaaaaaaaaaaaaaaaa")
            .unwrap_err()
            .1
            .contains("twice"));
        assert!(Tokens::parse("admin aaaaaaaaaaaaaaaaaaaa extra").is_err());
        assert!(Tokens::parse("# nothing\n").is_err());
        assert!(!format!("{:?}", Tokens::parse(FILE).unwrap()).contains("aaaa"), "Debug never shows tokens");
    }
}
