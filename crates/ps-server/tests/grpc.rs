//! gRPC round trips through real ps-servers on 127.0.0.1 ephemeral ports: every RPC, every
//! bad-input case of the contract, multi-server routing, several tables in one call, health and
//! graceful shutdown.

// Helpers here are test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ember_client::{ClientError, PsClient, ShardMap, TableGradients};
use ember_core::{Initializer, Optimizer, TableSpec};
use ember_proto::v1::{self, parameter_server_client::ParameterServerClient};
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};
use tokio::sync::oneshot;
use tonic::Code;

struct Server {
    addr: String,
    store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start(max_batch_keys: usize) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = Arc::new(Store::new(StoreConfig { shard_bits: 4, max_batch_keys, ..StoreConfig::default() }));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, Arc::clone(&store), ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    Server { addr, store, stop: Some(stop), task }
}

fn adagrad() -> Optimizer {
    Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-7 }
}

fn emb_spec() -> TableSpec {
    TableSpec::sparse("emb", 4, adagrad()).with_initializer(Initializer::Uniform { low: -0.05, high: 0.05 }, 17)
}

#[tokio::test]
async fn every_rpc_round_trips() {
    let server = start(10_000).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    assert!(client.create_table(&emb_spec(), None).await.unwrap());
    assert!(!client.create_table(&emb_spec(), None).await.unwrap(), "create is idempotent");

    let keys = [3u64, 1, 3, 7];
    let first = client.pull("emb", &keys).await.unwrap();
    assert_eq!(first.dim, 4);
    assert_eq!(&first.values[0..4], &first.values[8..12], "a repeated key reads the same row");
    let mut expected = vec![0f32; 4];
    Initializer::Uniform { low: -0.05, high: 0.05 }.fill(17, 7, &mut expected);
    assert_eq!(&first.values[12..16], &expected[..], "rows start at the deterministic initializer");

    let grads: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.8).collect();
    let pushed = client.push("emb", &keys, &grads, &first.clock).await.unwrap();
    assert_eq!(pushed.rows_updated, 3);
    assert_eq!(pushed.clock.0, vec![1]);
    // The server applied Adagrad to the summed gradient of key 3; do the same locally.
    let mut row3 = first.values[0..4].to_vec();
    let mut acc = vec![0f32; 4];
    adagrad().init_state(&row3, &mut acc);
    let sum3: Vec<f32> = (0..4).map(|j| grads[j] + grads[8 + j]).collect();
    adagrad().apply(&mut row3, &mut acc, &sum3, 1);
    let after = client.pull("emb", &[3]).await.unwrap();
    assert_eq!(after.values, row3);
    assert_eq!(after.clock.0, vec![1]);

    let looked = client.lookup("emb", &[1, 99]).await.unwrap();
    assert_eq!(looked.missing, vec![false, true]);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats[0].tables[0].rows, 3, "lookup created nothing");
    assert_eq!(client.delete_keys("emb", &[1, 2]).await.unwrap(), 1);

    let dense = TableSpec::dense("mlp.w0", 3, Optimizer::Sgd { learning_rate: 1.0 });
    client.create_table(&dense, Some(&[1.0, 2.0, 3.0])).await.unwrap();
    let pushed = client.push_dense(&[("mlp.w0", &[0.5, 0.5, 0.5], 0)]).await.unwrap();
    assert_eq!(pushed, vec![ember_client::DensePushed { version: 1, staleness: 0 }]);
    assert_eq!(client.pull_dense(&["mlp.w0"]).await.unwrap(), vec![(vec![0.5, 1.5, 2.5], 1)]);

    let names: Vec<String> = client.list_tables().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["emb", "mlp.w0"]);
    client.drop_table("mlp.w0").await.unwrap();
    assert_eq!(client.drop_table("mlp.w0").await.unwrap_err().code(), Some(Code::NotFound));
}

