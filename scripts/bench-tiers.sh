#!/usr/bin/env bash
# The DRAM/SSD tier measured against the same server kept all in DRAM, in one run:
# pull throughput at several hot-hit rates (Zipf keys, and a hot set of KEYS/50 keys mixed with
# uniform ones at 100%, 90% and 50%), measured once right after the bulk load and again after the
# cold tier's compactions have drained and Zipf reads have warmed the hot tier, RSS against the
# budget, every row read back and checked (after the pulls: still its initial values; after a
# kill and restart: the same rows as at the last checkpoint), checkpoint write and restore times
# and sizes (full vs incremental).
#
# Usage: scripts/bench-tiers.sh [KEYS=50000000] [BUDGET=1GiB] [SECONDS=10] [OUT=/tmp/ember-tiers]
# Needs ~KEYS x 500 bytes of free disk under OUT (the cold tier and two full checkpoints).
# Malloc settings in the environment (MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_) reach both servers.
# Stdout: one JSON object per step (also in OUT/results.jsonl); stderr ends with a tiered vs
# all-DRAM table.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${1:-50000000}"
BUDGET="${2:-1GiB}"
SECONDS_EACH="${3:-10}"
OUT="${4:-/tmp/ember-tiers}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
rm -rf "$OUT" && mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
HOT_KEYS=$((KEYS / 50))
echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

PS_PID=""
cleanup() { [ -n "$PS_PID" ] && kill -9 "$PS_PID" 2>/dev/null || true; }
trap cleanup EXIT

# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PS_PID/status"; }

bench() { # bench LABEL [bench flags...]   (RUN_SECONDS overrides the run length)
  local label="$1"; shift
  local json
  json=$("$EMBER" bench ps --target "$ADDR" --keys "$KEYS" --dim 16 --batch 4096 --concurrency 4 \
    --seconds "${RUN_SECONDS:-$SECONDS_EACH}" --json "$@")
  emit "{\"run\":\"$label\",\"rss_mb\":$(rss_mb),\"bench\":$json}"
}

emit() { echo "$1" | tee -a "$RESULTS"; }

# backlog_busy: true while the server's cold tier has flushes or compactions running
# (`ember_ps_cold_tier_backlog`; an all-DRAM server reports none).
backlog_busy() {
  python3 - "$METRICS" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
owed = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
           if l.startswith('ember_ps_cold_tier_backlog{what="running"}'))
sys.exit(0 if owed > 0 else 1)
PY
}

# settle TAG: waits (up to 10 min) until the cold tier has been idle for 3 polls in a row.
# A bulk load leaves RocksDB minutes of compaction on 2 cores, and cold reads are slower until
# it is done, so the runs after this one measure the server as it serves once loaded.
settle() {
  local started idle=0
  started=$(date +%s)
  while [ "$idle" -lt 3 ] && [ $(( $(date +%s) - started )) -lt 600 ]; do
    if backlog_busy; then idle=0; else idle=$((idle + 1)); fi
    sleep 1
  done
  emit "{\"run\":\"$1-settle\",\"seconds\":$(( $(date +%s) - started )),\"idle\":$([ "$idle" -ge 3 ] && echo true || echo false)}"
}

# warm_up TAG: Zipf 1.1 runs (up to 8) until one is less than 5% faster than the one before. The
# bulk load leaves the hot tier holding the last rows loaded; only reads teach it which rows are
# hot (`Shard::heat`), so a tiered server's hit rate and speed keep rising for a while. Every
# warm-up run is in the results; both servers get the same treatment.
warm_up() {
  local tag="$1" previous=0 now i
  for i in $(seq 1 8); do
    now=$(bench "$tag-zipf1.1-warm-up-$i" --op pull --dist zipf --zipf-s 1.1 --no-preload |
      python3 -c 'import json, sys; print(int(json.load(sys.stdin)["bench"]["keys_per_sec"]))')
    [ "$now" -lt $((previous + previous / 20)) ] && break
    previous=$now
  done
}

