#!/usr/bin/env bash
# The whole serving path on this machine: two ps-servers, a short DeepFM training on the Criteo
# slice publishing into a model directory, REPLICAS embedding replicas (`ember replica`, default
# 2) following the ps-servers, a serving node reading the replicas; then the open-loop bench
# without model swaps (one replica is SIGKILLed half-way through it unless KILL=0, and restarted
# on its directory after it), with model swaps, the freshness probe, and the hold-out rows through
# the serving node. REPLICAS=0 serves from the training ps-servers as before.
# Prints as its last line one JSON object with p99_ms, p999_steady_ms, p999_swap_ms, errors,
# freshness_ms, serving_auc, training_auc, replicas, replica_killed, hedged_requests,
# failover_retries, training_ps_lookups, rollback_exact (after the rows moved, a rollback predicts
# exactly what the version predicted before; null without replicas), rollback_predictions_moved
# (hold-out predictions the moved rows had changed), freshness_p99_ms, replica_restart_to_ready_s.
#
# Usage: [REPLICAS=2] [KILL=1] scripts/bench-serving.sh [QPS=300] [SECONDS=30] [OUT=/tmp/ember-serving]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
QPS="${1:-300}"
SECONDS_EACH="${2:-30}"
OUT="${3:-/tmp/ember-serving}"
REPLICAS="${REPLICAS:-2}"
KILL="${KILL:-1}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
DATA="$ROOT/../shared/data/criteo/train_10k.tsv"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
bench_init

PS0=$(start ps0 "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps0" --checkpoint-every 0 \
  --metrics-listen 127.0.0.1:0)
PS1=$(start ps1 "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps1" --checkpoint-every 0 \
  --metrics-listen 127.0.0.1:0)
PS="$PS0,$PS1"
PS_METRICS="$(sed -n 's/^ember ps metrics on //p' "$OUT/ps0.out"),$(sed -n 's/^ember ps metrics on //p' "$OUT/ps1.out")"
# metric URLS NAME LABEL: the sum of a counter's series (with LABEL in their labels) over URLS.
metric() {
  python3 - "$@" <<'PY'
import sys, urllib.request
urls, name, label = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
total = 0.0
for url in urls:
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and label in line:
            total += float(line.rsplit(" ", 1)[1])
print(int(total))
PY
}
echo "ps-servers: $PS" >&2

# The job: examples/criteo-deepfm.toml; its first 9,000 rows train, the last 1,000 are held out.
"$EMBER" train "$ROOT/examples/criteo-deepfm.toml" --data "$DATA" --ps "$PS" --model-dir "$OUT/models" \
  --workdir "$OUT/train" --test-predictions "$OUT/train/test-preds.txt" >"$OUT/train.out" 2>"$OUT/train.log"
TRAIN_AUC=$(python3 -c "import json;print(json.load(open('$OUT/train/report.json'))['test_auc'])")
echo "training: $(tail -2 "$OUT/train.out" | head -1)" >&2

PS_LOOKUPS_BEFORE=$(metric "$PS_METRICS" ember_ps_requests_total 'method="lookup"')
REPLICA_ADDRS=()
for i in $(seq 0 $((REPLICAS - 1))); do
  REPLICA_ADDRS+=("$(start "replica$i" "ember replica listening on " "$EMBER" replica --ps "$PS" \
    --dir "$OUT/replica$i" --listen 127.0.0.1:0 --model-dir "$OUT/models" --keep-versions 20)")
  "$EMBER" replica-status --target "${REPLICA_ADDRS[$i]}" --wait-secs 120 >/dev/null
done
if [ "$REPLICAS" -gt 0 ]; then
  ROWS_FROM=(--replicas "$(IFS=,; echo "${REPLICA_ADDRS[*]}")")
  echo "replicas: ${REPLICA_ADDRS[*]}" >&2
else
  ROWS_FROM=(--ps "$PS")