/// Softsync over the wire: pushes report their staleness and whether they were buffered; the
/// s-th push applies their sum; FlushPending applies a partial buffer.
#[tokio::test]
async fn softsync_tables_buffer_until_s_pushes_and_flush_applies_the_rest() {
    use ember_core::sync::ApplyRule;
    let server = start(1024).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    let sgd = Optimizer::Sgd { learning_rate: 1.0 };
    let spec = TableSpec::sparse("soft", 1, sgd).with_sync(ApplyRule::Softsync { s: 2, lambda0: 1.0 });
    client.create_table(&spec, None).await.unwrap();
    let clock = client.pull("soft", &[7]).await.unwrap().clock;
    let first = client.push("soft", &[7], &[4.0], &clock).await.unwrap();
    assert_eq!(first.clock.0, vec![0], "buffered: the version has not moved");
    assert_eq!(client.lookup("soft", &[7]).await.unwrap().values, vec![0.0]);
    client.push("soft", &[7], &[2.0], &clock).await.unwrap();
    assert_eq!(client.lookup("soft", &[7]).await.unwrap().values, vec![-6.0], "4 + 2, one step");
    // Now at version 1; a gradient from version 0 is one version stale (weight 1 / max(1, 1)).
    let stale = client.push("soft", &[7], &[2.0], &clock).await.unwrap();
    assert_eq!(stale.staleness, vec![1]);
    assert_eq!(client.flush_pending().await.unwrap(), 1);
    assert_eq!(client.lookup("soft", &[7]).await.unwrap().values, vec![-8.0]);
}

#[tokio::test]
async fn worker_clocks_answer_the_group_minimum_and_refuse_bad_groups() {
    let server = start(1024).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    let report = |worker: &str, clock, wait_for| v1::WorkerClockRequest {
        group: "job-1".into(),
        worker: worker.into(),
        clock,
        leave: false,
        wait_for,
        wait_ms: 50,
    };
    assert_eq!(client.worker_clock(report("a", 4, 0)).await.unwrap().min_clock, 4);
    assert_eq!(client.worker_clock(report("b", 1, 0)).await.unwrap().workers, 2);
    // a waits for b to reach 3; b does not within 50 ms, so the answer is b's clock.
    assert_eq!(client.worker_clock(report("a", 4, 3)).await.unwrap().min_clock, 1);
    let mut raw = ParameterServerClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let bad = v1::WorkerClockRequest { group: "no spaces".into(), ..report("a", 1, 0) };
    assert_eq!(raw_status(raw.worker_clock(bad).await).code(), Code::InvalidArgument);
}

fn raw_status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    r.expect_err("request must be refused")
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_changes_nothing() {
    let server = start(100).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    client.create_table(&emb_spec(), None).await.unwrap();
    let before = client.pull("emb", &[1, 2]).await.unwrap();
    let mut raw = ParameterServerClient::connect(format!("http://{}", server.addr)).await.unwrap();

    // Unknown table.
    let err = client.pull("nope", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(err.to_string().contains("nope"));

    // Gradient bytes for the wrong dim, and not even a multiple of 4.
    let err = client.push("emb", &[1, 2], &[0.5; 6], &before.clock).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("expected 32"), "{err}");
    let odd = v1::PushRequest {
        table: "emb".into(),
        keys: vec![1],
        gradients: vec![0u8; 15].into(),
        version: 0,
        encoding: 0,
    };
    let status = raw_status(raw.push(odd).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("expected 16"), "{}", status.message());

    // NaN and Inf anywhere in the batch.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut grads = vec![0.1f32; 8];
        grads[6] = bad;
        let err = client.push("emb", &[1, 2], &grads, &before.clock).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{bad}");
    }

    // Over the key limit.
    let keys: Vec<u64> = (0..101).collect();
    let err = client.pull("emb", &keys).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(err.to_string().contains("limit of 100"), "{err}");
    let err = client.push("emb", &keys, &vec![0.0; 404], &before.clock).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted));

    // Malformed specs and the wrong kind of table.
    let status =
        raw_status(raw.create_table(v1::CreateTableRequest { spec: None, initial_values: Default::default() }).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut bad_spec: v1::TableSpec = emb_spec().into();
    bad_spec.name = "bad".into();
    bad_spec.optimizer = Some(Optimizer::Ftrl { alpha: -1.0, beta: 1.0, l1: 0.0, l2: 0.0 }.into());
    let status = raw_status(
        raw.create_table(v1::CreateTableRequest { spec: Some(bad_spec), initial_values: Default::default() }).await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("alpha"), "{}", status.message());
    let conflict = TableSpec { dim: 8, ..emb_spec() };
    assert_eq!(client.create_table(&conflict, None).await.unwrap_err().code(), Some(Code::FailedPrecondition));
    assert_eq!(client.pull_dense(&["emb"]).await.unwrap_err().code(), Some(Code::FailedPrecondition));

    // Nothing changed: same rows, same version, the rejections counted.
    let after = client.pull("emb", &[1, 2]).await.unwrap();
    assert_eq!(before, after);
    let stats = client.stats().await.unwrap();
    let emb = stats[0].tables.iter().find(|t| t.spec.as_ref().unwrap().name == "emb").unwrap();
    assert_eq!((emb.rows, emb.version, emb.rejected_nonfinite), (2, 0, 3));
    assert!(server.store.sparse("emb").unwrap().stats().rows == 2);
}

