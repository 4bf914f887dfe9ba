#!/usr/bin/env bash
# One replica of a large table: a ps-server preloaded with ROWS rows of dim 16 (`ember bench ps
# --op push`), an `ember replica` bootstrapping from its snapshot stream into segments; then a
# SIGKILL and a restart on the same directory (maps its segments, resumes the stream), and for
# comparison a start on an empty directory (a whole snapshot again).
# Prints as its last line one JSON object: rows, dim, bootstrap_s, restart_to_ready_s,
# empty_start_to_ready_s, rss_mb (after bootstrap and compaction), rss_anon_mb, rss_file_mb,
# rss_mb_per_million_rows, restart_rss_mb, segment_mb, ps_rss_mb.
#
# Usage: scripts/bench-replica.sh [ROWS=5000000] [OUT=/tmp/ember-replica-bench]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROWS="${1:-5000000}"
OUT="${2:-/tmp/ember-replica-bench}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
bench_init KILL
now() { date +%s.%N; }
kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# The delta log must cover every row, or a resumed subscription is told to take a snapshot.
PS=$(start ps "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$OUT/ps" --checkpoint-every 0 \
  --delta-log-keys $((ROWS * 2)))
"$EMBER" bench ps --target "$PS" --op push --keys "$ROWS" --dim 16 --seconds 1 --table rows >"$OUT/preload.out"
echo "preloaded: $(tail -1 "$OUT/preload.out")" >&2

T0=$(now)
R=$(start replica "ember replica listening on " "$EMBER" replica --ps "$PS" --dir "$OUT/replica" --listen 127.0.0.1:0)
"$EMBER" replica-status --target "$R" --wait-secs 600 --json >"$OUT/ready.json"
T1=$(now)
# Wait for the compaction of the snapshot into a segment.
for _ in $(seq 1 600); do
  "$EMBER" replica-status --target "$R" --json >"$OUT/status.json"
  python3 -c "import json,sys; s=json.load(open('$OUT/status.json')); sys.exit(0 if s['overlay_rows']==0 and s['segment_rows']>0 else 1)" && break
  sleep 0.5
done
PID=$(cat "$OUT/replica.pid")
RSS=$(kb "$PID" VmRSS); ANON=$(kb "$PID" RssAnon); FILE=$(kb "$PID" RssFile)
SEG_KB=$(du -sk "$OUT/replica" | cut -f1)
PS_RSS=$(kb "$(cat "$OUT/ps.pid")" VmRSS)
echo "bootstrap: $(python3 -c "print(round($T1-$T0,2))") s; rss ${RSS} kB (anon ${ANON}, file ${FILE}); segments ${SEG_KB} kB" >&2

kill -9 "$PID"; wait "$PID" 2>/dev/null || true
T2=$(now)
R2=$(start replica2 "ember replica listening on " "$EMBER" replica --ps "$PS" --dir "$OUT/replica" --listen 127.0.0.1:0)
"$EMBER" replica-status --target "$R2" --wait-secs 600 --json >"$OUT/ready2.json"
T3=$(now)
RSS2=$(kb "$(cat "$OUT/replica2.pid")" VmRSS)
echo "restart on its segments: $(python3 -c "print(round($T3-$T2,2))") s, rss ${RSS2} kB" >&2
kill -9 "$(cat "$OUT/replica2.pid")"

T4=$(now)
R3=$(start replica3 "ember replica listening on " "$EMBER" replica --ps "$PS" --dir "$OUT/replica-empty" --listen 127.0.0.1:0)
"$EMBER" replica-status --target "$R3" --wait-secs 600 --json >"$OUT/ready3.json"
T5=$(now)
echo "start on an empty directory: $(python3 -c "print(round($T5-$T4,2))") s" >&2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - <<PY
import json
rows = $ROWS
print(json.dumps({
    "rows": rows, "dim": 16,
    "bootstrap_s": round($T1 - $T0, 2),
    "restart_to_ready_s": round($T3 - $T2, 2),
    "empty_start_to_ready_s": round($T5 - $T4, 2),
    "rss_mb": round($RSS / 1024, 1), "rss_anon_mb": round($ANON / 1024, 1), "rss_file_mb": round($FILE / 1024, 1),
    "rss_mb_per_million_rows": round($RSS / 1024 / (rows / 1e6), 1),
    "restart_rss_mb": round($RSS2 / 1024, 1),
    "segment_mb": round($SEG_KB / 1024, 1),
    "ps_rss_mb": round($PS_RSS / 1024, 1),
}))
PY
