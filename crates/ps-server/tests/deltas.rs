//! `SubscribeDeltas` and `CutDeltas` through a real ps-server on a loopback port: a follower that
//! applies whole rounds holds exactly the server's rows (checked against `Export`), resumes
//! without a snapshot, resyncs when it falls behind the log or names another stream, sees only
//! its slots, and bad subscriptions are refused with the right code.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_client::PsClient;
use ember_core::{slot_of, Optimizer, TableSpec};
use ember_proto::v1::{self, parameter_server_client::ParameterServerClient};
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};
use tonic::{Code, Streaming};

async fn start(delta_log_keys: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = StoreConfig { shard_bits: 4, delta_log_keys, ..StoreConfig::default() };
    let store = Arc::new(Store::new(config));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, store, ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn spec(name: &str) -> TableSpec {
    TableSpec::sparse(name, 4, Optimizer::Sgd { learning_rate: 0.5 })
}

/// A replica's view: rows per table, applied a whole round at a time.
#[derive(Debug, Default)]
struct Follower {
    stream: u64,
    watermark: u64,
    tables: BTreeMap<String, BTreeMap<u64, Vec<f32>>>,
    /// Tables reset in the last round applied, and rows it carried.
    last_resets: Vec<String>,
    last_rows: usize,
}

impl Follower {
    /// Reads one round and applies it; panics if the stream ends first.
    async fn round(&mut self, stream: &mut Streaming<v1::DeltaBatch>) {
        let mut pending = Vec::new();
        loop {
            let batch = stream.message().await.unwrap().expect("the stream goes on");
            if batch.watermark != 0 {
                assert!(batch.watermark > self.watermark, "watermarks increase");
                self.stream = batch.stream_id;
                self.watermark = batch.watermark;
                break;
            }
            pending.push(batch);
        }
        self.last_resets.clear();
        self.last_rows = 0;
        for batch in pending {
            let rows = self.tables.entry(batch.table.clone()).or_default();
            if batch.reset {
                rows.clear();
                self.last_resets.push(batch.table.clone());
            }
            let dim = batch.dim as usize;
            let values: Vec<f32> =
                batch.values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            assert_eq!(values.len(), batch.keys.len() * dim);
            for (key, row) in batch.keys.iter().zip(values.chunks_exact(dim)) {
                rows.insert(*key, row.to_vec());
            }
            for key in &batch.deleted {
                rows.remove(key);
            }
            self.last_rows += batch.keys.len() + batch.deleted.len();
        }
    }

    /// Applies rounds until one whose watermark is past `seq`: every change cut at `seq` is in.
    async fn catch_up(&mut self, stream: &mut Streaming<v1::DeltaBatch>, seq: u64) {
        while self.watermark <= seq {
            self.round(stream).await;
        }
    }
}

async fn subscribe(addr: &str, req: v1::SubscribeDeltasRequest) -> Result<Streaming<v1::DeltaBatch>, tonic::Status> {
    let mut raw = ParameterServerClient::connect(format!("http://{addr}")).await.unwrap();
    raw.subscribe_deltas(req).await.map(|r| r.into_inner())
}

fn from(f: &Follower) -> v1::SubscribeDeltasRequest {
    v1::SubscribeDeltasRequest { stream_id: f.stream, from_seq: f.watermark, interval_ms: 10, ..Default::default() }
}

async fn exported(client: &PsClient, table: &str) -> BTreeMap<u64, Vec<f32>> {
    let (dim, keys, values) = client.export(table).await.unwrap();
    keys.into_iter().zip(values.chunks_exact(dim).map(<[f32]>::to_vec)).collect()
}

async fn cut(client: &PsClient) -> u64 {
    client.cut_deltas().await.unwrap()[0].1
}

async fn train(client: &PsClient, table: &str, keys: &[u64], step: f32) {
    let pulled = client.pull(table, keys).await.unwrap();
    let grads: Vec<f32> = keys.iter().flat_map(|k| [step, -step, (*k % 7) as f32 * step, 1.0]).collect();
    client.push(table, keys, &grads, &pulled.clock).await.unwrap();
}

#[tokio::test]
async fn a_follower_holds_the_servers_rows_and_resumes_without_a_snapshot() {
    let (addr, _stop) = start(1 << 16).await;
    let client = PsClient::connect_one(&addr).await.unwrap();
    client.create_table(&spec("a"), None).await.unwrap();
    client.create_table(&spec("b"), None).await.unwrap();
    let dense = TableSpec::dense("w", 3, Optimizer::Sgd { learning_rate: 0.1 });
    client.create_table(&dense, Some(&[1.0, 2.0, 3.0])).await.unwrap();
    train(&client, "a", &(0..2_000).collect::<Vec<_>>(), 0.1).await;
    train(&client, "b", &(500..700).collect::<Vec<_>>(), 0.2).await;

    let mut follower = Follower::default();
    let mut stream = subscribe(&addr, from(&follower)).await.unwrap();
    follower.round(&mut stream).await;
    assert_eq!(follower.last_resets, vec!["a".to_string(), "b".into()], "a first round is a snapshot of each table");
    assert_eq!(follower.tables["a"], exported(&client, "a").await);
    assert_eq!(follower.tables["b"], exported(&client, "b").await);
    assert!(!follower.tables.contains_key("w"), "dense tables are not streamed");

    // Updates, new rows and deletions arrive as deltas, not snapshots.
    train(&client, "a", &(1_900..2_300).collect::<Vec<_>>(), 0.3).await;
    assert_eq!(client.delete_keys("a", &[5, 6, 7, 99_999]).await.unwrap(), 3);
    let seq = cut(&client).await;
    follower.catch_up(&mut stream, seq).await;
    assert!(follower.last_resets.is_empty(), "{:?}", follower.last_resets);
    assert_eq!(follower.tables["a"], exported(&client, "a").await);
    assert!(!follower.tables["a"].contains_key(&5));
    assert_eq!(follower.tables["a"].len(), 2_297);
    assert_eq!(follower.tables["b"], exported(&client, "b").await);

    // A quiet round sends nothing but its watermark.
    follower.round(&mut stream).await;
    assert_eq!(follower.last_rows, 0);

    // A broken stream resumes from the last watermark: changes only.
    drop(stream);
    train(&client, "b", &[600, 601, 10_000], 0.5).await;
    let mut stream = subscribe(&addr, from(&follower)).await.unwrap();
    follower.round(&mut stream).await;
    assert!(follower.last_resets.is_empty());
    assert_eq!(follower.last_rows, 3, "only the three changed rows");
    assert_eq!(follower.tables["b"], exported(&client, "b").await);

    // A table created meanwhile is sent whole.
    client.create_table(&spec("c"), None).await.unwrap();
    train(&client, "c", &[1, 2, 3], 0.1).await;
    let seq = cut(&client).await;
    follower.catch_up(&mut stream, seq).await;
    assert_eq!(follower.tables["c"], exported(&client, "c").await);

    // Another stream's position means nothing here: a snapshot again.
    let stranger = Follower { stream: follower.stream ^ 1, watermark: follower.watermark, ..Default::default() };
    let mut other = subscribe(&addr, from(&stranger)).await.unwrap();
    let mut stranger = stranger;
    stranger.round(&mut other).await;
    assert_eq!(stranger.last_resets.len(), 3);
    assert_eq!(stranger.tables, follower.tables);
}

#[tokio::test]
async fn a_follower_behind_the_log_is_sent_a_snapshot_and_slots_filter_keys() {
    // 16 shards x 16 entries: a few hundred distinct changes overflow every shard's log.
    let (addr, _stop) = start(256).await;
    let client = PsClient::connect_one(&addr).await.unwrap();
    client.create_table(&spec("a"), None).await.unwrap();
    train(&client, "a", &(0..100).collect::<Vec<_>>(), 0.1).await;
    let slots = [1u32, 3];
    let mut follower = Follower::default();
    let request =
        v1::SubscribeDeltasRequest { num_slots: 8, slots: slots.to_vec(), interval_ms: 60_000, ..Default::default() };
    let mut stream = subscribe(&addr, request.clone()).await.unwrap();
    follower.round(&mut stream).await;
    let mine = |rows: &BTreeMap<u64, Vec<f32>>| -> BTreeMap<u64, Vec<f32>> {
        rows.iter().filter(|(k, _)| slots.contains(&slot_of(**k, 8))).map(|(k, v)| (*k, v.clone())).collect()
    };
    assert!(!follower.tables["a"].is_empty());
    assert_eq!(follower.tables["a"], mine(&exported(&client, "a").await));
    drop(stream);

    train(&client, "a", &(0..5_000).collect::<Vec<_>>(), 0.2).await;
    let mut stream = subscribe(
        &addr,
        v1::SubscribeDeltasRequest { stream_id: follower.stream, from_seq: follower.watermark, ..request },
    )
    .await
    .unwrap();
    follower.round(&mut stream).await;
    assert_eq!(follower.last_resets, vec!["a".to_string()], "the log no longer reaches back: resync");
    assert_eq!(follower.tables["a"], mine(&exported(&client, "a").await));
}

#[tokio::test]
async fn bad_subscriptions_are_refused_with_the_right_code() {
    let (addr, _stop) = start(1 << 16).await;
    let client = PsClient::connect_one(&addr).await.unwrap();
    client.create_table(&spec("a"), None).await.unwrap();
    client.create_table(&TableSpec::dense("w", 2, Optimizer::Sgd { learning_rate: 0.1 }), None).await.unwrap();
    let cases = [
        (v1::SubscribeDeltasRequest { tables: vec!["nope".into()], ..Default::default() }, Code::NotFound, "nope"),
        (
            v1::SubscribeDeltasRequest { tables: vec!["a".into(), "a".into()], ..Default::default() },
            Code::InvalidArgument,
            "twice",
        ),
        (
            v1::SubscribeDeltasRequest { num_slots: 8, slots: vec![8], ..Default::default() },
            Code::InvalidArgument,
            "slot 8",
        ),
        (v1::SubscribeDeltasRequest { slots: vec![0], ..Default::default() }, Code::InvalidArgument, "num_slots"),
        (v1::SubscribeDeltasRequest { num_slots: u32::MAX, ..Default::default() }, Code::InvalidArgument, "num_slots"),
    ];
    for (request, code, says) in cases {
        let status = subscribe(&addr, request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(status.message().contains(says), "{request:?}: {}", status.message());
    }
    let status = subscribe(&addr, v1::SubscribeDeltasRequest { tables: vec!["w".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok, "a dense table has no deltas");

    let stream = client.cut_deltas().await.unwrap()[0];
    let ahead = v1::SubscribeDeltasRequest { stream_id: stream.0, from_seq: stream.1 + 5, ..Default::default() };
    let status = subscribe(&addr, ahead).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ahead"), "{}", status.message());

    let (off, _stop_off) = start(0).await;
    let status = subscribe(&off, v1::SubscribeDeltasRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--delta-log-keys 0"), "{}", status.message());

    // Cuts increase, and the stream id is stable for one server and differs between two.
    let (c1, c2) = (client.cut_deltas().await.unwrap()[0], client.cut_deltas().await.unwrap()[0]);
    assert_eq!(c1.0, c2.0);
    assert!(c2.1 > c1.1);
    let other = PsClient::connect_one(&off).await.unwrap().cut_deltas().await.unwrap()[0];
    assert_ne!(other.0, c1.0);
}

/// Reads a `ReadCheckpoints` stream to its last message into per-table rows (the follower's
/// rules: a reset drops the table's rows).
async fn read_chain(client: &PsClient, after: u64, upto: u64, slots: &[u32]) -> Result<Follower, tonic::Status> {
    let request = v1::ReadCheckpointsRequest {
        after_id: after,
        upto_id: upto,
        num_slots: if slots.is_empty() { 0 } else { 64 },
        slots: slots.to_vec(),
    };
    let mut stream = match client.read_checkpoints(0, request).await {
        Ok(s) => s,
        Err(ember_client::ClientError::Rpc { status, .. }) => return Err(status),
        Err(e) => panic!("{e}"),
    };
    let mut f = Follower::default();
    f.round(&mut stream).await;
    assert_eq!(f.watermark, upto, "the last message carries the checkpoint read up to");
    Ok(f)
}

#[tokio::test]
async fn a_checkpoint_chain_streams_the_weights_it_holds_filtered_by_slot() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = Arc::new(Store::new(StoreConfig { shard_bits: 4, ..StoreConfig::default() }));
    let checkpoints = Arc::new(ember_store::Checkpointer::open(dir.path()).unwrap());
    let config = ServeConfig { checkpoints: Some(checkpoints), ..ServeConfig::default() };
    tokio::spawn(serve(listener, store, config, std::future::pending()));
    let client = PsClient::connect_one(&addr).await.unwrap();
    client.create_table(&spec("a"), None).await.unwrap();
    train(&client, "a", &(0..1_000).collect::<Vec<_>>(), 0.1).await;
    let full = client.checkpoint(true, 1).await.unwrap()[0].id;
    let at_full = exported(&client, "a").await;
    train(&client, "a", &(500..1_500).collect::<Vec<_>>(), 0.2).await;
    client.delete_keys("a", &[1, 2]).await.unwrap();
    let incr = client.checkpoint(false, 2).await.unwrap()[0].id;
    let at_incr = exported(&client, "a").await;
    train(&client, "a", &(0..1_500).collect::<Vec<_>>(), 0.3).await;

    let whole = read_chain(&client, 0, incr, &[]).await.unwrap();
    assert_eq!(whole.tables["a"], at_incr, "the chain's rows, not the live ones");
    assert_eq!(whole.last_resets, vec!["a".to_string()], "a full checkpoint resets the table");
    assert_eq!(read_chain(&client, 0, full, &[]).await.unwrap().tables["a"], at_full);
    let only_incr = read_chain(&client, full, incr, &[]).await.unwrap();
    assert!(only_incr.last_resets.is_empty(), "holding the full: only the incremental, no reset");
    assert!(only_incr.tables["a"].len() < at_incr.len());
    let half = read_chain(&client, 0, incr, &(0..32).collect::<Vec<_>>()).await.unwrap();
    let want: BTreeMap<u64, Vec<f32>> = at_incr.into_iter().filter(|(k, _)| slot_of(*k, 64) < 32).collect();
    assert_eq!(half.tables["a"], want);

    let err = read_chain(&client, 0, 99, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let err = read_chain(&client, 0, 0, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let (plain, _stop) = start(1 << 10).await;
    let err = read_chain(&PsClient::connect_one(&plain).await.unwrap(), 0, 1, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "a server without --data-dir has no checkpoints");
}
