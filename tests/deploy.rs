//! The container image (deploy/Dockerfile) against the binary it ships. No container engine is
//! needed (there is none on these machines): the Dockerfile is read, and `ldd` runs on the
//! binary this test build made (the same crate graph and link flags as `make release`).
//! - The runtime stage is non-root and ships only the binary `make release` writes.
//! - Every shared library the binary needs is one the runtime stage provides (its `# provides:`
//!   line), so the image cannot fail at start with a missing library.

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
