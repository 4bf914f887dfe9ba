//! `ember bench otlp-sink`: an OTLP/gRPC trace receiver that counts what it is sent, so the
//! tracing benchmarks (scripts/bench-tracing.sh) export to a real collector endpoint on this
//! machine. It decodes every request (as a collector would) and keeps only counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

use crate::observability;

/// Arguments of `ember bench otlp-sink`.
#[derive(Debug, clap::Args)]
pub struct OtlpSinkArgs {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    requests: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Receives until SIGINT/SIGTERM, then prints one JSON line of counts.
pub async fn run(args: OtlpSinkArgs) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("ember otlp sink listening on {}", listener.local_addr()?);
    let counts = Counts::default();
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counts.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            observability::shutdown_signal(),
        )
        .await?;
    println!(
        "{}",
        serde_json::json!({ "requests": counts.requests.load(Ordering::Relaxed), "spans": counts.spans.load(Ordering::Relaxed) })
    );
    Ok(())
}
