//! Helpers shared by the process tests: start `ember` subcommands and read what they print.

// Each test binary uses a different subset; a failed unwrap is a failed test.
#![allow(dead_code, clippy::unwrap_used)]

pub mod pki;
pub mod serving;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ember ARGS` and returns what follows each of `prefixes` on its stdout (waiting for
/// all of them, in any order).
pub fn start(args: &[&str], prefixes: &[&str]) -> (Proc, Vec<String>) {
    let mut child = Command::new(EMBER).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = vec![String::new(); prefixes.len()];
    while found.iter().any(String::is_empty) {
        let line = lines.next().unwrap_or_else(|| panic!("{args:?} exited before printing {prefixes:?}")).unwrap();
        for (p, f) in prefixes.iter().zip(&mut found) {
            if let Some(rest) = line.strip_prefix(p) {
                *f = rest.trim().to_string();
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Proc(child), found)
}

/// [`start`] with one prefix.
pub fn start_one(args: &[&str], prefix: &str) -> (Proc, String) {
    let (p, mut found) = start(args, &[prefix]);
    (p, found.remove(0))
}

/// Runs `ember ARGS` to completion, asserts it succeeded, returns its stdout.
pub fn ember(args: &[&str]) -> String {
    let out = Command::new(EMBER).args(args).output().unwrap();
    assert!(out.status.success(), "ember {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `ember train` on `job_text` (written to DIR/NAME.toml), its work under DIR/NAME; returns its
/// report (DIR/NAME-report.json).
pub fn train_report(dir: &std::path::Path, name: &str, job_text: &str) -> serde_json::Value {
    let job = dir.join(format!("{name}.toml"));
    std::fs::write(&job, job_text).unwrap();
    let (workdir, report) = (dir.join(name), dir.join(format!("{name}-report.json")));
    let paths = [&job, &workdir, &report].map(|p| p.to_str().unwrap().to_string());
    ember(&["train", &paths[0], "--workdir", &paths[1], "--report", &paths[2]]);
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// A job's status, as `ember status --json` prints it.
pub fn job_status(scheduler: &str, job: &str) -> serde_json::Value {
    let out = ember(&["status", "--scheduler", scheduler, "--job", job, "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// Polls the job's status until `done` holds for it and returns that status; fails the test once
/// the job failed (unless `done` accepts that) or past `deadline`.
pub fn wait_for(
    scheduler: &str,
    job: &str,
    deadline: std::time::Instant,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let s = job_status(scheduler, job);
        if done(&s) {
            return s;
        }
        assert!(s["state"] != "failed" && std::time::Instant::now() < deadline, "waiting: {s}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The body of `GET url` over plain HTTP/1.1 (`url`: `http://host:port/path`).
pub fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string())
}

/// The sum of a Prometheus counter's series whose labels contain every one of `labels`.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
