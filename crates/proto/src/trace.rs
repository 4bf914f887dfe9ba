//! Trace context across gRPC calls: one predict is one trace through serving, replicas and
//! ps-servers.
//!
//! - Servers: [`TraceLayer`] (in every server's builder, beside auth) opens a span per request,
//!   named by the gRPC path (`ember.v1.ParameterServer/Lookup`), whose parent is the W3C
//!   `traceparent` the caller sent, if any.
//! - Clients: [`inject`] (called by `ember-client`'s interceptor) writes the current span's
//!   context into the call's metadata.
//! - Work inside a request (a store apply on a blocking thread, a checkpoint, a publish) gets a
//!   [`span`] of its own, a child of whatever span is current where it is made.
//!
//! Sampling happens here, before any span exists: a request whose caller sent a sampled
//! `traceparent` is traced; one without is traced with probability `rate` (a new root); one
//! whose caller's trace was not sampled is not. An unsampled request makes no span at all: a
//! traced request's spans cost about 5 us, an untraced one's decision about 0.1 us
//! (`cargo bench -p ember-proto --bench trace`), and a span that OpenTelemetry would drop later
//! costs nearly as much as a traced one. The SDK's own sampler is therefore always-on.
//!
//! Invariant: until the binary calls [`enable`] (it does when `--otlp-endpoint` is given), every
//! function here is a no-op: no span is created and no metadata is written, so a process that
//! does not export traces pays one relaxed atomic load per request. Spans go to the `tracing`
//! target [`TARGET`]; the binary's OpenTelemetry layer exports them, its log output skips them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use ember_core::SplitMix64;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::codegen::http;
use tracing::instrument::{Instrument, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span made here.
pub const TARGET: &str = "ember::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The root sampling threshold: a root is sampled when a uniform u64 falls below it.
static THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// Turns spans and context propagation on for this process (the binary, with an exporter set);
/// traces that start here are sampled with probability `rate` (clamped to 0..=1).
pub fn enable(rate: f64) {
    let rate = rate.clamp(0.0, 1.0);
    let threshold = if rate >= 1.0 { u64::MAX } else { (rate * u64::MAX as f64) as u64 };
    THRESHOLD.store(threshold, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are made.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a new root trace is sampled: a per-thread SplitMix64 stream against the threshold.
fn sample_root() -> bool {
    thread_local! {
        static DRAWS: RefCell<SplitMix64> = RefCell::new(SplitMix64::new(seed()));
    }
    let threshold = THRESHOLD.load(Ordering::Relaxed);
    threshold == u64::MAX || DRAWS.with(|d| d.borrow_mut().next_u64()) < threshold
}

/// A different seed per thread and process: the clock mixed with the thread's id.
fn seed() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    ember_core::mix64(nanos ^ h.finish())
}

fn internal(name: &'static str, kind: &'static str) -> tracing::Span {
    tracing::info_span!(target: TARGET, "ember", otel.name = name, otel.kind = kind)
}

/// An internal span (`apply`, `store`) inside a traced request: a child of the current span,
/// and nothing when the current request is not traced.
pub fn span(name: &'static str) -> tracing::Span {
    if enabled() && !tracing::Span::current().is_none() {
        internal(name, "internal")
    } else {
        tracing::Span::none()
    }
}

/// Work that may start a trace of its own (a periodic checkpoint, a publish): a child of the
/// current span if there is one, else a new root, sampled at the rate.
pub fn root_span(name: &'static str) -> tracing::Span {
    root_or_child(name, "internal")
}

/// A client span for a call this process makes (a worker's pull or push): like [`root_span`].
pub fn client_span(name: &'static str) -> tracing::Span {
    root_or_child(name, "client")
}

fn root_or_child(name: &'static str, kind: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    if !tracing::Span::current().is_none() || sample_root() {
        internal(name, kind)
    } else {
        tracing::Span::none()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(key, value);
        }
    }
}

/// Writes the current span's context (`traceparent`) into an outgoing call's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(metadata)));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The server span of one request, named by its gRPC path: a child of the caller's sampled
/// trace, a sampled new root when the caller sent none, else nothing.
pub fn server_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    if !enabled() {
        return tracing::Span::none();
    }
    let parent = if headers.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        if !parent.span().span_context().is_sampled() {
            return tracing::Span::none();
        }
        Some(parent)
    } else if sample_root() {
        None
    } else {
        return tracing::Span::none();
    };
    let name = path.trim_start_matches('/').to_string();
    let span = tracing::info_span!(target: TARGET, "rpc", otel.name = name, otel.kind = "server");
    if let Some(parent) = parent {
        // The parent is valid (it was sampled): setting it cannot fail in a way worth reporting.
        let _ = span.set_parent(parent);
    }
    span
}

/// Puts [`Trace`] around a server's services.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// Runs each request inside its [`server_span`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Trace<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = server_span(req.uri().path(), req.headers());
        let _entered = span.enter();
        self.inner.call(req).instrument(span.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_made_or_written_until_enabled() {
        // Tests in this binary run in parallel; this one only reads the flag's initial state.
        if enabled() {
            return;
        }
        assert!(span("apply").is_none());
        assert!(server_span("/ember.v1.ParameterServer/Pull", &http::HeaderMap::new()).is_none());
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.is_empty());
    }
}
