//! TLS settings of servers and clients, loaded once from PEM files.
//!
//! A server with `--tls-cert/--tls-key` answers only TLS; with `--tls-client-ca` too it asks
//! every client for a certificate signed by that CA (mTLS). A client with `--tls-ca` connects
//! with TLS and checks the server's certificate against that CA; it shows its own `--tls-cert`
//! / `--tls-key` when it has them (for mTLS). One TLS stack, rustls with ring.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The layers every Ember server runs its services in: a trace span, then role tokens.
pub type ServerLayers =
    tower_layer::Stack<crate::auth::AuthLayer, tower_layer::Stack<crate::trace::TraceLayer, tower_layer::Identity>>;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause (in the message, not a `source()`, so a chain prints it once).
        cause: std::io::Error,
    },
    /// The files do not make a usable configuration.
    #[error("TLS: {0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read { path: path.to_path_buf(), cause })
}

/// A certificate chain and its private key, in PEM.
#[derive(Clone)]
pub struct KeyPair {
    /// The chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.debug_struct("KeyPair").field("cert_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Reads `cert` and `key`; both must be PEM.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = Self { cert_pem: read(cert)?, key_pem: read(key)? };
        if !pair.cert_pem.windows(11).any(|w| w == b"-----BEGIN ")
            || !pair.key_pem.windows(11).any(|w| w == b"-----BEGIN ")
        {
            return Err(TlsError::Invalid(format!("{} and {} must be PEM files", cert.display(), key.display())));
        }
        Ok(pair)
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// A server's TLS: its key pair, and the CA its clients' certificates must chain to (mTLS).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub identity: KeyPair,
    /// PEM of the CA that signs client certificates; `None`: clients are not asked for one.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Reads the files.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        Ok(Self { identity: KeyPair::load(cert, key)?, client_ca_pem: client_ca.map(read).transpose()? })
    }

    /// The configuration a tonic server takes.
    pub fn tonic(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(self.identity.identity());
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A client's TLS: the CA servers' certificates must chain to, the name to check them for,
/// and the client's own key pair for mTLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM of the CA.
    pub ca_pem: Vec<u8>,
    /// The name servers' certificates must carry; default: the host of the address dialled.
    pub domain: Option<String>,
    /// Shown to servers that ask for a client certificate.
    pub identity: Option<KeyPair>,
}

impl ClientTls {
    /// Reads the files.
    pub fn load(ca: &Path, domain: Option<String>, identity: Option<KeyPair>) -> Result<Self, TlsError> {
        Ok(Self { ca_pem: read(ca)?, domain, identity })
    }

    /// The configuration a tonic endpoint takes.
    pub fn tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.identity());
        }
        config
    }
}

/// What a server checks of its callers: TLS (optional mTLS) and role tokens, each optional.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS on the listener.
    pub tls: Option<ServerTls>,
    /// Role tokens (see [`crate::auth`]).
    pub tokens: Option<std::sync::Arc<crate::auth::Tokens>>,
}

impl ServerSecurity {
    /// A tonic server builder with this security applied: TLS if set, and the token layer
    /// (which lets everything through when no tokens are set).
    pub fn server_builder(&self) -> Result<tonic::transport::Server<ServerLayers>, tonic::transport::Error> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.tonic())?;
        }
        // The trace span is outermost, so a refused call is traced too.
        Ok(builder.layer(crate::trace::TraceLayer).layer(crate::auth::AuthLayer::new(self.tokens.clone())))
    }
}
