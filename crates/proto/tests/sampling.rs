//! Root sampling in `ember_proto::trace`, in a process of its own (it turns tracing on for the
//! whole process, which the library's unit tests must not see). A plain `tracing` registry
//! stands in for the binary's subscriber: it records every span it is given, so a span that
//! exists is a request that was sampled.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use ember_proto::trace;
use tonic::codegen::http;
use tracing_subscriber::util::SubscriberInitExt;

#[test]
fn roots_are_sampled_at_the_rate_and_unsampled_callers_make_no_span() {
    tracing_subscriber::registry().init();
    let none = http::HeaderMap::new();
    let path = "/ember.v1.ParameterServer/Pull";
    let sampled = |n: usize| (0..n).filter(|_| !trace::server_span(path, &none).is_none()).count();

    trace::enable(0.0);
    assert_eq!(sampled(10_000), 0, "rate 0: no root is sampled");
    trace::enable(0.25);
    let quarter = sampled(20_000);
    assert!((4_000..6_000).contains(&quarter), "about a quarter of roots: {quarter} of 20000");
    trace::enable(1.0);
    assert_eq!(sampled(1_000), 1_000, "rate 1: every root");

    // A caller whose trace was not sampled (flags 00) is not traced here, whatever the rate.
    let mut unsampled = http::HeaderMap::new();
    unsampled.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".parse().unwrap());
    assert!(trace::server_span(path, &unsampled).is_none());
    // Internal work makes a span only inside a traced request; roots of their own follow the rate.
    assert!(trace::span("apply").is_none(), "no current span: apply belongs to no trace");
    let request = trace::server_span(path, &none);
    assert!(request.in_scope(|| !trace::span("apply").is_none()), "inside a traced request");
    assert!(!trace::root_span("checkpoint").is_none(), "rate 1: a root of its own");
    trace::enable(0.0);
    assert!(trace::root_span("checkpoint").is_none(), "rate 0: none");
}
