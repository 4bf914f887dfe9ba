#!/usr/bin/env bash
# Learning quality and speed side by side: Ember (LR-FTRL, FM, DeepFM via `ember train`),
# Vowpal Wabbit (SGD, FTRL) and PyTorch (LR, FM, DeepFM; 1 thread) on the same files, same split
# (first 90% train, one pass; last 10% test), same machine, one run. Synthetic files come from
# `ember gen-data` with oracle probabilities, so the best achievable AUC is reported too.
#
# Usage: scripts/compare-peers.sh [OUT_DIR=/tmp/ember-peers]   (needs ../shared/peers/setup.sh once)
# Prints a markdown table; every tool's raw output is kept in OUT_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/ember-peers}"
PEERS="${PEERS:-$ROOT/../shared/peers}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
mkdir -p "$OUT"
echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
[ -f "$OUT/synth_1m.tsv" ] || "$EMBER" gen-data --rows 1000000 --seed 1 --out "$OUT/synth_1m.tsv" --oracle "$OUT/synth_1m.oracle"
head -n 200000 "$OUT/synth_1m.tsv" >"$OUT/synth_200k.tsv"
head -n 200000 "$OUT/synth_1m.oracle" >"$OUT/synth_200k.oracle"

run_dataset() {
  local name="$1" data="$2" oracle="$3" torch_models="$4"
  for job in criteo-ftrl lr-ftrl-batch4096 criteo-fm criteo-deepfm; do
    local extra=()
    [ -n "$oracle" ] && extra=(--oracle "$oracle")
    "$EMBER" train "$ROOT/examples/$job.toml" --data "$data" --workdir "$OUT/$name-$job" --report "$OUT/$name-$job.json" "${extra[@]}" \
      >"$OUT/$name-$job.log" 2>&1
  done
  VW_VARIANTS="sgd ftrl" "$PEERS/vw/run.sh" "$data" "$OUT/vw-$name" >"$OUT/$name-vw.log" 2>&1 || echo "vw failed on $name" >&2
  TORCH_THREADS=1 TORCH_MODELS="$torch_models" "$PEERS/torch/run.sh" "$data" >"$OUT/$name-torch.log" 2>&1 || echo "torch failed on $name" >&2
}

run_dataset criteo "$ROOT/../shared/data/criteo/train_10k.tsv" "" "lr fm deepfm"
run_dataset synth_200k "$OUT/synth_200k.tsv" "$OUT/synth_200k.oracle" "lr fm deepfm"
run_dataset synth_1m "$OUT/synth_1m.tsv" "$OUT/synth_1m.oracle" "lr deepfm"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

python3 - "$OUT" <<'PY'
import json, re, sys, os
out = sys.argv[1]
rows = []
for name in ["criteo", "synth_200k", "synth_1m"]:
    oracle = None
    for job, label in [("criteo-ftrl", "ember LR-FTRL"), ("lr-ftrl-batch4096", "ember LR-FTRL batch 4096"), ("criteo-fm", "ember FM"), ("criteo-deepfm", "ember DeepFM")]:
        p = f"{out}/{name}-{job}.json"
        if os.path.exists(p):
            r = json.load(open(p))
            oracle = r.get("oracle_test_auc") or oracle
            rows.append((name, label, r["test_auc"], r["test_logloss"], r["examples_per_sec"]))
    vw = open(f"{out}/{name}-vw.log").read() if os.path.exists(f"{out}/{name}-vw.log") else ""
    for m in re.finditer(r"vw variant=(\S+) train_s=\S+ train_ex_per_s=(\d+) .*?auc=([\d.]+).*?logloss=([\d.]+)|vw variant=(\S+) train_s=\S+ train_ex_per_s=(\d+) .*?logloss=([\d.]+).*?auc=([\d.]+)", vw):
        if m[1]:
            rows.append((name, f"VW {m[1]}", float(m[3]), float(m[4]), float(m[2])))
        else:
            rows.append((name, f"VW {m[5]}", float(m[8]), float(m[7]), float(m[6])))
    torch = open(f"{out}/{name}-torch.log").read() if os.path.exists(f"{out}/{name}-torch.log") else ""
    for m in re.finditer(r"torch model=(\S+).*?train_ex_per_s=([\d.]+).*?test_logloss=([\d.]+) test_auc=([\d.]+)", torch, re.S):
        rows.append((name, f"torch {m[1]} (1 thread)", float(m[4]), float(m[3]), float(m[2])))
    if oracle:
        rows.append((name, "oracle (true probabilities)", oracle, float("nan"), float("nan")))
print("| data | system | test AUC | test logloss | train examples/s |")
print("| --- | --- | ---: | ---: | ---: |")
for name, label, a, l, e in rows:
    fmt = lambda v, f: "" if v != v else f.format(v)
    print(f"| {name} | {label} | {a:.4f} | {fmt(l, '{:.4f}')} | {fmt(e, '{:,.0f}')} |")
PY
