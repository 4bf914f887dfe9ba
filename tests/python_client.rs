//! The Python client (clients/python) against live processes, TLS and role tokens on.
//!
//! scripts/python-client.sh installs the package the way a user does (`pip install
//! ./clients/python`, which generates the gRPC modules from proto/), then clients/python/tests
//! runs with unittest against:
//! - an `ember serve` node with TLS and a token file, serving a DeepFM trained here; its expected
//!   answers are `ember predict`'s on the same rows;
//! - two `ember ps` servers with TLS and a token file, whose rows the Rust client pushed and
//!   looked up (slots round-robin over both, so a Python routing error reads the wrong server).

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use ember_client::{Credentials, PsClient, ShardMap};
use ember_core::{Optimizer, TableSpec};
use ember_proto::tls::ClientTls;

mod support;

use support::pki::{pki, write, TOKENS};
use support::{ember, start_one};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Server flags: TLS on the port (no client certificates) and role tokens.
fn secured(args: &[&str], pki: &support::pki::Pki, tokens: &std::path::Path) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for (flag, path) in [("--tls-cert", &pki.cert), ("--tls-key", &pki.key), ("--auth-tokens", &tokens.to_path_buf())] {
        all.push(flag.to_string());
        all.push(path.display().to_string());
    }
    all
}

fn start_secured(
    args: &[&str],
    pki: &support::pki::Pki,
    tokens: &std::path::Path,
    prefix: &str,
) -> (support::Proc, String) {
    let args = secured(args, pki, tokens);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start_one(&refs, prefix)
}

/// Creates a table on two servers through the Rust client, pushes a gradient to every key and
/// returns what a reader looks up: the expected answers of the Python client.
async fn rows_on_two_servers(servers: &[String], pki: &support::pki::Pki) -> serde_json::Value {
    let creds = |token: &str| {
        let tls = ClientTls::load(&pki.ca, None, None).unwrap();
        Credentials::none().with_tls(Some(tls)).with_token(Some(token)).unwrap()
    };
    let map = || ShardMap::round_robin(servers.to_vec(), 1024).unwrap();
    let worker = PsClient::connect(map(), &creds("worker-token-0123456789")).await.unwrap();
    worker.create_table(&TableSpec::sparse("emb", 4, Optimizer::Sgd { learning_rate: 0.5 }), None).await.unwrap();
    let mut keys: Vec<u64> = (0..300).collect();
    keys.extend([u64::MAX, 1 << 63, 0xdead_beef_cafe]);
    let pulled = worker.pull("emb", &keys).await.unwrap();
    let grads: Vec<f32> = (0..keys.len() * 4).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    worker.push("emb", &keys, &grads, &pulled.clock).await.unwrap();
    let reader = PsClient::connect(map(), &creds("reader-token-0123456789")).await.unwrap();
    let looked = reader.lookup("emb", &keys).await.unwrap();
    assert!(looked.missing.iter().all(|m| !m), "every key has a row");
    // Each server holds only its slots' keys: asking the wrong one reads initializer values.
    let first_only = PsClient::connect(ShardMap::single(servers[0].clone()), &creds("reader-token-0123456789"))
        .await
        .unwrap()
        .lookup("emb", &keys)
        .await
        .unwrap();
    let elsewhere = first_only.missing.iter().filter(|m| **m).count();
    assert!(elsewhere > 100 && elsewhere < 200, "about half the keys live on the second server: {elsewhere}");
    let rows: Vec<Vec<f32>> = looked.values.chunks(looked.dim).map(<[f32]>::to_vec).collect();
    serde_json::json!({ "table": "emb", "keys": keys, "rows": rows })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_predicts_and_looks_up_over_tls_with_tokens() {
    let trained = support::serving::train();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tokens = write(dir.path(), "tokens", TOKENS);
    let models = trained.models.display().to_string();
    // Serving: TLS and tokens on its port; its own lookups go to the (plaintext) training server.
    let (_serve, serving) = start_secured(
        &["serve", "--listen", "127.0.0.1:0", "--model-dir", &models, "--ps", &trained.ps],
        &pki,
        &tokens,
        "ember serve listening on",
    );
    let expected = dir.path().join("expected.txt");
    let ca = pki.ca.display().to_string();
    let test_rows = trained.test_data.display().to_string();
    ember(&[
        "predict",
        "--serving",
        &serving,
        "--data",
        &test_rows,
        "--out",
        expected.to_str().unwrap(),
        "--tls-ca",
        &ca,
        "--token",
        "serving-token-0123456789",
    ]);
    let mut servers = Vec::new();
    let mut procs = Vec::new();
    for name in ["ps-a", "ps-b"] {
        let data = dir.path().join(name).display().to_string();
        let (p, addr) = start_secured(
            &["ps", "--listen", "127.0.0.1:0", "--data-dir", &data],
            &pki,
            &tokens,
            "ember ps listening on",
        );
        procs.push(p);
        servers.push(addr);
    }
    let lookups = dir.path().join("lookups.json");
    std::fs::write(&lookups, rows_on_two_servers(&servers, &pki).await.to_string()).unwrap();

    let install = Command::new("scripts/python-client.sh").current_dir(ROOT).output().unwrap();
    assert!(install.status.success(), "pip install ./clients/python: {}", String::from_utf8_lossy(&install.stderr));
    let python = String::from_utf8(install.stdout).unwrap().trim().to_string();
    let out = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s", "clients/python/tests"])
        .current_dir(ROOT)
        .env("EMBER_TEST_SERVING", &serving)
        .env("EMBER_TEST_ROWS", &test_rows)
        .env("EMBER_TEST_EXPECTED", &expected)
        .env("EMBER_TEST_PS", servers.join(","))
        .env("EMBER_TEST_LOOKUPS", &lookups)
        .env("EMBER_TEST_CA", &ca)
        .env("EMBER_TEST_TOKENS", &tokens)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "the Python client's tests failed:\n{report}");
    assert!(report.contains("Ran 13 tests") && report.contains("\nOK"), "{report}");
}