# pulls: the same key distributions on each server. Zipf 1.1 is mostly hot, zipf 0.9 less so,
# uniform mostly cold on a tiered server whose budget holds a small part of the keys. The hot set
# (KEYS/50 keys, a fraction of the budget) is all hot once read, so its share sets the hit rate:
# 100%, about 90% and about 50% (plus the uniform draws that happen to be hot).
pulls() {
  local tag="$1"
  bench "$tag-preload+zipf1.1" --op pull --dist zipf --zipf-s 1.1
  bench "$tag-zipf1.1-unsettled" --op pull --dist zipf --zipf-s 1.1 --no-preload
  settle "$tag"
  warm_up "$tag"
  bench "$tag-zipf1.1" --op pull --dist zipf --zipf-s 1.1 --no-preload
  RUN_SECONDS=3 bench "$tag-hot-set-warm-up" --op pull --dist hot-set --hot-keys "$HOT_KEYS" --hot-share 1 --no-preload >/dev/null
  for share in 1 0.9 0.5; do
    bench "$tag-hot-set-$share" --op pull --dist hot-set --hot-keys "$HOT_KEYS" --hot-share "$share" --no-preload
  done
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
  emit "{\"run\":\"$tag-zipf1.1-during-full-checkpoint\",\"rss_mb\":$(rss_mb),\"checkpoint\":$ck,\"bench\":$(cat "$out")}"
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
  start_ps "$OUT/$name" "${flags[@]}"
  restored_ms=$(( ($(date +%s%N) - started) / 1000000 ))
  after=$(verify)
  emit "{\"run\":\"$tag-checkpoints\",\"full\":$full,\"incremental\":$incr,\"restart_to_listening_ms\":$restored_ms,\"rss_after_restore_mb\":$(rss_mb),\"verify_before_kill\":$before,\"verify_after_restore\":$after}"
  python3 - "$before" "$after" <<'PY'
import json, sys
b, a = (json.loads(x) for x in sys.argv[1:])
if a["rows_missing"] or b["rows_missing"] or a["digest"] != b["digest"]:
    sys.exit(f"restored rows differ: before kill {b}, after restore {a}")
PY
  kill -9 "$PS_PID"; wait "$PS_PID" 2>/dev/null || true
  PS_PID=""
}

start_ps "$OUT/tiered" --dram-budget "$BUDGET"
pulls tiered
# Pulls only read: every row, wherever the tiers moved it, must still hold its initial values.
emit "{\"run\":\"tiered-verify\",\"rss_mb\":$(rss_mb),\"verify\":$(verify --expect-initial)}"
during_checkpoint tiered
checkpoints tiered tiered --dram-budget "$BUDGET"
rm -rf "${OUT:?}/tiered" # ~3 x 8 GB at 50M keys: the all-DRAM server's checkpoints need the room

start_ps "$OUT/dram"
pulls dram
emit "{\"run\":\"dram-verify\",\"verify\":$(verify --expect-initial)}"
during_checkpoint dram
checkpoints dram dram
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$RESULTS" >&2 <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "bench" in r:
        server, _, what = r["run"].partition("-")
        runs.setdefault(what, {})[server] = r
print(f"{'pulls':36} {'tiered keys/s':>14} {'hot %':>6} {'all-DRAM keys/s':>16} {'ratio':>6} {'tiered RSS MB':>14}")
for what, pair in runs.items():
    t, d = pair.get("tiered"), pair.get("dram")
    if not t or not d:
        continue
    tb, db = t["bench"], d["bench"]
    hits = tb["hot_hits"] + tb["cold_hits"]
    hot = 100 * tb["hot_hits"] / hits if hits else 0
    print(f"{what:36} {tb['keys_per_sec']:>14,.0f} {hot:>6.1f} {db['keys_per_sec']:>16,.0f} "
          f"{tb['keys_per_sec'] / db['keys_per_sec']:>6.2f} {t['rss_mb']:>14}")
PY
