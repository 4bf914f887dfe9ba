//! `ember health`: one gRPC health check (`grpc.health.v1`), for Kubernetes exec probes.
//!
//! The kubelet's own gRPC probe speaks plaintext only, so a TLS port needs a probe that runs in
//! the container and speaks TLS: this command, with the container's own `EMBER_TLS_*`
//! environment. The image has no shell, so it is exec'd directly. Exit 0 when SERVING, else 1
//! with the reason on stderr.

use std::time::Duration;

use crate::security::ClientSecurityArgs;

/// Arguments of `ember health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The server to check.
    #[arg(long, default_value = "127.0.0.1:7070")]
    target: String,
    /// The service whose status to ask (`ember.v1.ParameterServer`, `ember.v1.Serving`, ...);
    /// empty asks for the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Fail when there is no answer within this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

impl HealthArgs {
    /// `--check-config` (an exec probe's command line is checked like a role's).
    pub fn check(&self) -> anyhow::Result<String> {
        Ok(format!("health: target {} service {:?}; {}", self.target, self.service, self.security.summary()?))
    }
}

/// Checks once; an error says why the server is not serving.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let credentials = args.security.credentials()?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    ember_client::health::is_serving(&args.target, &credentials, &args.service, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.target))?;
    println!("SERVING");
    Ok(())
}
