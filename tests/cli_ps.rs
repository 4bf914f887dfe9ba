//! End to end through real processes: `ember ps` started as a child process on an ephemeral
//! port, `ember bench ps` run against it, `/metrics` scraped over HTTP, and SIGTERM answered by a
//! clean exit.

// Helpers here are test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EMBER: &str = env!("CARGO_BIN_EXE_ember");

struct PsProcess {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Drop for PsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ember ps` and reads the addresses it prints.
fn start_ps(data_dir: &std::path::Path, extra: &[&str]) -> PsProcess {
    let mut child = Command::new(EMBER)
        .args(["ps", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ember ps");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut grpc, mut metrics) = (String::new(), String::new());
    while grpc.is_empty() {
        let line = lines.next().expect("ember ps exited before listening").unwrap();
        if let Some(addr) = line.strip_prefix("ember ps listening on ") {
            grpc = addr.trim().to_string();
        } else if let Some(url) = line.strip_prefix("ember ps metrics on http://") {
            metrics = url.trim().trim_end_matches("/metrics").to_string();
        }
    }
    assert!(!metrics.is_empty(), "metrics address is printed before the gRPC one");
    PsProcess { child, grpc, metrics }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

fn bench(target: &str, op: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(EMBER)
        .args(["bench", "ps", "--target", target, "--op", op, "--keys", "20000", "--dim", "8", "--batch", "512"])
        .args(["--concurrency", "2", "--seconds", "0.5", "--json"])
        .args(extra)
        .output()
        .expect("run ember bench ps");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("bench prints one JSON object")
}

#[test]
fn ps_process_serves_bench_load_exports_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ps0");
    let mut ps = start_ps(&data_dir, &[]);
    assert!(data_dir.is_dir(), "the data dir is created");

    for (op, dist) in [("pull", "uniform"), ("push", "zipf"), ("lookup", "uniform")] {
        let report = bench(&ps.grpc, op, &["--dist", dist]);
        assert_eq!(report["op"], op);
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["batches"].as_u64().unwrap() > 0, "{report}");
        for field in ["keys_per_sec", "p50_ms", "p99_ms"] {
            assert!(report[field].as_f64().unwrap() > 0.0, "{field} in {report}");
        }
    }

    let metrics = http_get(&ps.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for needle in [
        "ember_ps_requests_total{method=\"pull\",code=\"ok\"}",
        "ember_ps_requests_total{method=\"push\",code=\"ok\"}",
        "ember_ps_keys_total{method=\"lookup\"}",
        "ember_ps_request_duration_seconds",
        "ember_ps_push_staleness",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    let pid = ps.child.id().to_string();
    // The shell builtin, so the test needs no procps.
    assert!(Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = ps.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ember ps did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn bench_reports_server_refusals_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ps = start_ps(dir.path(), &["--max-batch-keys", "100"]);
    let out = Command::new(EMBER)
        .args(["bench", "ps", "--target", &ps.grpc, "--keys", "1000", "--batch", "512", "--seconds", "0.2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bench whose every request is refused fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limit of 100"), "{stderr}");
}
