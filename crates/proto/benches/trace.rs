//! What `ember_proto::trace` adds to one request, per request: the server span, the store span
//! inside it and the context written into an outgoing call. Measured with the binary's real
//! pipeline (the `tracing` registry, tracing-opentelemetry, the OpenTelemetry SDK) feeding an
//! exporter that discards, so the figures are the request path's share, not the export's.
//! - `off`: no `--otlp-endpoint` (the default);
//! - `rate 0.01, not sampled`: the 99% of requests a 1% rate does not trace;
//! - `sampled`: a traced request (parent sampled).

use criterion::{criterion_group, criterion_main, Criterion};
use ember_proto::trace;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::codegen::http;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// One request's tracing work: its server span, a store span inside, and an outgoing inject.
fn request(headers: &http::HeaderMap) {
    let span = trace::server_span("/ember.v1.ParameterServer/Pull", headers);
    span.in_scope(|| {
        let store = trace::span("store");
        store.in_scope(|| std::hint::black_box(1));
        let mut out = tonic::metadata::MetadataMap::new();
        trace::inject(&mut out);
        std::hint::black_box(out);
    });
}

fn bench(c: &mut Criterion) {
    let provider = SdkTracerProvider::builder().with_simple_exporter(Discard).build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let only_ours = tracing_subscriber::filter::Targets::new().with_target(trace::TARGET, tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(
            tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")),
            only_ours,
        ))
        .init();
    let none = http::HeaderMap::new();
    let mut sampled = http::HeaderMap::new();
    sampled.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().expect("a valid header"),
    );
    let mut group = c.benchmark_group("trace per request");
    group.bench_function("off", |b| b.iter(|| request(&none)));
    trace::enable(0.01);
    group.bench_function("rate 0.01, not sampled", |b| b.iter(|| request(&none)));
    group.bench_function("sampled", |b| b.iter(|| request(&sampled)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