fi
SERVE=$(start serve "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 "${ROWS_FROM[@]}" \
  --model-dir "$OUT/models" --metrics-listen 127.0.0.1:0 --cache-ttl-ms 500)
SERVE_METRICS=$(sed -n 's/^ember serve metrics on //p' "$OUT/serve.out")
echo "serving node: $SERVE" >&2

# Hold-out rows through the serving node (rows 9001-10000 of the slice).
tail -n 1000 "$DATA" >"$OUT/test.tsv"
"$EMBER" predict --serving "$SERVE" --data "$OUT/test.tsv" --out "$OUT/serving-preds.txt" --batch 64 >"$OUT/predict.out"
SERVING_AUC=$(sed -n 's/.*AUC \([0-9.]*\),.*/\1/p' "$OUT/predict.out")
echo "serving: $(cat "$OUT/predict.out")" >&2

echo "bench without swaps: $QPS qps x 64 samples for ${SECONDS_EACH}s" >&2
KILLED=false
if [ "$REPLICAS" -gt 1 ] && [ "$KILL" = 1 ]; then
  KILLED=true
  (sleep "$((SECONDS_EACH / 2))"; kill -9 "$(cat "$OUT/replica0.pid")"; echo "SIGKILLed replica0 at $(date +%T)" >&2) &
  KILLER=$!
fi
"$EMBER" bench serve --target "$SERVE" --qps "$QPS" --batch 64 --seconds "$SECONDS_EACH" --data "$DATA" --json \
  >"$OUT/steady.json"
cat "$OUT/steady.json" >&2
RESTART_S=null
if [ "$KILLED" = true ]; then
  wait "$KILLER"
  T0=$(date +%s.%N)
  start replica0-restarted "ember replica listening on " "$EMBER" replica --ps "$PS" --dir "$OUT/replica0" \
    --listen "${REPLICA_ADDRS[0]}" --model-dir "$OUT/models" --keep-versions 20 >/dev/null
  "$EMBER" replica-status --target "${REPLICA_ADDRS[0]}" --wait-secs 120 >/dev/null
  RESTART_S=$(python3 -c "import time; print(round(time.time() - $T0, 2))")
  echo "replica0 restarted on its segments, ready in ${RESTART_S}s" >&2
fi
# Four times as long: a p999 inside swap windows needs a few thousand requests in them.
echo "bench with a swap every 10 s" >&2
"$EMBER" bench serve --target "$SERVE" --qps "$QPS" --batch 64 --seconds "$((SECONDS_EACH * 4))" --data "$DATA" \
  --swap-every 10 --model-dir "$OUT/models" --json >"$OUT/swaps.json"
cat "$OUT/swaps.json" >&2
# Rollback: the hold-out predictions now (the newest version, the rows as training left them),
# then the freshness probe's pushes move rows, then a rollback to the version before: with
# replicas it must predict exactly what was recorded (its own published rows), not the moved ones.
"$EMBER" predict --serving "$SERVE" --data "$OUT/test.tsv" --out "$OUT/before-rollback.txt" --batch 64 >/dev/null
"$EMBER" bench freshness --target "$SERVE" --ps "$PS" --trials 20 --json >"$OUT/freshness.json"
cat "$OUT/freshness.json" >&2
"$EMBER" predict --serving "$SERVE" --data "$OUT/test.tsv" --out "$OUT/moved.txt" --batch 64 >/dev/null
NEWEST=$("$EMBER" model list --model-dir "$OUT/models" | sed -n 's/^\* *\([0-9]*\).*/\1/p' | head -1)
ROLLBACK_EXACT=null
ROWS_MOVED=$(paste "$OUT/before-rollback.txt" "$OUT/moved.txt" | awk '$1 != $2' | wc -l)
if [ "$REPLICAS" -gt 0 ] && [ -n "$NEWEST" ]; then
  TO=$((NEWEST - 1))
  "$EMBER" model rollback --model-dir "$OUT/models" --to "$TO" >/dev/null
  for _ in $(seq 1 100); do
    "$EMBER" predict --serving "$SERVE" --data "$OUT/test.tsv" --out "$OUT/after-rollback.txt" --batch 64 \
      >"$OUT/rollback-predict.out"
    grep -q "versions \[$TO\])" "$OUT/rollback-predict.out" && break
    sleep 0.1
  done
  if cmp -s "$OUT/before-rollback.txt" "$OUT/after-rollback.txt"; then ROLLBACK_EXACT=true; else ROLLBACK_EXACT=false; fi
  echo "rollback $NEWEST -> $TO: exact $ROLLBACK_EXACT ($ROWS_MOVED of 1000 predictions had moved with the rows)" >&2
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PS_LOOKUPS=$(( $(metric "$PS_METRICS" ember_ps_requests_total 'method="lookup"') - PS_LOOKUPS_BEFORE ))
HEDGED=$(metric "$SERVE_METRICS" ember_replica_client_requests_total 'kind="backup"')
RETRIES=$(metric "$SERVE_METRICS" ember_replica_client_requests_total 'kind="retry"')

python3 - "$OUT" "$SERVING_AUC" "$TRAIN_AUC" "$QPS" "$REPLICAS" "$KILLED" "$HEDGED" "$RETRIES" "$PS_LOOKUPS" \
  "$RESTART_S" "$ROLLBACK_EXACT" "$ROWS_MOVED" <<'PY'
import json, sys
out, serving_auc, training_auc, qps = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
replicas, killed, hedged, retries, ps_lookups = int(sys.argv[5]), sys.argv[6] == "true", int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
restart = json.loads(sys.argv[10])
rollback_exact, rows_moved = json.loads(sys.argv[11]), int(sys.argv[12])
steady = json.load(open(f"{out}/steady.json"))
swaps = json.load(open(f"{out}/swaps.json"))
fresh = json.load(open(f"{out}/freshness.json"))
print(json.dumps({
    "qps": qps, "batch": 64,
    "p50_ms": steady["p50_ms"], "p99_ms": steady["p99_ms"], "p999_ms": steady["p999_ms"], "max_ms": steady["max_ms"],
    "p999_steady_ms": swaps["steady"]["p999_ms"], "p999_swap_ms": swaps["in_swap"]["p999_ms"],
    "p99_steady_ms": swaps["steady"]["p99_ms"], "p99_swap_ms": swaps["in_swap"]["p99_ms"],
    "swaps": swaps["swaps"], "errors": steady["errors"] + swaps["errors"],
    "freshness_ms": fresh["freshness_median_ms"], "freshness_max_ms": fresh["freshness_max_ms"],
    "serving_auc": serving_auc, "training_auc": training_auc,
    "replicas": replicas, "replica_killed": killed, "hedged_requests": hedged, "failover_retries": retries,
    "training_ps_lookups": ps_lookups, "rollback_exact": rollback_exact, "rollback_predictions_moved": rows_moved, "freshness_p99_ms": fresh["freshness_p99_ms"],
    "replica_restart_to_ready_s": restart,
}))
PY
