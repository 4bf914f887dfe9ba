//! A replica against real ps-servers on loopback ports (real gRPC both ways, real segment files):
//! it holds exactly the training servers' rows at a cut (checked against `Export`), keeps up
//! while training goes on, restarts by mapping its segments and resuming the stream, fetches a
//! snapshot again when a segment is damaged, and refuses what it must refuse with the right code.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_client::{PsClient, ShardMap};
use ember_core::{slot_of, Optimizer, TableSpec};
use ember_proto::v1::{self, replica_client::ReplicaClient};
use ember_replica::{Replica, ReplicaConfig};
use ember_store::{Store, StoreConfig};
use tokio::sync::oneshot;
use tonic::Code;

async fn start_ps() -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let store = Arc::new(Store::new(StoreConfig { shard_bits: 4, delta_log_keys: 1 << 16, ..StoreConfig::default() }));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ember_ps_server::serve(listener, store, ember_ps_server::ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

struct Running {
    addr: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ember_replica::ReplicaError>>,
}

async fn start_replica(client: &PsClient, config: &ReplicaConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ember_replica::run(listener, client.clone(), config.clone(), async {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

impl Running {
    async fn client(&self) -> ReplicaClient<tonic::transport::Channel> {
        for _ in 0..100 {
            if let Ok(c) = ReplicaClient::connect(self.addr.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the replica at {} never listened", self.addr);
    }

    async fn shut_down(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn config(dir: &Path, slots: Option<Vec<u32>>) -> ReplicaConfig {
    ReplicaConfig {
        dir: dir.to_path_buf(),
        slots,
        interval: Duration::from_millis(20),
        compact_layers: 4,
        compact_every: Duration::from_millis(30),
        ..ReplicaConfig::default()
    }
}

fn spec() -> TableSpec {
    TableSpec::sparse("emb", 4, Optimizer::Adagrad { learning_rate: 0.3, initial_accumulator: 0.1, epsilon: 1e-8 })
}

async fn train(client: &PsClient, keys: &[u64], step: f32) {
    let pulled = client.pull("emb", keys).await.unwrap();
    let grads: Vec<f32> = keys.iter().flat_map(|k| [step, -step, (*k % 7) as f32 * step, 1.0]).collect();
    client.push("emb", keys, &grads, &pulled.clock).await.unwrap();
}

/// Waits until the replica reports ready and has applied every server's cut.
async fn caught_up(replica: &mut ReplicaClient<tonic::transport::Channel>, cuts: &[(u64, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = replica.status(v1::ReplicaStatusRequest {}).await.unwrap().into_inner();
        let applied =
            status.sources.iter().zip(cuts).all(|(s, (stream, seq))| s.stream_id == *stream && s.watermark >= *seq);
        if status.ready && applied {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never caught up: {status:?} vs cuts {cuts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lookup(
    replica: &mut ReplicaClient<tonic::transport::Channel>,
    table: &str,
    keys: &[u64],
) -> Result<(Vec<f32>, Vec<bool>), tonic::Status> {
    let r = replica
        .lookup(v1::ReplicaLookupRequest { table: table.into(), keys: keys.to_vec(), version: 0 })
        .await?
        .into_inner();
    let values = r.values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((values, r.missing))
}

/// The replica's answer for every row the training servers export, and for `absent` keys the
/// training servers' own lookup answer (the initializer's value): equal bit for bit.
async fn assert_same_rows(
    client: &PsClient,
    replica: &mut ReplicaClient<tonic::transport::Channel>,
    absent: &[u64],
    held: impl Fn(u64) -> bool,
) -> usize {
    let (dim, keys, values) = client.export("emb").await.unwrap();
    let exported: BTreeMap<u64, &[f32]> =
        keys.iter().copied().zip(values.chunks_exact(dim)).filter(|(k, _)| held(*k)).collect();
    let keys: Vec<u64> = exported.keys().copied().collect();
    let (got, missing) = lookup(replica, "emb", &keys).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        assert!(!missing[i], "key {key} is missing on the replica");
        let want: Vec<u32> = exported[key].iter().map(|v| v.to_bits()).collect();
        let have: Vec<u32> = got[i * dim..(i + 1) * dim].iter().map(|v| v.to_bits()).collect();
        assert_eq!(have, want, "key {key}");
    }
    let absent: Vec<u64> = absent.iter().copied().filter(|k| held(*k)).collect();
    let (got, missing) = lookup(replica, "emb", &absent).await.unwrap();
    let from_ps = client.lookup("emb", &absent).await.unwrap();
    assert!(missing.iter().all(|m| *m) && from_ps.missing.iter().all(|m| *m));
    assert_eq!(got, from_ps.values, "a key no server has reads as the initializer's value, as on the servers");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holds_the_training_rows_follows_training_and_restarts_from_its_segments() {
    let (a, _stop_a) = start_ps().await;
    let (b, _stop_b) = start_ps().await;
    let map = ShardMap::round_robin(vec![a, b], 64).unwrap();
    let client = PsClient::connect(map.clone(), &Default::default()).await.unwrap();
    client.create_table(&spec(), None).await.unwrap();
    train(&client, &(0..3_000).collect::<Vec<_>>(), 0.1).await;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let running = start_replica(&client, &config).await;
    let mut replica = running.client().await;
    // Training goes on while the replica follows: several rounds, deletions among them.
    for step in 0..10u64 {
        let keys: Vec<u64> = (step * 200..step * 200 + 1_500).collect();
        train(&client, &keys, 0.01 * step as f32).await;
        if step == 5 {
            assert_eq!(client.delete_keys("emb", &[1, 2, 3]).await.unwrap(), 3);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let cuts = client.cut_deltas().await.unwrap();
    caught_up(&mut replica, &cuts).await;
    let absent = [1, 2, 3, 1_000_000, 1_000_001];
    let rows = assert_same_rows(&client, &mut replica, &absent, |_| true).await;
    assert_eq!(rows, 3_300 - 3, "every trained key (0..3300) but the 3 deleted");

    let status = replica.status(v1::ReplicaStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.tables.len(), 1);
    assert!(status.tables[0].segment_rows > 0, "rounds were compacted into segments: {status:?}");
    running.shut_down().await;

    // What a restart finds: every source's segments mapped and the position to resume from.
    let restored = Replica::open(&config, &map).unwrap();
    for (source, (stream, seq)) in restored.sources().iter().zip(&cuts) {
        let p = source.progress();
        assert_eq!((p.stream_id, p.watermark >= *seq), (*stream, true), "{}", source.endpoint);
        assert_eq!(source.tables().len(), 1);
    }
    drop(restored);

    train(&client, &(2_500..4_000).collect::<Vec<_>>(), 0.5).await;
    let running = start_replica(&client, &config).await;
    let mut replica = running.client().await;
    let cuts = client.cut_deltas().await.unwrap();
    caught_up(&mut replica, &cuts).await;
    assert_same_rows(&client, &mut replica, &absent, |_| true).await;
    running.shut_down().await;
}

/// One ps-server of 64 slots whose table holds 2,000 trained rows.
async fn one_trained_server() -> (ShardMap, PsClient, oneshot::Sender<()>) {
    let (a, stop) = start_ps().await;
    let map = ShardMap::round_robin(vec![a], 64).unwrap();
    let client = PsClient::connect(map.clone(), &Default::default()).await.unwrap();
    client.create_table(&spec(), None).await.unwrap();
    train(&client, &(0..2_000).collect::<Vec<_>>(), 0.1).await;
    (map, client, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_is_never_served_the_rows_are_fetched_again() {
    let (map, client, _stop) = one_trained_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let running = start_replica(&client, &config).await;
    caught_up(&mut running.client().await, &client.cut_deltas().await.unwrap()).await;
    running.shut_down().await;

    let segment = walk(dir.path()).into_iter().find(|p| p.extension().is_some_and(|e| e == "seg")).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&segment, bytes).unwrap();
    let restored = Replica::open(&config, &map).unwrap();
    assert!(restored.sources()[0].tables().is_empty(), "a damaged segment is dropped, not mapped");
    assert_eq!(restored.sources()[0].progress().stream_id, 0, "so the stream starts from a snapshot");
    drop(restored);

    let running = start_replica(&client, &config).await;
    let mut replica = running.client().await;
    caught_up(&mut replica, &client.cut_deltas().await.unwrap()).await;
    assert_eq!(assert_same_rows(&client, &mut replica, &[9_999_999], |_| true).await, 2_000);
    running.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_some_slots_serves_only_those_and_refuses_the_rest() {
    let (map, client, _stop) = one_trained_server().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_replica(&client, &config(dir.path(), Some((0..32).collect()))).await;
    let mut replica = running.client().await;
    caught_up(&mut replica, &client.cut_deltas().await.unwrap()).await;

    let held = |k: u64| slot_of(k, 64) < 32;
    let rows = assert_same_rows(&client, &mut replica, &[7_777_777, 7_777_778, 7_777_779], held).await;
    assert!((800..1_200).contains(&rows), "about half the keys: {rows}");
    let status = replica.status(v1::ReplicaStatusRequest {}).await.unwrap().into_inner();
    let overlay_and_segment = status.tables[0].segment_rows + status.tables[0].overlay_rows;
    assert!(overlay_and_segment < 1_300, "only the held slots' rows were sent: {status:?}");

    let foreign = (0..).find(|k| !held(*k)).unwrap();
    let err = lookup(&mut replica, "emb", &[0, foreign]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&format!("slot {}", slot_of(foreign, 64))), "{}", err.message());
    let err = lookup(&mut replica, "nope", &[0]).await.unwrap_err();
    assert_eq!((err.code(), err.message().contains("nope")), (Code::NotFound, true));
    // Without --model-dir no published version is held: asking for one is NotFound naming it.
    let err =
        replica.lookup(v1::ReplicaLookupRequest { table: "emb".into(), keys: vec![0], version: 7 }).await.unwrap_err();
    assert_eq!((err.code(), err.message().contains("version 7")), (Code::NotFound, true), "{}", err.message());
    running.shut_down().await;

    let bad = ReplicaConfig { slots: Some(vec![64]), ..config(dir.path(), None) };
    let err = Replica::open(&bad, &map).unwrap_err();
    assert!(err.to_string().contains("slot 64 is out of range"), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