#[tokio::test]
async fn concurrent_clients_pushing_overlapping_keys_match_the_sequential_result() {
    let server = start(10_000).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    // lr 0.5 and gradients in quarters: exact in f32, so order cannot matter.
    client.create_table(&TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 0.5 }), None).await.unwrap();
    let tasks = 16u64;
    let pushes = 25u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            for p in 0..pushes {
                let keys: Vec<u64> = (0..50).map(|i| (t * 13 + p * 7 + i) % 120).collect();
                let grads: Vec<f32> = keys.iter().flat_map(|k| [(k % 4) as f32 * 0.25, -0.25]).collect();
                client.push("t", &keys, &grads, &Default::default()).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut expected = vec![[0f32; 2]; 120];
    let mut updates = vec![0u64; 120];
    for t in 0..tasks {
        for p in 0..pushes {
            for i in 0..50 {
                let k = ((t * 13 + p * 7 + i) % 120) as usize;
                expected[k][0] -= 0.5 * (k % 4) as f32 * 0.25;
                expected[k][1] += 0.5 * 0.25;
                updates[k] += 1;
            }
        }
    }
    let keys: Vec<u64> = (0..120).collect();
    let rows = client.pull("t", &keys).await.unwrap();
    let table = server.store.sparse("t").unwrap();
    for k in 0..120 {
        assert_eq!(&rows.values[k * 2..k * 2 + 2], &expected[k][..], "key {k}");
        assert_eq!(table.get(k as u64).unwrap().1.updates, updates[k], "key {k}");
    }
    assert_eq!(rows.clock.0, vec![tasks * pushes]);
}

#[tokio::test]
async fn a_batch_split_over_servers_comes_back_in_request_order() {
    let (a, b, c) = (start(10_000).await, start(10_000).await, start(10_000).await);
    let lone = PsClient::connect_one(&c.addr).await.unwrap();
    let map = ShardMap::round_robin(vec![a.addr.clone(), b.addr.clone()], 1024).unwrap();
    let pair = PsClient::connect(map, &ember_client::Credentials::none()).await.unwrap();
    for client in [&lone, &pair] {
        client.create_table(&emb_spec(), None).await.unwrap();
    }
    let keys: Vec<u64> = (0..500).map(|i| (i * 7919) % 300).collect();
    let from_pair = pair.pull("emb", &keys).await.unwrap();
    let from_lone = lone.pull("emb", &keys).await.unwrap();
    assert_eq!(from_pair.values, from_lone.values, "same key, same initial row, on any server");
    let (ra, rb) = (a.store.sparse("emb").unwrap().stats().rows, b.store.sparse("emb").unwrap().stats().rows);
    assert!(ra > 100 && rb > 100 && ra + rb == 300, "{ra} + {rb}");

    let grads: Vec<f32> = (0..keys.len() * 4).map(|i| (i % 11) as f32 * 0.01).collect();
    let pushed = pair.push("emb", &keys, &grads, &from_pair.clock).await.unwrap();
    lone.push("emb", &keys, &grads, &from_lone.clock).await.unwrap();
    assert_eq!(pushed.rows_updated, 300);
    assert_eq!(pushed.clock.0, vec![1, 1]);
    assert_eq!(pair.pull("emb", &keys).await.unwrap().values, lone.pull("emb", &keys).await.unwrap().values);
    let looked = pair.lookup("emb", &[1, 100_000]).await.unwrap();
    assert_eq!(looked.missing, vec![false, true]);

    // Export gathers every row from both servers, each key once, with its current weights.
    let (dim, exported, values) = pair.export("emb").await.unwrap();
    assert_eq!((dim, exported.len(), values.len()), (4, 300, 1200));
    let first = exported[0];
    let pulled = lone.pull("emb", &[first]).await.unwrap().values;
    assert_eq!(&values[..4], &pulled[..]);
    assert_eq!(exported, (0..300).collect::<Vec<u64>>(), "sorted, each key once");
}

