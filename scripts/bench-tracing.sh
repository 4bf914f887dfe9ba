#!/usr/bin/env bash
# What tracing costs: the same loads with traces off and with traces exported at a 1% sample rate
# (RATE) to a real OTLP receiver on this machine (`ember bench otlp-sink`), in alternating rounds.
#  1. `ember bench ps` pushes and pulls against one ps-server (SECONDS each);
#  2. serving: a ps-server and a DeepFM trained on the Criteo slice, one serving node, and
#     `ember bench serve` at QPS for SECONDS; ps and serving both trace in the traced rounds.
# Prints per-round figures to stderr and, as its last line, one JSON object with the medians
# and the traced/untraced ratios.
# Usage: scripts/bench-tracing.sh [SECONDS=10] [ROUNDS=3] [QPS=300] [RATE=0.01] [OUT=/tmp/ember-tracing]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH="${1:-10}"
ROUNDS="${2:-3}"
QPS="${3:-300}"
RATE="${4:-0.01}"
OUT="${5:-/tmp/ember-tracing}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
DATA="$ROOT/../shared/data/criteo/train_10k.tsv"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
bench_init
SINK=$(start sink "ember otlp sink listening on " "$EMBER" bench otlp-sink --listen 127.0.0.1:0)

# The model serving reads: trained once, its ps-server's checkpoint copied for each round.
TRAIN_PS=$(start train-ps "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/train-ps" \
  --checkpoint-every 0)
"$EMBER" train "$ROOT/examples/criteo-deepfm.toml" --data "$DATA" --ps "$TRAIN_PS" --model-dir "$OUT/models" \
  --workdir "$OUT/train" >"$OUT/train.out" 2>"$OUT/train.log"
kill "$(cat "$OUT/train-ps.pid")"; wait "$(cat "$OUT/train-ps.pid")" 2>/dev/null || true

flags() { [ "$1" = on ] && echo "--otlp-endpoint http://$SINK --trace-sample-rate $RATE" || true; }
stop() { kill "$(cat "$OUT/$1.pid")" 2>/dev/null; wait "$(cat "$OUT/$1.pid")" 2>/dev/null || true; }
: >"$OUT/results"
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    # shellcheck disable=SC2046
    PS=$(start "ps-$round-$mode" "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 \
      --data-dir "$OUT/ps-$round-$mode" --checkpoint-every 0 $(flags $mode))
    push=$("$EMBER" bench ps --target "$PS" --op push --seconds "$SECONDS_EACH" --keys 1000000 --json 2>/dev/null \
      | python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['keys_per_sec'])")
    pull=$("$EMBER" bench ps --target "$PS" --op pull --seconds "$SECONDS_EACH" --keys 1000000 --json 2>/dev/null \
      | python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['keys_per_sec'])")
    stop "ps-$round-$mode"
    cp -r "$OUT/train-ps" "$OUT/serve-ps-$round-$mode"
    # shellcheck disable=SC2046
    SPS=$(start "sps-$round-$mode" "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 \
      --data-dir "$OUT/serve-ps-$round-$mode" --checkpoint-every 0 $(flags $mode))
    # shellcheck disable=SC2046
    SERVE=$(start "serve-$round-$mode" "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 \
      --model-dir "$OUT/models" --ps "$SPS" $(flags $mode))
    # Warm up (model load, row cache, connections), then measure.
    "$EMBER" bench serve --target "$SERVE" --qps "$QPS" --seconds 3 --data "$DATA" --json >/dev/null 2>&1
    p99=$("$EMBER" bench serve --target "$SERVE" --qps "$QPS" --seconds "$SECONDS_EACH" --data "$DATA" --json \
      2>/dev/null | python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['p99_ms'])")
    stop "serve-$round-$mode"; stop "sps-$round-$mode"
    echo "round $round traces $mode: push $push keys/s, pull $pull keys/s, serving p99 $p99 ms" >&2
    echo "$mode $push $pull $p99" >>"$OUT/results"
  done
done
stop sink
SPANS=$(python3 -c "import json; print(json.loads(open('$OUT/sink.out').read().splitlines()[-1])['spans'])")
python3 - "$OUT/results" "$RATE" "$SPANS" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda mode, i: statistics.median(float(r[i]) for r in rows if r[0] == mode)
off = {k: med("off", i) for i, k in ((1, "push"), (2, "pull"), (3, "p99"))}
on = {k: med("on", i) for i, k in ((1, "push"), (2, "pull"), (3, "p99"))}
print(json.dumps({"sample_rate": float(sys.argv[2]), "rounds": len(rows) // 2, "spans_received": int(sys.argv[3]),
    "push_keys_per_s_off": round(off["push"]), "push_keys_per_s_on": round(on["push"]),
    "push_on_vs_off": round(on["push"] / off["push"], 3),
    "pull_keys_per_s_off": round(off["pull"]), "pull_keys_per_s_on": round(on["pull"]),
    "pull_on_vs_off": round(on["pull"] / off["pull"], 3),
    "serving_p99_ms_off": off["p99"], "serving_p99_ms_on": on["p99"],
    "serving_p99_on_vs_off": round(on["p99"] / off["p99"], 3)}))
PY
