//! Serving through embedding replicas, as real processes: `ember ps` holding a trained DeepFM,
//! two `ember replica` processes following it, and `ember serve --replicas` in front of them.
//! Predictions equal training's; a replica killed with SIGKILL under load costs no request (the
//! other answers: retries and backup requests are counted); the restarted replica maps its
//! segments, catches up and serves the same rows as its twin; the training server gets no
//! lookups from serving.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use ember_client::{HedgePolicy, ReplicaSet, ServingClient};
use ember_proto::v1::{self, replica_client::ReplicaClient};

mod support;

use support::serving::{samples, train};
use support::{counter, ember, http_get, start, start_one, Proc};

fn replica(ps: &str, dir: &Path, listen: &str) -> (Proc, String) {
    start_one(
        &["replica", "--ps", ps, "--dir", dir.to_str().unwrap(), "--listen", listen, "--interval-ms", "50"],
        "ember replica listening on ",
    )
}

async fn ready(addr: &str) -> v1::ReplicaStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = ReplicaClient::connect(format!("http://{addr}")).await {
            if let Ok(s) = c.status(v1::ReplicaStatusRequest {}).await {
                let s = s.into_inner();
                if s.ready {
                    return s;
                }
            }
        }
        assert!(Instant::now() < deadline, "replica {addr} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One replica's answer for `keys`, read alone.
async fn rows_of(addr: &str, table: &str, keys: &[u64]) -> (Vec<u32>, Vec<bool>) {
    let (endpoints, none) = ([addr.to_string()], Default::default());
    let set = ReplicaSet::connect(&endpoints, &none, HedgePolicy::default(), Duration::from_secs(60)).await.unwrap();
    set.wait_ready(Duration::from_secs(10)).await.unwrap();
    let rows = set.lookup(table, keys).await.unwrap();
    (rows.values.iter().map(|v| v.to_bits()).collect(), rows.missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_through_two_replicas_survives_a_sigkill_and_the_restarted_replica_catches_up() {
    let t = tokio::task::spawn_blocking(train).await.unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dirs.path().join("a"), dirs.path().join("b"));
    let (mut proc_a, a) = replica(&t.ps, &dir_a, "127.0.0.1:0");
    let (_proc_b, b) = replica(&t.ps, &dir_b, "127.0.0.1:0");
    ready(&a).await;
    ready(&b).await;
    let lookups_before = counter(&http_get(&t.ps_metrics), "ember_ps_requests_total", &["method=\"lookup\""]);

    let (_serve, found) = start(
        &[
            "serve",
            "--replicas",
            &format!("{a},{b}"),
            "--model-dir",
            t.models.to_str().unwrap(),
            "--cache-ttl-ms",
            "0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &["ember serve listening on ", "ember serve metrics on "],
    );
    let (grpc, serve_metrics) = (found[0].clone(), found[1].clone());
    let client = ServingClient::connect(&grpc, &Default::default()).await.unwrap();

    // The replicas hold the trained rows: predictions equal training's own.
    let all = samples(&t.test_data, t.test_probs.len());
    let got = client.predict("", all.clone()).await.unwrap().probabilities;
    for (i, (g, w)) in got.iter().zip(&t.test_probs).enumerate() {
        assert!((g - w).abs() < 1e-5, "row {i}: serving {g} vs training {w}");
    }

    // Load from three tasks; replica a is SIGKILLed half-way.
    let batch = samples(&t.test_data, 32);
    let until = Instant::now() + Duration::from_secs(3);
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (client, batch) = (client.clone(), batch.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u32, Vec::new());
                while Instant::now() < until {
                    match client.predict("", batch.clone()).await {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    proc_a.0.kill().unwrap();
    proc_a.0.wait().unwrap();
    let mut answered = 0;
    for task in load {
        let (ok, errors) = task.await.unwrap();
        assert!(errors.is_empty(), "predictions failed when a replica died: {errors:?}");
        answered += ok;
    }
    assert!(answered > 10, "the load ran: {answered} requests");
    let metrics = http_get(&serve_metrics);
    let failovers = counter(&metrics, "ember_replica_client_requests_total", &["kind=\"retry\""])
        + counter(&metrics, "ember_replica_client_requests_total", &["kind=\"backup\""]);
    assert!(failovers > 0.0, "the dead replica's lookups went to its twin:\n{metrics}");
    assert_eq!(counter(&metrics, "ember_replica_client_failures_total", &[]), 0.0);
    let lookups_after = counter(&http_get(&t.ps_metrics), "ember_ps_requests_total", &["method=\"lookup\""]);
    assert_eq!(lookups_after, lookups_before, "serving sent no lookup to the training server");

    // The killed replica restarts on its address and directory, maps its segments, catches up,
    // and serves the same rows as its twin.
    let (_proc_a, a2) = replica(&t.ps, &dir_a, &a);
    assert_eq!(a2, a);
    let status = ready(&a).await;
    assert!(status.tables.iter().all(|t| t.segment_rows > 0), "restarted from its segments: {status:?}");
    let ps = ember_client::PsClient::connect_one(&t.ps).await.unwrap();
    for table in &status.tables {
        let (_, keys, values) = ps.export(&table.name).await.unwrap();
        assert!(!keys.is_empty(), "{}", table.name);
        let (rows_a, missing) = rows_of(&a, &table.name, &keys).await;
        assert!(missing.iter().all(|m| !m));
        assert_eq!(rows_a, rows_of(&b, &table.name, &keys).await.0, "{}: the twins agree", table.name);
        assert_eq!(rows_a, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "and hold the server's rows");
    }
    let got = client.predict("", all).await.unwrap().probabilities;
    for (g, w) in got.iter().zip(&t.test_probs) {
        assert!((g - w).abs() < 1e-5);
    }
}

/// Waits until `client` answers `batch` with `version`, returns the probabilities.
async fn answer_of(client: &ServingClient, batch: &[v1::Sample], version: u64) -> Vec<f32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.predict("", batch.to_vec()).await {
            if r.version == version {
                return r.probabilities;
            }
        }
        assert!(Instant::now() < deadline, "version {version} never answered");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn bits(p: &[f32]) -> Vec<u32> {
    p.iter().map(|x| x.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_predicts_with_the_versions_own_sparse_rows_bit_for_bit_while_training_goes_on() {
    let t = tokio::task::spawn_blocking(train).await.unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let models = t.models.to_str().unwrap();
    let (_replica, r) = start_one(
        &[
            "replica",
            "--ps",
            &t.ps,
            "--dir",
            dirs.path().join("r").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--interval-ms",
            "50",
            "--model-dir",
            models,
            "--keep-versions",
            "10",
        ],
        "ember replica listening on ",
    );
    let dir = ember_model::ModelDir::new(&t.models);
    let first = dir.current().unwrap().unwrap();
    let serve = |freshness: &'static str| {
        let args = ["serve", "--replicas", &r, "--model-dir", models, "--freshness", freshness];
        start_one(&[&args[..], &["--cache-ttl-ms", "0", "--poll-ms", "20"]].concat(), "ember serve listening on ")
    };
    let ((_p, pinned), (_l, latest)) = (serve("pinned"), serve("latest"));
    let none = Default::default();
    let (pinned, latest) =
        (ServingClient::connect(&pinned, &none).await.unwrap(), ServingClient::connect(&latest, &none).await.unwrap());
    let batch = samples(&t.test_data, 64);
    let recorded = answer_of(&pinned, &batch, first).await;

    // Training goes on: every row of every table moves.
    let ps = ember_client::PsClient::connect_one(&t.ps).await.unwrap();
    for spec in ps.list_tables().await.unwrap().into_iter().filter(|s| s.kind == v1::TableKind::Sparse as i32) {
        let (dim, keys, _) = ps.export(&spec.name).await.unwrap();
        let pulled = ps.pull(&spec.name, &keys).await.unwrap();
        ps.push(&spec.name, &keys, &vec![0.7; keys.len() * dim], &pulled.clock).await.unwrap();
    }
    // The node following the latest rows sees it within a second; the pinned one never does.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bits(&answer_of(&latest, &batch, first).await) == bits(&recorded) {
        assert!(Instant::now() < deadline, "the latest rows never reached predictions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bits(&answer_of(&pinned, &batch, first).await), bits(&recorded), "pinned: only what was published");

    // A new version, published with the sparse rows as they are now (a checkpoint of them).
    let ids: Vec<u64> = ps.checkpoint(false, 1).await.unwrap().iter().map(|c| c.id).collect();
    let mut m = dir.load(first).unwrap();
    m.manifest.sparse_checkpoints = ids;
    let second = dir.publish(m.manifest, &m.dense, 10).unwrap();
    let moved = answer_of(&pinned, &batch, second).await;
    assert_ne!(bits(&moved), bits(&recorded), "version {second} holds the moved rows");
    answer_of(&latest, &batch, second).await;

    // Roll back: both nodes predict exactly what first predicted, although the rows moved on.
    ember(&["model", "rollback", "--model-dir", models, "--to", &first.to_string()]);
    assert_eq!(bits(&answer_of(&pinned, &batch, first).await), bits(&recorded), "pinned node after the rollback");
    assert_eq!(bits(&answer_of(&latest, &batch, first).await), bits(&recorded), "latest node after the rollback");
    let status = ReplicaClient::connect(format!("http://{r}")).await.unwrap();
    let versions = status.clone().status(v1::ReplicaStatusRequest {}).await.unwrap().into_inner().versions;
    assert!(versions.contains(&first) && versions.contains(&second), "{versions:?}");
}
