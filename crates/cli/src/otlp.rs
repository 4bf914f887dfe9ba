//! `--otlp-endpoint`: spans exported over OTLP/gRPC to a collector.
//!
//! The spans themselves are made, and sampled, by `ember_proto::trace` (one per request, plus
//! apply, checkpoint and publish; parent-based, so one trace is whole or absent, roots sampled at
//! `--trace-sample-rate`). This module is the exporting end: the tracer provider and a span
//! processor of our own in place of the SDK's batch processor. The SDK's counts the spans it drops but only logs
//! the count at shutdown. Ours keeps the same non-blocking shape and counts every drop in a
//! metric that can be alerted on:
//! - `on_end` never blocks a request: it `try_send`s into a bounded queue, and a full queue is a
//!   drop (`ember_trace_spans_dropped_total{reason="queue_full"}`);
//! - one thread owns the exporter (with its own small runtime, so a slow or absent collector
//!   stalls only that thread), sends batches of up to 512 spans at least every 500 ms, and counts
//!   `ember_trace_spans_exported_total` and failed batches' spans
//!   (`ember_trace_spans_dropped_total{reason="export_failed"}`).

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const EVERY: Duration = Duration::from_millis(500);

/// Trace export flags, shared by every role.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Export trace spans over OTLP/gRPC to this collector (e.g. http://otel-collector:4317).
    /// A collector that is down or slow costs requests nothing: spans are dropped and counted.
    #[arg(long, env = "EMBER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The share of traces started here that are sampled (0..=1); a request whose caller's trace
    /// is sampled is always sampled.
    #[arg(long, default_value_t = 0.01, value_parser = parse_rate)]
    trace_sample_rate: f64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a rate between 0 and 1")),
    }
}

impl TraceArgs {
    /// `--check-config`'s line about traces.
    pub fn summary(&self) -> String {
        match &self.otlp_endpoint {
            Some(e) => format!("traces to {e} (sampling {})", self.trace_sample_rate),
            None => "traces off".to_string(),
        }
    }
}

/// Keeps the exporter running; dropping it flushes what is queued (up to 2 s).
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(2));
    }
}

/// Builds the exporter for `service` (e.g. `ember-ps`) when an endpoint is set, and returns the
/// tracer the `tracing` layer feeds.
pub fn start(args: &TraceArgs, service: &str) -> anyhow::Result<Option<(Exporting, opentelemetry_sdk::trace::Tracer)>> {
    let Some(endpoint) = args.otlp_endpoint.clone() else { return Ok(None) };
    let resource = Resource::builder().with_service_name(service.to_string()).build();
    let processor = QueueProcessor::start(endpoint.clone(), resource.clone())?;
    let provider = SdkTracerProvider::builder()
        // ember_proto::trace samples before a span exists (a request it does not trace makes no
        // span); whatever reaches the SDK is to be exported.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let tracer = provider.tracer("ember");
    ember_proto::trace::enable(args.trace_sample_rate);
    tracing::info!(%endpoint, rate = args.trace_sample_rate, "exporting traces over OTLP");
    Ok(Some((Exporting { provider }, tracer)))
}

/// The bounded queue between requests and the exporting thread.
#[derive(Debug)]
struct QueueProcessor {
    queue: tokio::sync::mpsc::Sender<SpanData>,
    /// Set at shutdown: the thread exports what is queued and stops.
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl QueueProcessor {
    fn start(endpoint: String, resource: Resource) -> anyhow::Result<Self> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SpanData>(QUEUE);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the trace exporter's runtime")?;
        let mut exporter = runtime
            .block_on(async {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(Duration::from_secs(2))
                    .build()
            })
            .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
        exporter.set_resource(&resource);
        let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::clone(&closing);
        std::thread::Builder::new().name("ember-otlp".into()).spawn(move || {
            runtime.block_on(async move {
                let mut batch = Vec::with_capacity(BATCH);
                loop {
                    let closed = stop.load(std::sync::atomic::Ordering::Relaxed);
                    if closed {
                        while let (true, Ok(span)) = (batch.len() < BATCH, rx.try_recv()) {
                            batch.push(span);
                        }
                    } else {
                        let _ = tokio::time::timeout(EVERY, async {
                            while batch.len() < BATCH {
                                match rx.recv().await {
                                    Some(span) => batch.push(span),
                                    None => return,
                                }
                            }
                        })
                        .await;
                    }
                    if !batch.is_empty() {
                        let n = batch.len() as u64;
                        match exporter.export(std::mem::take(&mut batch)).await {
                            Ok(()) => metrics::counter!("ember_trace_spans_exported_total").increment(n),
                            Err(e) => {
                                metrics::counter!("ember_trace_spans_dropped_total", "reason" => "export_failed")
                                    .increment(n);
                                tracing::debug!(error = %e, spans = n, "trace export failed");
                            }
                        }
                    }
                    if closed && rx.is_empty() {
                        break;
                    }
                }
            });
            let _ = done_tx.send(());
        })?;
        Ok(Self { queue: tx, closing, done: std::sync::Mutex::new(Some(done_rx)) })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            metrics::counter!("ember_trace_spans_dropped_total", "reason" => "queue_full").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(done) = self.done.lock().ok().and_then(|mut d| d.take()) {
            let _ = done.recv_timeout(timeout);
        }
        Ok(())
    }
}
