#!/usr/bin/env bash
# The swap-spike test at real size (issue 23, item 6). A DeepFM whose sparse table (linear weight
# + 15-wide embedding: rows of dim 16) is grown to ROWS rows; versions that differ by CHANGE rows
# (`ember bench serve --swap-rows`: pushed and checkpointed before each publish, and the version
# names those checkpoints); REPLICAS replicas holding the versions (`--model-dir`); a serving node
# pinned to the published versions (`--freshness pinned`), so every swap makes the replicas read
# CHANGE rows and the node swap sparse and dense together; QPS x 64 for SECONDS with a publish
# every EVERY seconds, everything on this machine's cores.
# Prints as its last line one JSON object: rows, changed_rows_per_version, qps, swaps,
# p99/p999 steady and in swap windows (WINDOW ms after each publish), their ratio, errors,
# versions answered, replica RSS.
#
# Usage: scripts/bench-swap-large.sh [ROWS=5000000] [CHANGE=1000000] [QPS=300] [SECONDS=120] [EVERY=20] [OUT=/tmp/ember-swap-large]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROWS="${1:-5000000}"
CHANGE="${2:-1000000}"
QPS="${3:-300}"
SECONDS_RUN="${4:-120}"
EVERY="${5:-20}"
OUT="${6:-/tmp/ember-swap-large}"
WINDOW="${WINDOW:-5000}"
REPLICAS="${REPLICAS:-2}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
DATA="$ROOT/../shared/data/criteo/train_10k.tsv"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
bench_init

LOG_KEYS=$((ROWS * 2))
PS0=$(start ps0 "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps0" --checkpoint-every 0 \
  --delta-log-keys "$LOG_KEYS")
PS1=$(start ps1 "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps1" --checkpoint-every 0 \
  --delta-log-keys "$LOG_KEYS")
PS="$PS0,$PS1"
sed 's/^embedding_dim = 8/embedding_dim = 15/' "$ROOT/examples/criteo-deepfm.toml" >"$OUT/job.toml"
"$EMBER" train "$OUT/job.toml" --data "$DATA" --ps "$PS" --model-dir "$OUT/models" --workdir "$OUT/train" \
  >"$OUT/train.out" 2>"$OUT/train.log"
echo "training: $(tail -2 "$OUT/train.out" | head -1)" >&2
TABLE=$(python3 -c "
import glob, json
m = json.load(open(sorted(glob.glob('$OUT/models/v*/manifest.json'))[-1]))
t = m['sparse_tables'][-1]
assert t['dim'] == 16, t
print(t['name'])")


REPLICA_ADDRS=()
for i in $(seq 0 $((REPLICAS - 1))); do
  REPLICA_ADDRS+=("$(start "replica$i" "ember replica listening on " "$EMBER" replica --ps "$PS" \
    --dir "$OUT/replica$i" --listen 127.0.0.1:0 --model-dir "$OUT/models" --keep-versions 3)")
  "$EMBER" replica-status --target "${REPLICA_ADDRS[$i]}" --wait-secs 120 >/dev/null
done
SERVE=$(start serve "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 \
  --replicas "$(IFS=,; echo "${REPLICA_ADDRS[*]}")" --model-dir "$OUT/models" --freshness pinned \
  --cache-ttl-ms 500)
echo "replicas: ${REPLICA_ADDRS[*]}; serving node: $SERVE (pinned)" >&2

# Grow the table to ROWS rows while serving, and publish one version holding them (its
# checkpoint carries all ROWS rows); wait until the replicas hold it.
T0=$(date +%s.%N)
"$EMBER" bench serve --target "$SERVE" --qps 10 --batch 64 --seconds 4 --data "$DATA" --json \
  --swap-every 3 --model-dir "$OUT/models" --swap-rows "$CHANGE" --swap-ps "$PS" --swap-table "$TABLE" \
  --swap-keys "$ROWS" --swap-preload >"$OUT/grow.json" 2>"$OUT/grow.log"
GROWN=$("$EMBER" model list --model-dir "$OUT/models" | sed -n 's/^\* *\([0-9]*\).*/\1/p' | head -1)
for addr in "${REPLICA_ADDRS[@]}"; do
  for _ in $(seq 1 1200); do
    "$EMBER" replica-status --target "$addr" --json | python3 -c "import json,sys; sys.exit(0 if $GROWN in json.load(sys.stdin)['versions'] else 1)" && break
    sleep 0.25
  done
done
echo "grown to $ROWS rows, version $GROWN held by the replicas after $(python3 -c "import time; print(round(time.time() - $T0, 1))") s" >&2

# CPU seconds (user + system) of each process over the measured run.
cpu() { for n in ps0 ps1 $(seq -f "replica%g" 0 $((REPLICAS - 1))) serve; do
  echo "$n $(awk '{print ($14 + $15) / 100}' "/proc/$(cat "$OUT/$n.pid")/stat")"; done; }
cpu >"$OUT/cpu-before.txt"
echo "bench: $QPS qps x 64 for ${SECONDS_RUN}s, a version changing $CHANGE rows every ${EVERY}s" >&2
"$EMBER" bench serve --target "$SERVE" --qps "$QPS" --batch 64 --seconds "$SECONDS_RUN" --data "$DATA" --json \
  --swap-every "$EVERY" --swap-window-ms "$WINDOW" --model-dir "$OUT/models" --swap-rows "$CHANGE" \
  --swap-ps "$PS" --swap-table "$TABLE" --swap-keys "$ROWS" >"$OUT/swaps.json" 2>"$OUT/swaps.log"
cat "$OUT/swaps.json" >&2
cpu >"$OUT/cpu-after.txt"
CPU=$(paste "$OUT/cpu-before.txt" "$OUT/cpu-after.txt" | awk '{printf "%s\"%s\": %.1f", (NR > 1 ? ", " : ""), $1, $4 - $2}')
echo "CPU seconds over the run: {$CPU}" >&2
RSS=()
for i in $(seq 0 $((REPLICAS - 1))); do
  RSS+=("$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$OUT/replica$i.pid")/status")")
done
"$EMBER" replica-status --target "${REPLICA_ADDRS[0]}" --json >"$OUT/replica-status.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$OUT" "$ROWS" "$CHANGE" "$WINDOW" "${RSS[0]}" "{$CPU}" <<'PY'
import json, sys
out, rows, change, window, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpu = json.loads(sys.argv[6])
r = json.load(open(f"{out}/swaps.json"))
status = json.load(open(f"{out}/replica-status.json"))
s, o = r["in_swap"], r["steady"]
print(json.dumps({
    "rows": rows, "dim": 16, "changed_rows_per_version": change, "qps": r["qps"], "batch": r["batch"],
    "swaps": r["swaps"], "swap_window_ms": window, "errors": r["errors"], "versions_answered": r["versions"],
    "p99_steady_ms": o["p99_ms"], "p999_steady_ms": o["p999_ms"], "requests_steady": o["requests"],
    "p99_swap_ms": s["p99_ms"], "p999_swap_ms": s["p999_ms"], "requests_swap": s["requests"],
    "p999_swap_over_steady": round(s["p999_ms"] / o["p999_ms"], 2) if o["p999_ms"] else None,
    "replica_rss_mb": round(rss / 1024, 1),
    "replica_segment_rows": status["segment_rows"], "replica_versions": status["versions"],
    "cpu_seconds": cpu,
}))
PY
