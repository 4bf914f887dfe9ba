//! Serving as real processes: `ember ps`, `ember train --ps --model-dir` publishing DeepFM
//! versions, `ember serve` on the model directory, and requests over gRPC (`ember predict` and
//! the typed client) and REST.

// Helpers here are test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ember_client::ServingClient;
use ember_model::ModelDir;
use ember_proto::v1;

mod support;

use support::serving::{samples, train, train_with, Trained};
use support::{ember, start, Proc, EMBER};

fn serve(t: &Trained, extra: &[&str]) -> (Proc, String, String) {
    let (p, addrs) = start(
        &[&["serve", "--ps", &t.ps, "--model-dir", t.models.to_str().unwrap(), "--http-listen", "127.0.0.1:0"], extra]
            .concat(),
        &["ember serve listening on ", "ember serve http on "],
    );
    (p, addrs[0].clone(), addrs[1].clone())
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply[9..12].parse().unwrap();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// Criteo rows as REST instances: I1..I13, C1..C26, empty cells left out.
fn instances(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .take(n)
        .map(|line| {
            let mut obj = serde_json::Map::new();
            for (i, cell) in line.split('\t').skip(1).enumerate() {
                let name = if i < 13 { format!("I{}", i + 1) } else { format!("C{}", i - 12) };
                if !cell.is_empty() {
                    obj.insert(name, serde_json::Value::String(cell.into()));
                }
            }
            serde_json::Value::Object(obj)
        })
        .collect();
    serde_json::json!({ "instances": rows }).to_string()
}

/// A softsync job (2 workers) publishes the model it evaluated: serving's predictions equal
/// training's. The servers may still buffer a partial last round when training ends; the
/// scheduler applies it before the last version is published. (Workers apply it too when they
/// next ask for work, which here is almost always before the publish reads the dense tables, so
/// this test passes without that step as well: it covers the path, not the race.)
#[test]
fn a_softsync_jobs_last_version_is_the_model_it_evaluated() {
    let t = train_with("[cluster]\n        workers = 2\n        [sync]\n        mode = \"softsync\"");
    let (_serve, grpc, _) = serve(&t, &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("preds.txt");
    let args = ["predict", "--serving", &grpc, "--data", t.test_data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    ember(&args);
    let served: Vec<f32> = std::fs::read_to_string(&out).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(served.len(), t.test_probs.len());
    for (i, (a, b)) in served.iter().zip(&t.test_probs).enumerate() {
        assert!((a - b).abs() < 1e-5, "row {i}: serving {a}, training {b}");
    }
}

#[test]
fn serving_predictions_equal_training_predictions_over_grpc_and_rest() {
    let t = train();
    let versions = ember(&["model", "list", "--model-dir", t.models.to_str().unwrap(), "--json"]);
    // Crossings that come while a publish is running merge into the next one, so at least one
    // version is published during the run (not one per 500 rows) and one at its end.
    assert!(versions.lines().count() >= 2, "versions during the run and at its end: {versions}");
    let last: serde_json::Value = serde_json::from_str(versions.lines().last().unwrap()).unwrap();
    assert_eq!(last["rows_trained"], 4500);
    assert_eq!(last["checkpoint"], 4500, "each version names the ps checkpoint taken with it");
    let (_serve, grpc, rest) = serve(&t, &["--max-samples", "100"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("preds.txt");
    let said = ember(&[
        "predict",
        "--serving",
        &grpc,
        "--data",
        t.test_data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "64",
    ]);
    assert!(said.contains("AUC"), "{said}");
    let served: Vec<f32> = std::fs::read_to_string(&out).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(served.len(), t.test_probs.len());
    for (i, (a, b)) in served.iter().zip(&t.test_probs).enumerate() {
        assert!((a - b).abs() < 1e-5, "row {i}: serving {a}, training {b}");
    }

    let (code, body) = http(&rest, "POST", "/v1/models/ctr:predict", &instances(&t.test_data, 5));
    assert_eq!(code, 200, "{body}");
    let preds: Vec<f32> = body["predictions"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
    assert_eq!(preds.len(), 5);
    for (a, b) in preds.iter().zip(&t.test_probs) {
        assert!((a - b).abs() < 1e-5, "REST {a}, training {b}");
    }
    assert!(body["model_version"].as_u64().unwrap() >= 3);

    // Bad requests: named, refused, and the node keeps serving.
    let (code, body) = http(&rest, "POST", "/v1/models/ctr:predict", r#"{"instances": [{"C99": "x"}]}"#);
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("C99"), "{body}");
    let (code, body) = http(&rest, "POST", "/v1/models/ctr:predict", r#"{"instances": [{"I1": "abc"}]}"#);
    assert!(code == 400 && body["error"].as_str().unwrap().contains("not an integer"), "{code} {body}");
    let (code, _) = http(&rest, "POST", "/v1/models/other:predict", &instances(&t.test_data, 1));
    assert_eq!(code, 404, "unknown model");
    let too_many = Command::new(EMBER)
        .args(["predict", "--serving", &grpc, "--data", t.test_data.to_str().unwrap(), "--batch", "200", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("at most 100"));
    let (code, body) = http(&rest, "GET", "/v1/models/ctr", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["fields"].as_array().unwrap().len(), 39);
}

/// The version of every response and the probabilities it gave for the same request.
type Seen = HashMap<u64, Vec<Vec<f32>>>;

async fn hammer(client: ServingClient, samples: Vec<v1::Sample>, until: Instant) -> (Seen, Vec<String>) {
    let (mut seen, mut errors): (Seen, Vec<String>) = Default::default();
    while Instant::now() < until {
        match client.predict("ctr", samples.clone()).await {
            Ok(r) => seen.entry(r.version).or_default().push(r.probabilities),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (seen, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_under_load_without_errors_or_mixes_and_roll_back() {
    let t = tokio::task::spawn_blocking(train).await.unwrap();
    let (_serve, grpc, _) = serve(&t, &["--poll-ms", "20", "--keep-versions", "2"]);
    let client = ServingClient::connect(&grpc, &ember_client::Credentials::none()).await.unwrap();
    let batch = samples(&t.test_data, 16);
    let first = client.status().await.unwrap().version;
    // Bytes that are no PredictRequest: InvalidArgument, not Internal (issue 21, item 8).
    let none = ember_client::Credentials::none();
    let raw = ember_client::raw::call_raw(&grpc, &none, "/ember.v1.Serving/Predict", vec![0x12, 0xff, 0x01]).await;
    assert_eq!(raw.unwrap().unwrap_err().code(), tonic::Code::InvalidArgument);

    // Versions whose output layer differs, so every version predicts differently.
    let models = ModelDir::new(&t.models);
    let until = Instant::now() + Duration::from_secs(4);
    let load: Vec<_> = (0..3).map(|_| tokio::spawn(hammer(client.clone(), batch.clone(), until))).collect();
    let mut published = vec![first];
    for i in 1..=5u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut m = models.load(first).unwrap();
        let last = m.dense.len() - 1;
        m.dense[last].b[0] += 0.2 * i as f32;
        published.push(models.publish(m.manifest, &m.dense, 10).unwrap());
    }
    let mut seen = Seen::new();
    for task in load {
        let (s, errors) = task.await.unwrap();
        assert!(errors.is_empty(), "requests failed during swaps: {errors:?}");
        for (v, probs) in s {
            seen.entry(v).or_default().extend(probs);
        }
    }
    assert!(seen.len() >= 3, "several versions answered: {:?}", seen.keys());
    let mut answers: HashMap<u64, Vec<f32>> = HashMap::new();
    for (v, all) in &seen {
        assert!(published.contains(v), "version {v} was never published");
        assert!(all.iter().all(|p| p == &all[0]), "version {v} gave different answers to one request");
        answers.insert(*v, all[0].clone());
    }
    let distinct: std::collections::HashSet<Vec<u32>> =
        answers.values().map(|p| p.iter().map(|x| x.to_bits()).collect()).collect();
    assert_eq!(distinct.len(), answers.len(), "each version answers as itself, never as a mix");

    // A version whose dense file is truncated is never swapped in; the current one keeps serving.
    let newest = *published.last().unwrap();
    let corrupt_version = newest + 1;
    let corrupt = t.models.join(format!("v{corrupt_version:010}"));
    std::fs::create_dir(&corrupt).unwrap();
    let manifest = std::fs::read_to_string(t.models.join(format!("v{newest:010}/manifest.json"))).unwrap();
    let manifest = manifest.replace(&format!("\"version\": {newest}"), &format!("\"version\": {corrupt_version}"));
    std::fs::write(corrupt.join("manifest.json"), manifest).unwrap();
    std::fs::write(corrupt.join("dense.bin"), b"truncated").unwrap();
    std::fs::write(t.models.join("CURRENT"), format!("{corrupt_version}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client.predict("ctr", batch.clone()).await.unwrap();
    assert_eq!(r.version, newest, "the corrupt version was not swapped in");
    assert_eq!(r.probabilities, answers[&newest]);

    // Rollback to the first version, no longer in memory (keep 2 after five swaps): read again
    // from disk, it answers exactly as it did before.
    ember(&["model", "rollback", "--model-dir", t.models.to_str().unwrap(), "--to", &first.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.predict("ctr", batch.clone()).await.unwrap();
        if r.version == first {
            assert_eq!(r.probabilities, answers[&first]);
            break;
        }
        assert!(Instant::now() < deadline, "rollback to {first} not honoured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.kept_versions.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ps_fails_lookups_fast_or_degrades_to_initializer_values_as_configured() {
    let mut t = tokio::task::spawn_blocking(train).await.unwrap();
    let (_strict, strict, _) = serve(&t, &["--cache-ttl-ms", "0", "--lookup-timeout-ms", "300"]);
    let (_lenient, lenient, _) =
        serve(&t, &["--cache-ttl-ms", "0", "--lookup-timeout-ms", "300", "--on-lookup-failure", "initializer"]);
    let batch = samples(&t.test_data, 8);
    let (strict, lenient) = (
        ServingClient::connect(&strict, &ember_client::Credentials::none()).await.unwrap(),
        ServingClient::connect(&lenient, &ember_client::Credentials::none()).await.unwrap(),
    );
    let before = strict.predict("", batch.clone()).await.unwrap();
    drop(std::mem::replace(&mut t._ps, Proc(Command::new("true").spawn().unwrap())));
    let err = strict.predict("", batch.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    let degraded = lenient.predict("", batch.clone()).await.unwrap();
    assert_eq!(degraded.probabilities.len(), 8);
    assert!(degraded.lookup_misses > before.lookup_misses, "initializer values are counted as misses");
    assert_ne!(degraded.probabilities, before.probabilities);
}

/// Copies model directory `from` to `to`, renaming the model in every version's manifest.
fn copy_model(from: &Path, to: &Path, name: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_model(&path, &target, name);
        } else if path.file_name().unwrap() == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            m["name"] = serde_json::Value::String(name.into());
            std::fs::write(&target, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_serves_several_models_and_versions_named_in_requests() {
    let t = tokio::task::spawn_blocking(train).await.unwrap();
    let other = t._dir.path().join("models-b");
    copy_model(&t.models, &other, "ctr-b");
    let (a, b) = (t.models.to_str().unwrap(), other.to_str().unwrap());
    let (_serve, addrs) = start(
        &[
            "serve",
            "--ps",
            &t.ps,
            "--model-dir",
            a,
            "--model-dir",
            b,
            "--http-listen",
            "127.0.0.1:0",
            "--poll-ms",
            "20",
        ],
        &["ember serve listening on ", "ember serve http on "],
    );
    let client = ServingClient::connect(&addrs[0], &ember_client::Credentials::none()).await.unwrap();
    let batch = samples(&t.test_data, 8);
    let first = client.predict("ctr", batch.clone()).await.unwrap();
    let second = client.predict("ctr-b", batch.clone()).await.unwrap();
    assert_eq!(first.probabilities, second.probabilities, "the same weights under two names");
    assert_eq!(client.model_status("ctr-b").await.unwrap().name, "ctr-b");
    let err = client.predict("", batch.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("ctr-b"), "names the models served: {err}");
    assert_eq!(client.predict("nope", batch.clone()).await.unwrap_err().code(), Some(tonic::Code::NotFound));

    // A new version of "ctr" only; the old one stays loaded and can be asked for by number.
    let models = ModelDir::new(&t.models);
    let mut m = models.load(first.version).unwrap();
    let last = m.dense.len() - 1;
    m.dense[last].b[0] += 0.5;
    let newer = models.publish(m.manifest, &m.dense, 10).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.predict("ctr", batch.clone()).await.unwrap().version != newer {
        assert!(Instant::now() < deadline, "version {newer} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = client.predict_version("ctr", first.version, batch.clone()).await.unwrap();
    assert_eq!((again.version, again.probabilities), (first.version, first.probabilities.clone()));
    assert_ne!(client.predict("ctr", batch.clone()).await.unwrap().probabilities, first.probabilities);
    assert_eq!(client.predict("ctr-b", batch.clone()).await.unwrap().version, second.version, "ctr-b unchanged");
    let err = client.predict_version("ctr", 999, batch.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    assert!(err.to_string().contains("999"), "{err}");

    // The same over REST (TF Serving's paths).
    let rest = &addrs[1];
    let body = instances(&t.test_data, 2);
    let (code, reply) = http(rest, "POST", &format!("/v1/models/ctr/versions/{}:predict", first.version), &body);
    assert_eq!((code, reply["model_version"].as_u64()), (200, Some(first.version)), "{reply}");
    let (code, reply) = http(rest, "POST", "/v1/models/ctr-b:predict", &body);
    assert_eq!((code, reply["model_version"].as_u64()), (200, Some(second.version)), "{reply}");
    assert_eq!(http(rest, "POST", "/v1/models/ctr/versions/999:predict", &body).0, 404);
    assert_eq!(http(rest, "GET", "/v1/models/ctr-b", "").1["name"], "ctr-b");
}
