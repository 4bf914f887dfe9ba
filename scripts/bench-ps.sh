#!/usr/bin/env bash
# Ember ps-server vs Redis as an embedding store, same machine, same run, same shape:
# 1M keys, dim 16 (64-byte rows), batches of 4096 uniform keys, loopback.
#
# `ember ps` and `ember bench ps` run as separate processes. Redis is measured with the peer's
# hiredis C client (../shared/peers/redis/run.sh: one connection, one batch in flight, MGET / MSET),
# so Ember is reported both at concurrency 1 (the like-for-like figure) and at concurrency 4.
# Prints a table and, as its last line, one JSON object with every figure and the ratios.
#
# Usage: scripts/bench-ps.sh [SECONDS_PER_RUN=10]   env: EMBER (binary), PEERS (../shared/peers)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${1:-10}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
PEERS="${PEERS:-$ROOT/../shared/peers}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
WORK="$(mktemp -d /tmp/ember-bench-ps.XXXXXX)"

echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$EMBER" ps --listen 127.0.0.1:0 --data-dir "$WORK/ps" >"$WORK/ps.out" 2>"$WORK/ps.log" &
PS_PID=$!
trap 'kill "$PS_PID" 2>/dev/null; wait "$PS_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$WORK/ps.out" 2>/dev/null && break; sleep 0.1; done
ADDR="$(sed -n 's/^ember ps listening on //p' "$WORK/ps.out")"
[ -n "$ADDR" ] || { echo "ember ps did not start: $(cat "$WORK/ps.log")" >&2; exit 1; }

bench() {
  "$EMBER" bench ps --target "$ADDR" --keys 1000000 --dim 16 --batch 4096 --seconds "$SECS" --json "$@"
}
echo "ember: preloading 1M rows and running pull/push at concurrency 4 and 1 ($SECS s each)" >&2
PULL4="$(bench --op pull --concurrency 4)"
PUSH4="$(bench --op push --concurrency 4 --no-preload)"
PULL1="$(bench --op pull --concurrency 1 --connections 1 --no-preload)"
PUSH1="$(bench --op push --concurrency 1 --connections 1 --no-preload)"
ZIPF4="$(bench --op pull --concurrency 4 --dist zipf --no-preload)"
echo "load after ember: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

REDIS_LOG="$WORK/redis.log"
if [ -x "$PEERS/redis/run.sh" ] && command -v redis-server >/dev/null; then
  echo "redis: $PEERS/redis/run.sh 1000000 (C hiredis client)" >&2
  SPLITS=1 "$PEERS/redis/run.sh" 1000000 >"$REDIS_LOG" 2>&1 || echo "redis peer exited non-zero (see $REDIS_LOG)" >&2
else
  echo "redis peer not available (run ../shared/peers/setup.sh); reporting Ember only" >&2
  : >"$REDIS_LOG"
fi

python3 - "$REDIS_LOG" "$PULL4" "$PUSH4" "$PULL1" "$PUSH1" "$ZIPF4" <<'PY'
import json, re, sys
log = open(sys.argv[1]).read()
pull4, push4, pull1, push1, zipf4 = (json.loads(a) for a in sys.argv[2:7])
def redis(name, dist="uniform"):
    # The C bench prints a header per run ("... dist=uniform ...") then one line per op.
    section = log.split(f"dist={dist}", 1)[1] if f"dist={dist}" in log else ""
    m = re.search(rf"{re.escape(name)}\s+batches=\d+ keys/s=(\d+) p50_ms=([\d.]+) p99_ms=([\d.]+)", section)
    return None if not m else {"keys_per_sec": float(m[1]), "p50_ms": float(m[2]), "p99_ms": float(m[3])}
r_pull, r_push, r_zipf = redis("pull MGET"), redis("push MSET"), redis("pull MGET", "zipf")
rows = [
    ("ember pull, 4 in flight", pull4), ("ember push (adagrad), 4 in flight", push4),
    ("ember pull, 1 in flight", pull1), ("ember push (adagrad), 1 in flight", push1),
    ("ember pull zipf 1.1, 4 in flight", zipf4),
    ("redis MGET (C, 1 in flight)", r_pull), ("redis MSET (C, 1 in flight)", r_push),
    ("redis MGET zipf (C, 1 in flight)", r_zipf),
]
print(f"{'run':38} {'keys/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
for name, r in rows:
    if r:
        print(f"{name:38} {r['keys_per_sec']:>12,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
ratio = lambda a, b: round(a["keys_per_sec"] / b["keys_per_sec"], 2) if a and b else None
out = {
    "ember_pull_c4": pull4, "ember_push_c4": push4, "ember_pull_c1": pull1, "ember_push_c1": push1,
    "ember_pull_zipf_c4": zipf4, "redis_pull_mget": r_pull, "redis_push_mset": r_push, "redis_pull_zipf": r_zipf,
    "ratio_pull_c4_vs_redis": ratio(pull4, r_pull), "ratio_push_c4_vs_redis": ratio(push4, r_push),
    "ratio_pull_c1_vs_redis": ratio(pull1, r_pull), "ratio_push_c1_vs_redis": ratio(push1, r_push),
}
for k in [k for k in out if k.startswith("ratio")]:
    print(f"{k}: {out[k]}")
print(json.dumps(out))
PY
