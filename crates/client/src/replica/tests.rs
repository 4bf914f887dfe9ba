//! The hedging logic against stand-in replicas on loopback ports (a unit test of the client: the
//! stand-ins answer `Status` and `Lookup` with a chosen delay; the real replica is tested in
//! crates/replica and tests/serving.rs).

use std::sync::atomic::AtomicU32;

use ember_proto::v1::replica_server::{Replica, ReplicaServer};
use tonic::{Request, Response, Status};

use super::*;

/// Answers every key with `[key as f32 + offset]`, after `delay`.
struct StandIn {
    delay: Duration,
    offset: f32,
    lookups: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Replica for StandIn {
    async fn lookup(&self, req: Request<v1::ReplicaLookupRequest>) -> Result<Response<v1::LookupResponse>, Status> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        let keys = req.into_inner().keys;
        let values: Vec<f32> = keys.iter().map(|k| *k as f32 + self.offset).collect();
        Ok(Response::new(v1::LookupResponse {
            dim: 1,
            values: ember_proto::f32s_to_bytes(values),
            version: 0,
            missing: vec![false; keys.len()],
        }))
    }

    async fn status(
        &self,
        _: Request<v1::ReplicaStatusRequest>,
    ) -> Result<Response<v1::ReplicaStatusResponse>, Status> {
        Ok(Response::new(v1::ReplicaStatusResponse { num_slots: 16, ready: true, ..Default::default() }))
    }
}

async fn stand_in(delay: Duration, offset: f32) -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let lookups = Arc::new(AtomicU32::new(0));
    let service = ReplicaServer::new(StandIn { delay, offset, lookups: Arc::clone(&lookups) });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, lookups)
}

fn policy(fixed_ms: u64) -> HedgePolicy {
    HedgePolicy { fixed: Some(Duration::from_millis(fixed_ms)), ..HedgePolicy::default() }
}

#[tokio::test]
async fn a_slow_replica_is_overtaken_by_a_backup_and_a_dead_one_by_a_retry() {
    // The slow one never answers within the test; the lookups finishing at all shows they never
    // wait for it.
    let (slow, slow_calls) = stand_in(Duration::from_secs(600), 0.0).await;
    let (fast, fast_calls) = stand_in(Duration::ZERO, 0.0).await;
    let set =
        ReplicaSet::connect(&[slow, fast], &Credentials::none(), policy(50), Duration::from_secs(60)).await.unwrap();
    set.wait_ready(Duration::from_secs(5)).await.unwrap();
    let keys: Vec<u64> = (0..100).collect();
    for _ in 0..4 {
        let rows = set.lookup("t", &keys).await.unwrap();
        assert_eq!(rows.values, keys.iter().map(|k| *k as f32).collect::<Vec<_>>());
    }
    let stats = set.stats();
    assert_eq!(stats.parts, 4);
    // Rotation starts at the slow one every other lookup: those are hedged and won by the backup
    // (the others may be hedged too if the fast one is slower than the delay on a busy machine).
    assert_eq!((stats.backup_wins, stats.failed), (2, 0), "{stats:?}");
    assert!(stats.hedged >= 2, "{stats:?}");
    assert!(slow_calls.load(Ordering::Relaxed) >= 2);
    assert_eq!(fast_calls.load(Ordering::Relaxed), 4);

    // A replica that refuses connections: the other answers at once, without waiting the delay.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (good, _) = stand_in(Duration::ZERO, 1.0).await;
    let set = ReplicaSet::connect(&[good, dead], &Credentials::none(), policy(1_000), Duration::from_secs(60)).await;
    let set = set.unwrap();
    set.wait_ready(Duration::from_secs(5)).await.unwrap();
    for _ in 0..4 {
        let rows = set.lookup("t", &[7]).await.unwrap();
        assert_eq!(rows.values, vec![8.0]);
    }
    assert_eq!(set.stats().failed, 0);
}

#[tokio::test]
async fn with_no_ready_replica_a_lookup_fails_unavailable_and_names_why() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let set = ReplicaSet::connect(&[dead], &Credentials::none(), HedgePolicy::default(), Duration::from_secs(60)).await;
    let set = set.unwrap();
    let err = set.lookup("t", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable));
    assert!(err.to_string().contains("no replica is ready"), "{err}");
    assert!(set.wait_ready(Duration::from_millis(100)).await.unwrap_err().to_string().contains("not ready"));
}
