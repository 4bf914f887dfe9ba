#!/usr/bin/env bash
# A against B on training throughput, in alternating rounds on one machine: `ember train
# examples/criteo-ftrl.toml` on generated rows, and `ember demo` (DeepFM, 200k generated rows).
# Prints every run's examples/s and test AUC, then B's median over A's for each workload.
#
#   A_BIN=old/ember B_BIN=new/ember scripts/bench-train-ab.sh
# env: A_BIN, B_BIN (default target/release/ember), ROUNDS (3), ROWS (1000000).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEFAULT_BIN="$ROOT/target/release/ember"
A_BIN="${A_BIN:-$DEFAULT_BIN}"; B_BIN="${B_BIN:-$DEFAULT_BIN}"
ROUNDS="${ROUNDS:-3}"; ROWS="${ROWS:-1000000}"
WORK="$(mktemp -d /tmp/ember-train-ab.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
"$B_BIN" gen-data --rows "$ROWS" --out "$WORK/synth.tsv" >/dev/null

# Prints "examples/s test_auc" from a summary line on stdin.
figures() { sed -n 's/.*test AUC \([0-9.]*\).* \([0-9]*\) examples\/s.*/\2 \1/p' | head -1; }

for round in $(seq "$ROUNDS"); do
  for side in A B; do
    bin="$A_BIN"; [ "$side" = B ] && bin="$B_BIN"
    out="$(cd "$ROOT" && "$bin" train examples/criteo-ftrl.toml --data "$WORK/synth.tsv" \
      --workdir "$WORK/train-$side" 2>/dev/null | figures)"
    echo "train $side $round $out"
    out="$("$bin" demo --workdir "$WORK/demo-$side" 2>/dev/null | figures)"
    echo "demo $side $round $out"
  done
done | tee "$WORK/runs.txt"

python3 - "$WORK/runs.txt" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kind, side, _, rate, auc = line.split()
    runs.setdefault((kind, side), []).append(float(rate))
for kind in ("train", "demo"):
    a, b = statistics.median(runs[(kind, "A")]), statistics.median(runs[(kind, "B")])
    print(f"{kind}: B/A {b / a:.3f} (median examples/s {b:.0f} vs {a:.0f})")
EOF
