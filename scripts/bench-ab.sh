#!/usr/bin/env bash
# A against B on `ember bench ps`, in alternating rounds on one machine: a fresh `ember ps` per
# run, pull and push of batch 4096 over 1M keys of dim 16 at concurrency 4. Prints every round
# and, last, one JSON object with B's median keys/s over A's for pull and push.
#
#   A_BIN=old/ember B_BIN=new/ember scripts/bench-ab.sh            two builds, same flags
#   B_PS="--tls-cert c.pem --tls-key k.pem" B_CLIENT="--tls-ca ca.pem" scripts/bench-ab.sh
#                                                                  one build, plaintext vs TLS
# env: A_BIN, B_BIN (default target/release/ember), A_PS/B_PS (extra ps flags), A_CLIENT/B_CLIENT
# (extra bench flags), ROUNDS (3), SECS (5), OPS ("pull push").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEFAULT_BIN="$ROOT/target/release/ember"
A_BIN="${A_BIN:-$DEFAULT_BIN}"; B_BIN="${B_BIN:-$DEFAULT_BIN}"
A_PS="${A_PS:-}"; B_PS="${B_PS:-}"; A_CLIENT="${A_CLIENT:-}"; B_CLIENT="${B_CLIENT:-}"
ROUNDS="${ROUNDS:-3}"; SECS="${SECS:-5}"; OPS="${OPS:-pull push}"
WORK="$(mktemp -d /tmp/ember-ab.XXXXXX)"
PS_PID=""
# The ps data dirs hold gigabytes of checkpoints: removed at exit.
trap '[ -n "$PS_PID" ] && kill "$PS_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

run() { # run NAME BIN PSFLAGS CLIENTFLAGS ROUND -> prints "NAME ROUND OP KEYS_PER_SEC" lines
  local name="$1" bin="$2" psflags="$3" clientflags="$4" round="$5" dir="$WORK/$1-$5"
  # shellcheck disable=SC2086
  "$bin" ps --listen 127.0.0.1:0 --data-dir "$dir" --checkpoint-every 0 $psflags >"$dir.out" 2>"$dir.log" &
  PS_PID=$!
  for _ in $(seq 200); do grep -q "listening on" "$dir.out" 2>/dev/null && break; sleep 0.05; done
  local addr; addr="$(sed -n 's/^ember ps listening on //p' "$dir.out")"
  [ -n "$addr" ] || { echo "$name: ps did not start: $(cat "$dir.log")" >&2; exit 1; }
  local preload=""
  for op in $OPS; do
    # shellcheck disable=SC2086
    out="$("$bin" bench ps --target "$addr" --op "$op" --keys 1000000 --dim 16 --batch 4096 --concurrency 4 \
      --seconds "$SECS" --json $preload $clientflags)"
    preload="--no-preload"
    echo "$name $round $op $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["keys_per_sec"])')"
  done
  kill "$PS_PID"; wait "$PS_PID" 2>/dev/null || true; PS_PID=""
}

echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  run A "$A_BIN" "$A_PS" "$A_CLIENT" "$r"
  run B "$B_BIN" "$B_PS" "$B_CLIENT" "$r"
done | tee "$WORK/rounds.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$WORK/rounds.txt" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
out = {}
for op in sorted({r[2] for r in rows}):
    a = [float(r[3]) for r in rows if r[0] == "A" and r[2] == op]
    b = [float(r[3]) for r in rows if r[0] == "B" and r[2] == op]
    out[op] = {"a_median": statistics.median(a), "b_median": statistics.median(b),
               "ratio_b_over_a": round(statistics.median(b) / statistics.median(a), 3),
               "a": a, "b": b}
print(json.dumps(out))
PY
