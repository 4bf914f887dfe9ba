//! The security flags every command shares: TLS and role tokens, for servers and for clients.
//!
//! A client command takes `--token` (or `EMBER_TOKEN`) and `--tls-ca` (plus `--tls-cert` /
//! `--tls-key` for servers that ask for a client certificate). A server takes `--tls-cert` /
//! `--tls-key` for its ports, `--tls-client-ca` to ask clients for certificates (mTLS), and
//! `--auth-tokens FILE` for role tokens; the same certificate and token are what it shows the
//! servers it calls itself (a ps-server registering with the scheduler, serving looking up rows).
//!
//! Every flag also reads an environment variable (`EMBER_TOKEN`, `EMBER_TOKEN_FILE`,
//! `EMBER_TLS_CA`, ...): a Kubernetes overlay then turns TLS and tokens on by adding environment
//! variables and Secret volumes to a container, without rewriting its argument list.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ember_client::Credentials;
use ember_proto::auth::Tokens;
use ember_proto::tls::{ClientTls, KeyPair, ServerSecurity, ServerTls};

/// What a command shows the servers it calls.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientSecurityArgs {
    /// Role token sent with every call (admin, worker, serving or reader, as the servers'
    /// --auth-tokens file says).
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the role token (surrounding whitespace ignored): a mounted Secret keeps the
    /// token out of the process's environment and command line.
    #[arg(long, env = "EMBER_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Connect with TLS, checking servers' certificates against this CA (PEM).
    #[arg(long, env = "EMBER_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The name servers' certificates must carry (default: the host of each address).
    #[arg(long, env = "EMBER_TLS_DOMAIN", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// This process's certificate chain (PEM): shown to servers that ask for one, and, for a
    /// server, the certificate of its own ports.
    #[arg(long, env = "EMBER_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "EMBER_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientSecurityArgs {
    fn key_pair(&self) -> anyhow::Result<Option<KeyPair>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(KeyPair::load(cert, key)?)),
            _ => Ok(None),
        }
    }

    /// The credentials of outgoing calls.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(ClientTls::load(ca, self.tls_domain.clone(), self.key_pair()?).context("--tls-ca")?),
            None => None,
        };
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => self.token.clone(),
        };
        Credentials::none().with_tls(tls).with_token(token.as_deref()).context("the role token")
    }

    /// What `--check-config` reports of outgoing calls, after loading every file they name.
    pub fn summary(&self) -> anyhow::Result<String> {
        let credentials = self.credentials()?;
        let token = self.token.is_some() || self.token_file.is_some();
        Ok(format!("calls: tls {}, token {}", on_off(credentials.is_tls()), on_off(token)))
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// What a server checks of its callers, and shows the servers it calls.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerSecurityArgs {
    #[command(flatten)]
    client: ClientSecurityArgs,
    /// Ask every client for a certificate signed by this CA (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "EMBER_TLS_CLIENT_CA", value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Role tokens, one `ROLE TOKEN` pair a line (roles: admin, worker, serving, reader). Without
    /// it every caller may do everything: keep such a server on 127.0.0.1 or a closed network.
    #[arg(long, env = "EMBER_AUTH_TOKENS", value_name = "FILE")]
    auth_tokens: Option<PathBuf>,
}

impl ServerSecurityArgs {
    /// The security of this server's ports.
    pub fn server(&self) -> anyhow::Result<ServerSecurity> {
        let tls = match (&self.client.tls_cert, &self.client.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::load(cert, key, self.tls_client_ca.as_deref())
                    .context("--tls-cert, --tls-key, --tls-client-ca")?,
            ),
            _ => None,
        };
        let tokens = match &self.auth_tokens {
            Some(path) => Some(Arc::new(Tokens::load(path).context("--auth-tokens")?)),
            None => None,
        };
        if tokens.is_some() && tls.is_none() {
            tracing::warn!("--auth-tokens without --tls-cert: tokens travel in plaintext");
        }
        Ok(ServerSecurity { tls, tokens })
    }

    /// The credentials of this server's own outgoing calls.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        self.client.credentials()
    }

    /// What `--check-config` reports of this server's ports and calls, after loading every
    /// certificate, key and token file (exactly as a start would).
    pub fn summary(&self) -> anyhow::Result<String> {
        let server = self.server()?;
        Ok(format!(
            "ports: tls {}, client certificates {}, role tokens {}; {}",
            on_off(server.tls.is_some()),
            on_off(self.tls_client_ca.is_some()),
            on_off(server.tokens.is_some()),
            self.client.summary()?
        ))
    }
}
