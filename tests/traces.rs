//! Traces over OTLP from real processes into a real OTLP receiver: the collector's gRPC trace
//! service (generated from the OTLP protos by opentelemetry-proto), started here.
//! - One predict is one trace: serving's `Predict` span is the parent of the ps-server's `Lookup`
//!   span (context carried in gRPC metadata across processes), which is the parent of its store
//!   work. Sampling is parent-based: a ps-server whose own rate is 0 still traces the lookups of a
//!   sampled predict, and nothing else.
//! - A collector that is down costs predictions nothing: they all succeed, and the lost spans
//!   are counted in `ember_trace_spans_dropped_total`.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

mod support;

use support::{ember, http_get};

/// One received span: its service, name and ids (hex).
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Starts the receiver on a free port; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    /// Waits (up to 20 s) until `found` picks something out of the spans received so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = found(&self.0.lock().unwrap()) {
                return t;
            }
            if Instant::now() >= deadline {
                let mut names: HashMap<(String, String), usize> = HashMap::new();
                for s in self.0.lock().unwrap().iter() {
                    *names.entry((s.service.clone(), s.name.clone())).or_default() += 1;
                }
                panic!("no {what} among the spans received: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The spans of `trace` as an indented tree, roots first (what the closing note shows).
fn tree(spans: &[Received], trace: &str) -> String {
    let of_trace: Vec<&Received> = spans.iter().filter(|s| s.trace == trace).collect();
    let mut children: HashMap<&str, Vec<&Received>> = HashMap::new();
    for s in &of_trace {
        children.entry(s.parent.as_str()).or_default().push(s);
    }
    fn walk(out: &mut String, children: &HashMap<&str, Vec<&Received>>, parent: &str, depth: usize) {
        for s in children.get(parent).into_iter().flatten() {
            out.push_str(&format!("{}{} [{}] span {}\n", "  ".repeat(depth), s.name, s.service, s.id));
            walk(out, children, &s.id, depth + 1);
        }
    }
    let ids: Vec<&str> = of_trace.iter().map(|s| s.id.as_str()).collect();
    let mut out = format!("trace {trace}\n");
    for root in of_trace.iter().filter(|s| !ids.contains(&s.parent.as_str())) {
        out.push_str(&format!("{} [{}] span {}\n", root.name, root.service, root.id));
        walk(&mut out, &children, &root.id, 1);
    }
    out
}

/// A serving node over `trained`'s ps-server that traces everything to `endpoint`; returns it,
/// its gRPC address, its `/metrics` URL and its REST address.
fn serve_traced(trained: &support::serving::Trained, endpoint: &str) -> (support::Proc, String, String, String) {
    let models = trained.models.display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--model-dir",
        &models,
        "--ps",
        &trained.ps,
        "--otlp-endpoint",
        endpoint,
        "--trace-sample-rate",
        "1",
    ];
    let (proc, found) =
        support::start(&args, &["ember serve listening on ", "ember serve metrics on ", "ember serve http on "]);
    (proc, found[0].clone(), found[1].clone(), found[2].clone())
}

/// `ember predict` of the hold-out rows through `serving`; returns how many answers it wrote.
async fn predict(serving: &str, trained: &support::serving::Trained) -> usize {
    let out = trained._dir.path().join("preds.txt");
    let args: Vec<String> = ["predict", "--serving", serving, "--data", trained.test_data.to_str().unwrap()]
        .iter()
        .map(|a| a.to_string())
        .chain(["--out".to_string(), out.display().to_string()])
        .collect();
    tokio::task::spawn_blocking(move || ember(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap();
    std::fs::read_to_string(&out).unwrap().lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_predict_is_one_trace_across_serving_and_the_ps_server() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let trained = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        // Rate 0 on the ps-server: it starts no trace of its own, so every span it sends belongs
        // to a trace a caller sampled (serving, at rate 1).
        move || support::serving::train_with_ps("", &["--otlp-endpoint", &endpoint, "--trace-sample-rate", "0"])
    })
    .await
    .unwrap();
    let (_serve, serving, _, rest) = serve_traced(&trained, &endpoint);
    assert_eq!(predict(&serving, &trained).await, trained.test_probs.len());

    // A Lookup on the ps-server whose parent is a Predict on serving, in the same trace.
    let (predict, lookup) = receiver
        .wait_for("Predict -> Lookup", |spans| {
            spans.iter().filter(|s| s.service == "ember-ps" && s.name == "ember.v1.ParameterServer/Lookup").find_map(
                |lookup| {
                    spans
                        .iter()
                        .find(|p| {
                            p.service == "ember-serve"
                                && p.name == "ember.v1.Serving/Predict"
                                && p.id == lookup.parent
                                && p.trace == lookup.trace
                        })
                        .map(|p| (p.clone(), lookup.clone()))
                },
            )
        })
        .await;
    // The store work of that lookup, on a blocking thread, is the lookup's child.
    receiver
        .wait_for("the lookup's store span", |spans| {
            spans.iter().find(|s| s.service == "ember-ps" && s.name == "store" && s.parent == lookup.id).cloned()
        })
        .await;
    assert!(predict.parent.is_empty(), "the predict was the root: `ember predict` does not trace");
    // Parent-based sampling: no ps-server span outside a trace serving started, and no training
    // push (`ember train` does not trace, and the ps-server's own rate is 0) was traced.
    let spans = receiver.0.lock().unwrap().clone();
    let serving_traces: Vec<&str> =
        spans.iter().filter(|s| s.service == "ember-serve").map(|s| s.trace.as_str()).collect();
    let orphans: Vec<&Received> =
        spans.iter().filter(|s| s.service == "ember-ps" && !serving_traces.contains(&s.trace.as_str())).collect();
    assert!(orphans.is_empty(), "ps-server spans outside serving's traces: {orphans:#?}");
    assert!(!spans.iter().any(|s| s.name == "apply"), "no push was traced");
    // REST: a request carrying a sampled `traceparent` is a child of the caller's span.
    let body = r#"{"instances": [{"I1": 3, "C1": "68fd1e64"}]}"#;
    let request = format!(
        "POST /v1/models/ctr:predict HTTP/1.1\r\nHost: {rest}\r\nContent-Type: application/json\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&rest).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("predictions"), "{reply}");
    receiver
        .wait_for("the REST predict as the caller's child", |spans| {
            spans
                .iter()
                .find(|s| {
                    s.service == "ember-serve"
                        && s.name == "v1/models/ctr:predict"
                        && s.trace == "0af7651916cd43dd8448eb211c80319c"
                        && s.parent == "b7ad6b7169203331"
                })
                .cloned()
        })
        .await;
    let spans = receiver.0.lock().unwrap().clone();
    println!("{}\n{}", tree(&spans, &predict.trace), tree(&spans, "0af7651916cd43dd8448eb211c80319c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_predictions_nothing_and_lost_spans_are_counted() {
    let trained = tokio::task::spawn_blocking(support::serving::train).await.unwrap();
    // Port 1 on loopback: nothing listens, every export fails.
    let (_serve, serving, metrics, _) = serve_traced(&trained, "http://127.0.0.1:1");
    for _ in 0..3 {
        assert_eq!(predict(&serving, &trained).await, trained.test_probs.len(), "every prediction answered");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = tokio::task::spawn_blocking({
            let metrics = metrics.clone();
            move || http_get(&metrics)
        })
        .await
        .unwrap();
        let dropped = support::counter(&text, "ember_trace_spans_dropped_total", &[]);
        if dropped > 0.0 {
            assert!(!text.contains("ember_trace_spans_exported_total"), "nothing was exported: {text}");
            break;
        }
        assert!(Instant::now() < deadline, "no dropped spans counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
