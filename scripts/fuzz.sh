#!/usr/bin/env bash
# Fuzzes Ember's decoders of untrusted input with libFuzzer (cargo-fuzz) and keeps what it finds.
#
#   scripts/fuzz.sh                 every target, 100,000 runs each
#   scripts/fuzz.sh codec 1000000   one target, a million runs
#   FUZZ_SECONDS=120 scripts/fuzz.sh all 100000000   every target for 2 minutes (or the runs)
#
# Needs only the stable toolchain: cargo-fuzz is installed from crates.io if missing, and
# RUSTC_BOOTSTRAP=1 lets stable rustc take the sanitizer flags cargo-fuzz passes. New corpus
# entries land in fuzz/corpus/TARGET (commit them, after `cargo fuzz cmin TARGET`), crashes in
# fuzz/artifacts/TARGET; `make test` replays both (crates/fuzz-targets/tests/replay.rs).
# Prints one line per target: its name, runs, and the end of libFuzzer's final stats.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${2:-100000}"
targets=(reader_criteo reader_libsvm reader_libffm reader_csv job_file ps_request scheduler_request
         serving_request serving_json checkpoint manifest codec)
[ $# -ge 1 ] && [ "$1" != "all" ] && targets=("$1")

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ -d fuzz/corpus ] || cargo run -q -p ember-fuzz-targets --example seeds

export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  # 2 GiB RSS and 10 s per input: an input over either is a finding, like a crash.
  ( cd fuzz && cargo fuzz run "$t" -- -runs="$runs" -max_total_time="${FUZZ_SECONDS:-0}" -rss_limit_mb=2048 \
      -timeout=10 -max_len=65536 ) \
    > "fuzz/logs/$t.log" 2>&1 || { echo "$t: FAILED (fuzz/logs/$t.log)"; tail -30 "fuzz/logs/$t.log"; exit 1; }
  echo "$t: $(grep -E '^Done [0-9]+ runs' "fuzz/logs/$t.log" | tail -1)"
done
