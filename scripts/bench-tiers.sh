#!/usr/bin/env bash
# The DRAM/SSD tier measured against the same server kept all in DRAM, in one run:
# pull throughput at several hot-hit rates, RSS against the budget, every row read back and
# checked (after the pulls: still its initial values; after a kill and restart: the same rows as
# at the last checkpoint), checkpoint write and restore times and sizes (full vs incremental).
#
# Usage: scripts/bench-tiers.sh [KEYS=50000000] [BUDGET=1GiB] [SECONDS=10] [OUT=/tmp/ember-tiers]
# Needs ~KEYS x 500 bytes of free disk under OUT (the cold tier and two full checkpoints).
# Malloc settings in the environment (MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_) reach both servers.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${1:-50000000}"
BUDGET="${2:-1GiB}"
SECONDS_EACH="${3:-10}"
OUT="${4:-/tmp/ember-tiers}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
rm -rf "$OUT" && mkdir -p "$OUT"
echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

PS_PID=""
cleanup() { [ -n "$PS_PID" ] && kill -9 "$PS_PID" 2>/dev/null || true; }
trap cleanup EXIT

# start_ps NAME [ps flags...]: starts a ps-server, sets PS_PID and ADDR.
start_ps() {
  local name="$1"; shift
  "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/$name" --checkpoint-every 0 "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  PS_PID=$!
  # Up to 10 min: a restart restores its checkpoints before it listens, and 50M tiered rows
  # took longer than a minute.
  for _ in $(seq 1 6000); do
    kill -0 "$PS_PID" 2>/dev/null || break
    ADDR=$(sed -n 's/^ember ps listening on //p' "$OUT/$name.out")
    [ -n "$ADDR" ] && return 0
    sleep 0.1
  done
  echo "ps $name did not start" >&2; exit 1
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PS_PID/status"; }

bench() { # bench LABEL [bench flags...]   (RUN_SECONDS overrides the run length)
  local label="$1"; shift
  local json
  json=$("$EMBER" bench ps --target "$ADDR" --keys "$KEYS" --dim 16 --batch 4096 --concurrency 4 \
    --seconds "${RUN_SECONDS:-$SECONDS_EACH}" --json "$@")
  echo "{\"run\":\"$label\",\"rss_mb\":$(rss_mb),\"bench\":$json}"
}

# pulls: the same three key distributions on each server; zipf 1.1 is mostly hot, zipf 0.9
# less so, uniform mostly cold on a tiered server whose budget holds a small part of the keys.
pulls() {
  local tag="$1"
  bench "$tag-preload+zipf1.1" --op pull --dist zipf --zipf-s 1.1
  bench "$tag-zipf1.1" --op pull --dist zipf --zipf-s 1.1 --no-preload
  bench "$tag-zipf0.9" --op pull --dist zipf --zipf-s 0.9 --no-preload
  bench "$tag-uniform" --op pull --dist uniform --no-preload
}

# verify [flags...]: reads every key back (read-only) and prints the JSON report; with
# --expect-initial it fails the script if any row is missing or changed.
verify() {
  "$EMBER" bench ps --target "$ADDR" --keys "$KEYS" --dim 16 --batch 4096 --concurrency 4 --op verify --json "$@"
}

# during_checkpoint TAG: Zipf 1.1 pulls for 3 x SECONDS with a full checkpoint taken 2 s in, so
# the latency percentiles show whether the checkpoint pauses the pulls.
during_checkpoint() {
  local tag="$1" out="$OUT/$1-during.json" ck bench_pid
  "$EMBER" bench ps --target "$ADDR" --keys "$KEYS" --dim 16 --batch 4096 --concurrency 4 \
    --seconds "$((SECONDS_EACH * 3))" --json --op pull --dist zipf --zipf-s 1.1 --no-preload >"$out" &
  bench_pid=$!
  sleep 2
  ck=$("$EMBER" checkpoint --ps "$ADDR" --full --json)
  wait "$bench_pid"
  echo "{\"run\":\"$tag-zipf1.1-during-full-checkpoint\",\"rss_mb\":$(rss_mb),\"checkpoint\":$ck,\"bench\":$(cat "$out")}"
}

checkpoints() {
  local tag="$1" name="$2" flags=("${@:3}")
  local full incr before after
  full=$("$EMBER" checkpoint --ps "$ADDR" --full --json)
  RUN_SECONDS=2 bench "$tag-push-zipf1.1" --op push --dist zipf --zipf-s 1.1 --no-preload >/dev/null
  incr=$("$EMBER" checkpoint --ps "$ADDR" --json)
  # Nothing writes between the incremental checkpoint and the kill, so the restored rows must
  # equal these, bit for bit (same digest, none missing).
  before=$(verify)
  kill -9 "$PS_PID"; wait "$PS_PID" 2>/dev/null || true
  local started restored_ms
  started=$(date +%s%N)
  start_ps "$name" "${flags[@]}"
  restored_ms=$(( ($(date +%s%N) - started) / 1000000 ))
  after=$(verify)
  echo "{\"run\":\"$tag-checkpoints\",\"full\":$full,\"incremental\":$incr,\"restart_to_listening_ms\":$restored_ms,\"rss_after_restore_mb\":$(rss_mb),\"verify_before_kill\":$before,\"verify_after_restore\":$after}"
  python3 - "$before" "$after" <<'PY'
import json, sys
b, a = (json.loads(x) for x in sys.argv[1:])
if a["rows_missing"] or b["rows_missing"] or a["digest"] != b["digest"]:
    sys.exit(f"restored rows differ: before kill {b}, after restore {a}")
PY
  kill -9 "$PS_PID"; wait "$PS_PID" 2>/dev/null || true
  PS_PID=""
}

start_ps tiered --dram-budget "$BUDGET"
pulls tiered
# Pulls only read: every row, wherever the tiers moved it, must still hold its initial values.
echo "{\"run\":\"tiered-verify\",\"rss_mb\":$(rss_mb),\"verify\":$(verify --expect-initial)}"
during_checkpoint tiered
checkpoints tiered tiered --dram-budget "$BUDGET"
rm -rf "${OUT:?}/tiered" # ~3 x 8 GB at 50M keys: the all-DRAM server's checkpoints need the room

start_ps dram
pulls dram
echo "{\"run\":\"dram-verify\",\"verify\":$(verify --expect-initial)}"
during_checkpoint dram
checkpoints dram dram
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
