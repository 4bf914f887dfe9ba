#!/usr/bin/env bash
# RSS of a ps-server under load with periodic checkpoints against the same load without them:
# preload KEYS rows (dim 16, Adagrad), then push Zipf batches for SECS seconds, sampling VmRSS
# every second. Prints one JSON line per mode: max and final RSS, checkpoints written.
#
# Usage: scripts/bench-ckpt-memory.sh [KEYS=12000000] [SECS=60] [EVERY=5]   env: EMBER
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${1:-12000000}"; SECS="${2:-60}"; EVERY="${3:-5}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
WORK="$(mktemp -d /var/tmp/ember-ckpt-mem.XXXXXX)"
PS_PID=""
trap '[ -n "$PS_PID" ] && kill "$PS_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

for every in 0 "$EVERY"; do
  dir="$WORK/ps-$every"
  "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$dir" --checkpoint-every "$every" >"$dir.out" 2>"$dir.log" &
  PS_PID=$!
  for _ in $(seq 200); do grep -q "listening on" "$dir.out" 2>/dev/null && break; sleep 0.05; done
  addr="$(sed -n 's/^ember ps listening on //p' "$dir.out")"
  "$EMBER" bench ps --target "$addr" --op pull --keys "$KEYS" --dim 16 --batch 4096 --seconds 0.1 >/dev/null
  after_load=$(rss_mb "$PS_PID")
  "$EMBER" bench ps --target "$addr" --op push --keys "$KEYS" --dim 16 --batch 4096 --dist zipf \
    --seconds "$SECS" --no-preload >/dev/null &
  BENCH=$!
  max=0
  while kill -0 "$BENCH" 2>/dev/null; do
    r=$(rss_mb "$PS_PID"); [ "$r" -gt "$max" ] && max=$r
    sleep 1
  done
  final=$(rss_mb "$PS_PID")
  ckpts=$(ls "$dir/checkpoints" 2>/dev/null | grep -c '\.ckpt$' || true)
  written=$(grep -c "checkpoint" "$dir.log" || true)
  echo "{\"checkpoint_every\": $every, \"keys\": $KEYS, \"rss_after_preload_mb\": $after_load, \"rss_max_mb\": $max, \"rss_final_mb\": $final, \"checkpoint_files\": $ckpts}"
  kill "$PS_PID"; wait "$PS_PID" 2>/dev/null || true; PS_PID=""
  rm -rf "$dir"
done
