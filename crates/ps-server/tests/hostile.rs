//! A hostile but fair client against a real ps-server: bytes that are no message, requests
//! that ask for unbounded work, finite gradients that overflow. Each case was found by a probe
//! of the release binary (issue 21) and failed before its fix.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ember_client::raw::call_raw;
use ember_client::{Credentials, PsClient};
use ember_core::{Initializer, Optimizer, TableSpec};
use ember_proto::v1::{self, parameter_server_client::ParameterServerClient};
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};
use tonic::Code;

async fn start(max_batch_keys: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = Arc::new(Store::new(StoreConfig { shard_bits: 2, max_batch_keys, ..StoreConfig::default() }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, store, ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn bytes_that_are_no_message_are_invalid_argument_on_every_method() {
    let (addr, _stop) = start(1000).await;
    let methods = [
        "/ember.v1.ParameterServer/CreateTable",
        "/ember.v1.ParameterServer/Pull",
        "/ember.v1.ParameterServer/Push",
        "/ember.v1.ParameterServer/PullTables",
        "/ember.v1.ParameterServer/PushDense",
        "/ember.v1.ParameterServer/WorkerClock",
        "/ember.v1.ParameterServer/SubscribeDeltas",
        "/ember.v1.ParameterServer/Checkpoint",
    ];
    // A truncated length prefix, an unknown wire type, a varint that never ends, and noise.
    let garbage: [&[u8]; 4] = [
        &[0x0a, 0xff, 0x01],
        &[0x0f, 0x01],
        &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[0xde, 0xad, 0xbe, 0xef, 0x12, 0x34],
    ];
    for path in methods {
        for bytes in garbage {
            let status = call_raw(&addr, &Credentials::none(), path, bytes.to_vec()).await.unwrap().unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{path} {bytes:?}: {status:?}");
            assert!(status.message().contains("malformed"), "{path}: {}", status.message());
        }
    }
    // The server is still there and well.
    let client = PsClient::connect_one(&addr).await.unwrap();
    assert!(client.list_tables().await.unwrap().is_empty());
}

#[tokio::test]
async fn one_request_cannot_multiply_its_work() {
    let (addr, _stop) = start(1000).await;
    let client = PsClient::connect_one(&addr).await.unwrap();
    let spec = TableSpec::sparse("emb", 4, Optimizer::Sgd { learning_rate: 0.1 });
    client.create_table(&spec, None).await.unwrap();
    let mut raw = ParameterServerClient::connect(format!("http://{addr}")).await.unwrap();
    // The probe: one table listed 200 times took a server from 16 MB to 1.68 GB.
    let repeated = v1::PullTablesRequest { tables: vec!["emb".into(); 200], keys: (0..10).collect() };
    let status = raw.pull_tables(repeated).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("named twice"), "{}", status.message());
    // Distinct tables, but keys x tables over the key limit.
    for i in 0..3 {
        client
            .create_table(&TableSpec::sparse(format!("t{i}"), 4, Optimizer::Sgd { learning_rate: 0.1 }), None)
            .await
            .unwrap();
    }
    let wide = v1::PullTablesRequest { tables: vec!["t0".into(), "t1".into(), "t2".into()], keys: (0..400).collect() };
    assert_eq!(raw.pull_tables(wide).await.unwrap_err().code(), Code::ResourceExhausted);
    let push = v1::PushTablesRequest {
        keys: vec![1],
        tables: vec![
            v1::TableGradients { table: "emb".into(), gradients: vec![0u8; 16].into(), ..Default::default() };
            2
        ],
    };
    assert_eq!(raw.push_tables(push).await.unwrap_err().code(), Code::InvalidArgument);
    let dense = v1::PullDenseRequest { names: vec!["d".into(); 2] };
    assert_eq!(raw.pull_dense(dense).await.unwrap_err().code(), Code::InvalidArgument);
    // A wide table: the reply (keys x dim) is bounded, not only the key count.
    let wide_spec = TableSpec::sparse("wide", 1 << 16, Optimizer::Sgd { learning_rate: 0.1 });
    client.create_table(&wide_spec, None).await.unwrap();
    let big = v1::PullRequest { table: "wide".into(), keys: (0..1000).collect() };
    assert_eq!(raw.pull(big).await.unwrap_err().code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn pushes_of_3e38_never_store_nan_or_inf() {
    let (addr, _stop) = start(1000).await;
    let client = PsClient::connect_one(&addr).await.unwrap();
    let spec =
        TableSpec::sparse("s", 2, Optimizer::Sgd { learning_rate: 10.0 }).with_initializer(Initializer::Zeros, 1);
    client.create_table(&spec, None).await.unwrap();
    let mut raw = ParameterServerClient::connect(format!("http://{addr}")).await.unwrap();
    let mut rejected = 0;
    for sign in [1.0f32, -1.0, 1.0, -1.0] {
        let grads: Vec<u8> = [sign * 3e38, 0.5, sign * 3e38, 0.5].iter().flat_map(|g| g.to_le_bytes()).collect();
        let push =
            v1::PushRequest { table: "s".into(), keys: vec![1, 2], gradients: grads.into(), ..Default::default() };
        rejected += raw.push(push).await.unwrap().into_inner().rows_rejected;
    }
    assert!(rejected > 0, "the reply says rows were refused");
    let pulled = client.pull("s", &[1, 2]).await.unwrap();
    assert!(pulled.values.iter().all(|v| v.is_finite()), "{:?}", pulled.values);
    let looked_up = raw.lookup(v1::LookupRequest { table: "s".into(), keys: vec![1, 2] }).await.unwrap().into_inner();
    let values: Vec<f32> = looked_up.values.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
}
