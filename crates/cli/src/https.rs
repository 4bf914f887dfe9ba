//! HTTP endpoints (serving's REST API, `/metrics`) with the same TLS and role tokens as the
//! gRPC ports.
//!
//! TLS: a background task accepts TCP connections and runs each handshake in its own task
//! (bounded by a timeout), so a client that stalls its handshake holds up no one; finished
//! handshakes are handed to axum through [`TlsListener`]. Tokens: a middleware checks
//! `authorization: Bearer TOKEN` against [`ember_proto::auth::allowed_http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_proto::auth::{allowed_http, Tokens};
use ember_proto::tls::{ServerSecurity, ServerTls};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `https` or `http`, for the addresses a server prints.
pub fn scheme(security: &ServerSecurity) -> &'static str {
    if security.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Serves `app` on `listener` under `security` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    security: &ServerSecurity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = match &security.tokens {
        Some(tokens) => {
            let tokens = Arc::clone(tokens);
            app.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
                let tokens = Arc::clone(&tokens);
                async move { check_token(&tokens, req, next).await }
            }))
        }
        None => app,
    };
    match &security.tls {
        Some(tls) => {
            let listener = TlsListener::start(listener, rustls_config(tls)?)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await?,
    }
    Ok(())
}

async fn check_token(tokens: &Tokens, req: Request, next: Next) -> Response {
    let role = match tokens.role_of(req.headers().get(axum::http::header::AUTHORIZATION)) {
        Ok(role) => role,
        Err(status) => return (StatusCode::UNAUTHORIZED, status.message().to_string()).into_response(),
    };
    if !allowed_http(role, req.uri().path()) {
        let msg = format!("role {} may not request {}", role.as_str(), req.uri().path());
        return (StatusCode::FORBIDDEN, msg).into_response();
    }
    next.run(req).await
}

/// A rustls server configuration from PEM: the server's chain and key, and a client CA for
/// mTLS. HTTP/1.1 only (what these endpoints speak).
fn rustls_config(tls: &ServerTls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // ring, as under tonic (one TLS stack, DESIGN.md); rustls 0.23.48 deprecates this provider
    // only to point at aws-lc-rs for post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.identity.cert_pem)
        .collect::<Result<_, _>>()
        .context("--tls-cert: not a PEM certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(&tls.identity.key_pem).context("--tls-key: not a PEM private key")?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots.add(cert.context("--tls-client-ca: not a PEM certificate")?).context("--tls-client-ca")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--tls-client-ca")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).context("--tls-cert / --tls-key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Finished TLS connections, for axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepter: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn start(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> anyhow::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accepter = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local, accepter })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepter.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task ended (it never does on its own): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
