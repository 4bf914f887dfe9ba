//! What a client shows servers: TLS settings and a role token, both optional.
//!
//! Every connection the clients make goes through [`Credentials::channel`]: the address gets
//! `https://` and the TLS settings when there are any, and every call carries
//! `authorization: Bearer TOKEN` through [`BearerToken`] when there is a token.

use std::sync::Arc;

use ember_proto::tls::ClientTls;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::ClientError;

/// The transport of every typed client: a channel whose calls carry the token.
pub type Transport = InterceptedService<Channel, BearerToken>;

/// TLS settings and a role token for outgoing calls.
#[derive(Clone, Default)]
pub struct Credentials {
    tls: Option<Arc<ClientTls>>,
    token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Credentials").field("tls", &self.tls.is_some()).field("token", &self.token.is_some()).finish()
    }
}

impl Credentials {
    /// Plaintext, anonymous: what a server without `--tls-cert` and `--auth-tokens` accepts.
    pub fn none() -> Self {
        Self::default()
    }

    /// With TLS (`None` keeps plaintext).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls.map(Arc::new);
        self
    }

    /// With a role token (`None` stays anonymous). A token must be printable ASCII.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, ClientError> {
        self.token = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::InvalidArgument("a token must be printable ASCII".into()))?,
            ),
        };
        Ok(self)
    }

    /// Whether calls use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for `addr` (`host:port` or a URI), with Nagle off and TLS applied.
    pub(crate) fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        let connect_err = |source| ClientError::Connect { endpoint: addr.to_string(), source };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
        let endpoint = Endpoint::from_shared(uri).map_err(connect_err)?.tcp_nodelay(true);
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.tonic()).map_err(connect_err),
            None => Ok(endpoint),
        }
    }

    /// Wraps a connected channel so its calls carry the token.
    pub(crate) fn wrap(&self, channel: Channel) -> Transport {
        InterceptedService::new(channel, BearerToken(self.token.clone()))
    }

    /// Connects to `addr` with the defaults (no window tuning).
    pub(crate) async fn channel(&self, addr: &str) -> Result<Transport, ClientError> {
        let channel = self
            .endpoint(addr)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect { endpoint: addr.to_string(), source })?;
        Ok(self.wrap(channel))
    }
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing when anonymous), and the trace
/// context when tracing is on.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        // The caller's span becomes the parent of the server's (a no-op unless tracing is on).
        ember_proto::trace::inject(req.metadata_mut());
        Ok(req)
    }
}
