//! The container image (deploy/Dockerfile) against the binary it ships. No container engine is
//! needed (there is none on these machines): the Dockerfile is read, and `ldd` runs on the
//! binary this test build made (the same crate graph and link flags as `make release`).
//! - The runtime stage is non-root and ships only the binary `make release` writes.
//! - Every shared library the binary needs is one the runtime stage provides (its `# provides:`
//!   line), so the image cannot fail at start with a missing library.
//! - The Kubernetes manifests render, validate and pass checkov, and every command line they give
//!   the binary parses with `--check-config` (scripts/check-deploy.sh, which installs its tools).
//! - `--check-config` loads what the flags name and refuses bad values by name; `ember health`
//!   answers for a live server.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

mod support;

const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");
const MAKEFILE: &str = include_str!("../Makefile");

/// The lines of the stage starting at `FROM ... AS name`, up to the next `FROM`.
fn stage(name: &str) -> Vec<&'static str> {
    let lines: Vec<&str> = DOCKERFILE.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}")))
        .unwrap_or_else(|| panic!("no stage {name}"));
    lines[start..].iter().skip(1).take_while(|l| !l.starts_with("FROM ")).copied().collect()
}

#[test]
fn the_image_ships_the_release_binary_as_a_non_root_user() {
    let build = stage("build");
    assert!(build.contains(&"RUN make release"), "the build stage runs make release: {build:?}");
    assert!(
        MAKEFILE.contains("release: deps\n\t$(CARGO) build --release -p ember-cli"),
        "make release builds ember-cli"
    );
    assert!(build.contains(&"ENV CARGO_TARGET_DIR=/src/target"), "the build's output path is fixed");
    let runtime = stage("runtime");
    assert!(
        runtime.contains(&"COPY --from=build /src/target/release/ember /usr/local/bin/ember"),
        "ships what make release wrote: {runtime:?}"
    );
    let user = runtime.iter().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "non-root: {user}");
    let from = DOCKERFILE.lines().find(|l| l.ends_with(" AS runtime")).unwrap();
    assert!(from.contains("distroless") && from.contains(":nonroot"), "no shell at run time: {from}");
}

#[test]
fn every_library_the_binary_links_is_provided_by_the_runtime_stage() {
    let provides: Vec<&str> = DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix("# provides: "))
        .expect("a # provides: line")
        .split_whitespace()
        .collect();
    let out = Command::new("ldd").arg(support::EMBER).output().expect("ldd (glibc's, in libc-bin) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut linked = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = line.split(" => ").next().unwrap().split_whitespace().next().unwrap();
        let name = path.rsplit('/').next().unwrap();
        if name.starts_with("linux-vdso") {
            continue; // the kernel's, not a file
        }
        assert!(provides.contains(&name), "the binary links {name}, which the runtime stage does not provide: {text}");
        linked.push(name.to_string());
    }
    assert!(linked.iter().any(|l| l == "libstdc++.so.6"), "RocksDB's C++ runtime is linked: {linked:?}");
}

#[test]
fn the_manifests_render_validate_and_every_command_line_parses_with_the_binary() {
    let out = Command::new("scripts/check-deploy.sh")
        .arg(support::EMBER)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("scripts/check-deploy.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "check-deploy failed:\n{stdout}\n{stderr}");
    for overlay in ["dev", "prod"] {
        assert!(stdout.contains(&format!("== {overlay}: ")), "{overlay} rendered: {stdout}");
    }
    assert_eq!(stdout.matches("kubernetes-validate --strict: every object valid").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("Failed checks: 0,").count(), 2, "checkov: {stdout}");
    assert!(stdout.contains("self-test ok: a bad value is refused by name"), "{stdout}");
    // dev: 5 containers; prod: 5 containers and 10 exec probes.
    assert!(stdout.contains("20 command lines checked, 0 refused"), "{stdout}");
}

#[test]
fn check_config_loads_the_files_flags_name_and_refuses_bad_values_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let out =
            Command::new(support::EMBER).args(args).arg("--check-config").envs(env.iter().copied()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let data = dir.path().join("ps").display().to_string();
    let (ok, text) = check(&["ps", "--data-dir", &data, "--dram-budget", "64MiB"], &[]);
    assert!(ok && text.contains("dram budget 64 MiB") && text.contains("tls off"), "{text}");
    assert!(!dir.path().join("ps").exists(), "--check-config touches no data directory");
    let (ok, text) = check(&["ps", "--data-dir", &data, "--dram-budget", "lots"], &[]);
    assert!(!ok && text.contains("--dram-budget"), "{text}");
    // TLS flags from the environment, as the prod overlay sets them: a missing key file is named.
    let missing = dir.path().join("tls.key").display().to_string();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let cert = cert.display().to_string();
    let (ok, text) =
        check(&["ps", "--data-dir", &data], &[("EMBER_TLS_CERT", cert.as_str()), ("EMBER_TLS_KEY", missing.as_str())]);
    assert!(!ok && text.contains("--tls-cert") && text.contains("tls.key"), "{text}");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "admin short\n").unwrap();
    let (ok, text) = check(&["scheduler", "--state-dir", &data], &[("EMBER_AUTH_TOKENS", tokens.to_str().unwrap())]);
    assert!(!ok && text.contains("--auth-tokens") && text.contains(":1:"), "{text}");
    let (ok, text) = check(&["serve", "--model-dir", &data, "--ps", "a:1", "--freshness", "pinned"], &[]);
    assert!(!ok && text.contains("--freshness pinned needs --replicas"), "{text}");
    let (ok, text) = check(&["worker", "--scheduler", "s:1"], &[("EMBER_TOKEN_FILE", missing.as_str())]);
    assert!(!ok && text.contains("--token-file") && text.contains("tls.key"), "{text}");
    let (ok, text) = check(&["worker", "--scheduler", "s:1", "--token-file", &cert], &[]);
    assert!(ok && text.contains("token on"), "a token read from a file: {text}");
    let (ok, text) = check(&["gen-data", "--rows", "1", "--out", &data], &[]);
    assert!(!ok && text.contains("--check-config applies to"), "{text}");
}

#[test]
fn ember_health_answers_for_a_live_server_and_fails_for_a_closed_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (ps, addr) =
        support::start_one(&["ps", "--listen", "127.0.0.1:0", "--data-dir", &data], "ember ps listening on");
    let out = Command::new(support::EMBER)
        .args(["health", "--target", &addr, "--service", "ember.v1.ParameterServer"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING"), "{out:?}");
    let out = Command::new(support::EMBER)
        .args(["health", "--target", &addr, "--service", "ember.v1.Nope"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown service is not serving: {out:?}");
    drop(ps);
    let out = Command::new(support::EMBER).args(["health", "--target", &addr, "--timeout-ms", "500"]).output().unwrap();
    assert!(!out.status.success(), "a closed port fails the probe: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr), "the failure names the target: {out:?}");
}
