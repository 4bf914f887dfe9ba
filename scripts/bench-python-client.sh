#!/usr/bin/env bash
# The Python client's predict throughput against `ember predict` on the same rows, same node,
# same run: a ps-server, DeepFM trained on the Criteo slice (examples/criteo-deepfm.toml), one
# serving node; then REPS alternating passes of the hold-out rows (repeated to ROWS) through
# `ember predict --batch BATCH` and through `ember.Predictor` (clients/python) in batches of BATCH.
# Both read the rows from the same file and ask the same node; the Python side includes parsing
# the TSV into rows. Prints as its last line one JSON object with the rows/s of each and their ratio.
# Usage: scripts/bench-python-client.sh [ROWS=20000] [BATCH=256] [REPS=3] [OUT=/tmp/ember-pyclient]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROWS="${1:-20000}"
BATCH="${2:-256}"
REPS="${3:-3}"
OUT="${4:-/tmp/ember-pyclient}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
DATA="$ROOT/../shared/data/criteo/train_10k.tsv"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
bench_init
PY=$("$ROOT/scripts/python-client.sh")
PS=$(start ps "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps" --checkpoint-every 0)
"$EMBER" train "$ROOT/examples/criteo-deepfm.toml" --data "$DATA" --ps "$PS" --model-dir "$OUT/models" \
  --workdir "$OUT/train" >"$OUT/train.out" 2>"$OUT/train.log"
SERVE=$(start serve "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 --model-dir "$OUT/models" --ps "$PS")
tail -n 1000 "$DATA" >"$OUT/holdout.tsv"
: >"$OUT/rows.tsv"
while [ "$(wc -l <"$OUT/rows.tsv")" -lt "$ROWS" ]; do cat "$OUT/holdout.tsv" >>"$OUT/rows.tsv"; done
head -n "$ROWS" "$OUT/rows.tsv" >"$OUT/rows.cut" && mv "$OUT/rows.cut" "$OUT/rows.tsv"

rust_pass() {
  local t0 t1
  t0=$(date +%s.%N)
  "$EMBER" predict --serving "$SERVE" --data "$OUT/rows.tsv" --batch "$BATCH" --out "$OUT/rust.txt" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "print($ROWS / ($t1 - $t0))"
}
python_pass() {
  "$PY" - "$SERVE" "$OUT/rows.tsv" "$BATCH" "$OUT/python.txt" <<'PY'
import sys, time
from ember import Predictor
addr, path, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
with open(path) as f:
    rows = [line.rstrip("\n").split("\t")[1:] for line in f]
probs = []
with Predictor(addr) as p:
    for i in range(0, len(rows), batch):
        probs += p.predict(rows[i:i + batch])
elapsed = time.perf_counter() - t0
with open(out, "w") as f:
    f.writelines(f"{x}\n" for x in probs)
print(len(rows) / elapsed)
PY
}
RUST=(); PYTHON=()
for _ in $(seq 1 "$REPS"); do
  RUST+=("$(rust_pass)")
  PYTHON+=("$(python_pass)")
done
python3 - "$OUT" "${RUST[*]}" "${PYTHON[*]}" "$ROWS" "$BATCH" <<'PY'
import json, statistics, sys
out, rust, python, rows, batch = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), int(sys.argv[5])
rust, python = [float(x) for x in rust], [float(x) for x in python]
a = [float(x) for x in open(f"{out}/rust.txt")]
b = [float(x) for x in open(f"{out}/python.txt")]
worst = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else None
r, p = statistics.median(rust), statistics.median(python)
print(f"ember predict rows/s {[round(x) for x in rust]}; Python client {[round(x) for x in python]}", file=sys.stderr)
print(json.dumps({"rows": rows, "batch": batch, "ember_predict_rows_per_s": round(r), "python_rows_per_s": round(p),
                  "python_vs_ember_predict": round(p / r, 3), "max_abs_diff": worst}))
PY