#[tokio::test]
async fn checkpoint_needs_a_data_dir_and_export_needs_a_sparse_table() {
    let server = start(10_000).await;
    let client = PsClient::connect_one(&server.addr).await.unwrap();
    let err = client.checkpoint(true, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("--data-dir"), "{err}");
    let err = client.export("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    client.create_table(&TableSpec::dense("d", 3, adagrad()), None).await.unwrap();
    assert_eq!(client.export("d").await.unwrap_err().code(), Some(Code::FailedPrecondition));

    // With a checkpointer, the RPC writes files that restore into an equal store.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = Arc::new(Store::new(StoreConfig::default()));
    let checkpoints = Arc::new(ember_store::Checkpointer::open(dir.path()).unwrap());
    let config = ServeConfig { checkpoints: Some(checkpoints), ..ServeConfig::default() };
    tokio::spawn(serve(listener, Arc::clone(&store), config, std::future::pending()));
    let client = PsClient::connect_one(&addr).await.unwrap();
    client.create_table(&emb_spec(), None).await.unwrap();
    client.pull("emb", &[1, 2, 3]).await.unwrap();
    let replies = client.checkpoint(false, 42).await.unwrap();
    assert_eq!((replies[0].kind.as_str(), replies[0].rows, replies[0].label), ("full", 3, 42));
    let copy = Store::new(StoreConfig::default());
    ember_store::Checkpointer::open(dir.path()).unwrap().restore(&copy, ember_store::IfNoIntactChain::Refuse).unwrap();
    assert_eq!(copy.lookup("emb", &[1, 2, 3]).unwrap(), store.lookup("emb", &[1, 2, 3]).unwrap());
}

#[tokio::test]
async fn health_reports_serving_and_shutdown_drains() {
    let mut server = start(10).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "ember.v1.ParameterServer".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    server.stop.take().unwrap().send(()).unwrap();
    server.task.await.unwrap().unwrap();
    let err = PsClient::connect_one(&server.addr).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn several_tables_in_one_call_match_one_table_at_a_time() {
    let (a, b, c) = (start(10_000).await, start(10_000).await, start(10_000).await);
    let lone = PsClient::connect_one(&c.addr).await.unwrap();
    let pair = PsClient::connect(
        ShardMap::round_robin(vec![a.addr.clone(), b.addr.clone()], 1024).unwrap(),
        &ember_client::Credentials::none(),
    )
    .await
    .unwrap();
    let lin = TableSpec::sparse("lin", 1, Optimizer::Ftrl { alpha: 0.05, beta: 1.0, l1: 0.1, l2: 0.1 });
    for client in [&lone, &pair] {
        client.create_table(&emb_spec(), None).await.unwrap();
        client.create_table(&lin, None).await.unwrap();
    }
    let keys: Vec<u64> = (0..400).map(|i| (i * 7919) % 250).collect();
    let both = pair.pull_tables(&["lin", "emb"], &keys).await.unwrap();
    let (w, v) = (lone.pull("lin", &keys).await.unwrap(), lone.pull("emb", &keys).await.unwrap());
    assert_eq!((both[0].dim, both[1].dim), (1, 4));
    assert_eq!((&both[0].values, &both[1].values), (&w.values, &v.values));

    let gw: Vec<f32> = (0..keys.len()).map(|i| (i % 7) as f32 * 0.03 - 0.1).collect();
    let gv: Vec<f32> = (0..keys.len() * 4).map(|i| (i % 11) as f32 * 0.01).collect();
    let parts = [
        TableGradients { table: "lin", grads: &gw, clock: &both[0].clock },
        TableGradients { table: "emb", grads: &gv, clock: &both[1].clock },
    ];
    let pushed = pair.push_tables(&keys, &parts).await.unwrap();
    assert_eq!(pushed.len(), 2);
    assert!(pushed.iter().all(|p| p.rows_updated == 250 && p.clock.0 == vec![1, 1]), "{pushed:?}");
    lone.push("lin", &keys, &gw, &w.clock).await.unwrap();
    lone.push("emb", &keys, &gv, &v.clock).await.unwrap();
    for table in ["lin", "emb"] {
        let (from_pair, from_lone) = (pair.pull(table, &keys).await.unwrap(), lone.pull(table, &keys).await.unwrap());
        assert_eq!(from_pair.values, from_lone.values, "{table} after the push");
        assert_ne!(&from_pair.values, if table == "lin" { &w.values } else { &v.values }, "{table} moved");
    }

    // Bad input: no tables, an unknown table, gradients of the wrong size.
    let mut raw = ParameterServerClient::connect(format!("http://{}", c.addr)).await.unwrap();
    let none = raw.pull_tables(v1::PullTablesRequest { tables: vec![], keys: vec![1] }).await;
    assert_eq!(raw_status(none).code(), Code::InvalidArgument);
    let none = raw.push_tables(v1::PushTablesRequest { keys: vec![1], tables: vec![] }).await;
    assert_eq!(raw_status(none).code(), Code::InvalidArgument);
    let err = lone.pull_tables(&["lin", "nope"], &[1]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    let short = [TableGradients { table: "emb", grads: &gv[..5], clock: &v.clock }];
    assert!(matches!(lone.push_tables(&keys, &short).await, Err(ClientError::InvalidArgument(_))));
}

#[tokio::test]
async fn dense_tables_on_two_servers_come_back_in_the_order_asked() {
    let (a, b) = (start(10_000).await, start(10_000).await);
    let map = ShardMap::round_robin(vec![a.addr.clone(), b.addr.clone()], 1024).unwrap();
    let pair = PsClient::connect(map.clone(), &ember_client::Credentials::none()).await.unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("mlp.t{i}")).collect();
    let servers: Vec<usize> = names.iter().map(|n| map.server_of_name(n)).collect();
    assert!(servers.contains(&0) && servers.contains(&1), "the tables spread over both servers: {servers:?}");
    for (i, name) in names.iter().enumerate() {
        let initial = vec![i as f32; i + 1];
        pair.create_table(
            &TableSpec::dense(name.clone(), i as u32 + 1, Optimizer::Sgd { learning_rate: 1.0 }),
            Some(&initial),
        )
        .await
        .unwrap();
    }
    // Asked in reverse: each answer must match its name, not the server's order.
    let asked: Vec<&str> = names.iter().rev().map(String::as_str).collect();
    let pulled = pair.pull_dense(&asked).await.unwrap();
    for (name, (values, version)) in asked.iter().zip(&pulled) {
        let i: usize = name["mlp.t".len()..].parse().unwrap();
        assert_eq!((values, *version), (&vec![i as f32; i + 1], 0), "{name}");
    }
    let grads: Vec<Vec<f32>> =
        asked.iter().map(|n| vec![0.25; n["mlp.t".len()..].parse::<usize>().unwrap() + 1]).collect();
    let parts: Vec<(&str, &[f32], u64)> = asked.iter().zip(&grads).map(|(n, g)| (*n, &g[..], 0)).collect();
    let pushed = pair.push_dense(&parts).await.unwrap();
    assert_eq!(pushed.len(), 6);
    assert!(pushed.iter().all(|p| p.version == 1 && p.staleness == 0), "{pushed:?}");
    for (name, (values, version)) in asked.iter().zip(pair.pull_dense(&asked).await.unwrap()) {
        let i: usize = name["mlp.t".len()..].parse().unwrap();
        assert_eq!((values, version), (vec![i as f32 - 0.25; i + 1], 1), "{name} after one SGD step");
    }
}
