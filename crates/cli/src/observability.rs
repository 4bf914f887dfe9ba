//! Logging and metrics set-up, done once per process by the binary.

use std::net::SocketAddr;

use anyhow::Context;
use ember_proto::tls::ServerSecurity;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::otlp::{self, TraceArgs};

/// Logs to stderr, filtered by `RUST_LOG` (default `default`: `info` for a role, `warn` for a
/// command that runs an embedded cluster behind a progress bar). With `--otlp-endpoint`, also
/// exports the spans of `ember_proto::trace` (whatever `RUST_LOG` says; the log skips them);
/// the returned guard flushes them when dropped.
pub fn init_tracing(default: &str, trace: Option<(&TraceArgs, &str)>) -> anyhow::Result<Option<otlp::Exporting>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: a log file or a supervisor's capture gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != ember_proto::trace::TARGET))
        .with_filter(filter);
    let (guard, spans) = match trace {
        Some((args, service)) => match otlp::start(args, service)? {
            Some((guard, tracer)) => {
                let only_ours = tracing_subscriber::filter::Targets::new()
                    .with_target(ember_proto::trace::TARGET, tracing::Level::INFO);
                (Some(guard), Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_ours)))
            }
            None => (None, None),
        },
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(spans).init();
    Ok(guard)
}

/// Installs the Prometheus recorder and serves `/metrics` on `addr` (port 0 picks one), with
/// the server's TLS and tokens. Returns the bound address.
pub async fn serve_metrics(addr: SocketAddr, security: &ServerSecurity) -> anyhow::Result<SocketAddr> {
    let handle: PrometheusHandle = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let upkeep = handle.clone();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    let security = security.clone();
    tokio::spawn(async move {
        if let Err(err) = crate::https::serve(listener, app, &security, std::future::pending()).await {
            tracing::error!(%err, "metrics endpoint stopped");
        }
    });
    // Histograms are kept as summaries that need periodic upkeep to drain their buffers.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(bound)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
