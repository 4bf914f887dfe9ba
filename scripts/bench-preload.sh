#!/usr/bin/env bash
# A bulk load into a tiered ps-server and what it leaves behind: preload KEYS rows of dim 16
# through `ember bench ps` against `--dram-budget BUDGET`, then two 10 s Zipf 1.1 pull runs, and
# count the RocksDB LOG's write-stall episodes per column family (t.* rows, c.* change marks) and
# the server's slow-demotion / pressure-wait log lines. One line of output.
#
# Usage: scripts/bench-preload.sh [KEYS=12000000] [BUDGET=256MiB] [LABEL=run] [OUT=/tmp/ember-preload]
# Needs ~KEYS x 180 bytes of free disk under OUT (removed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${1:-12000000}"
BUDGET="${2:-256MiB}"
LABEL="${3:-run}"
OUT="${4:-/tmp/ember-preload}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
rm -rf "$OUT" && mkdir -p "$OUT"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
PS_PID=""
trap '[ -n "$PS_PID" ] && kill -9 "$PS_PID" 2>/dev/null; rm -rf "$OUT"' EXIT
start_ps "$OUT/d" --dram-budget "$BUDGET"
bench() {
  "$EMBER" bench ps --target "$ADDR" --keys "$KEYS" --dim 16 --batch 4096 --concurrency 4 --json \
    --op pull --dist zipf --zipf-s 1.1 --seconds 10 "$@"
}
first=$(bench | python3 -c "import json,sys; d=json.load(sys.stdin); print('preload %.1fs, then %.2fM keys/s max %.0f ms' % (d['preload_seconds'], d['keys_per_sec']/1e6, d['max_ms']))")
second=$(bench --no-preload | python3 -c "import json,sys; d=json.load(sys.stdin); print('%.2fM keys/s max %.0f ms' % (d['keys_per_sec']/1e6, d['max_ms']))")
stalls=$(grep -h "Stalling writes\|Stopping writes" "$OUT"/d/cold/LOG* 2>/dev/null \
  | sed -E 's/.*\[([ct])\.[^]]*\] (Stalling|Stopping).*/\1-\2/' | sort | uniq -c | tr -s ' \n' ' ' || true)
slow=$(grep -c "slow demotion round\|waited for the hot tier" "$OUT/d.log" || true)
echo "$LABEL: $first; $second | RocksDB write stalls (t = rows, c = marks):${stalls:- none} | slow rounds/waits logged: $slow"
