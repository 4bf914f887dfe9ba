#!/usr/bin/env bash
# What TLS costs, as ratios to plaintext measured in the same run on the same binary:
#  - `ember bench ps` pull and push (batch 4096, 1M keys of dim 16, concurrency 4) against a
#    ps-server with and without --tls-cert (scripts/bench-ab.sh, alternating rounds);
#  - `ember bench serve` p50/p99 (200 qps x 64 samples) against two serving nodes on the same
#    ps-server and model directory, one with TLS, alternating rounds.
# Certificates come from openssl (a throwaway CA, a node certificate for 127.0.0.1).
# Prints a JSON object last: {"ps": {...bench-ab output...}, "serve": {...}}.
#
# Usage: scripts/bench-tls.sh [ROUNDS=3] [SECS=5]     env: EMBER (binary)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-3}"; SECS="${2:-5}"
EMBER="${EMBER:-$ROOT/target/release/ember}"
[ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
WORK="$(mktemp -d /tmp/ember-tls.XXXXXX)"
OUT="$WORK"
# shellcheck source=scripts/ps-lib.sh
. "$ROOT/scripts/ps-lib.sh"
# Stop the servers and wait for them (a ps-server writes a last checkpoint) before removing WORK.
cleanup() {
  stop_started
  for p in $(cat "$OUT/pids" 2>/dev/null); do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A CA and one certificate for 127.0.0.1, for servers and clients alike.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$WORK/node.key" -out "$WORK/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/node.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
  -extfile "$WORK/ext" -out "$WORK/node.pem" 2>/dev/null
TLS_SERVER="--tls-cert $WORK/node.pem --tls-key $WORK/node.key"
TLS_CLIENT="--tls-ca $WORK/ca.pem"

echo "ps: plaintext (A) vs TLS (B)" >&2
PS_JSON="$(A_BIN="$EMBER" B_BIN="$EMBER" B_PS="$TLS_SERVER" B_CLIENT="$TLS_CLIENT" ROUNDS="$ROUNDS" SECS="$SECS" \
  "$ROOT/scripts/bench-ab.sh" | tail -1)"

echo "serve: training a DeepFM on 20k synthetic rows to serve" >&2
"$EMBER" gen-data --rows 20000 --out "$WORK/data.tsv" >/dev/null
PS=$(start ps "ember ps listening on " "$EMBER" ps --listen 127.0.0.1:0 --data-dir "$WORK/ps" --checkpoint-every 0)
"$EMBER" train "$ROOT/examples/criteo-deepfm.toml" --data "$WORK/data.tsv" --ps "$PS" --model-dir "$WORK/models" \
  --workdir "$WORK/train" >/dev/null 2>"$WORK/train.log"
PLAIN=$(start plain "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 --ps "$PS" --model-dir "$WORK/models")
# shellcheck disable=SC2086
TLS=$(start tls "ember serve listening on " "$EMBER" serve --listen 127.0.0.1:0 --ps "$PS" --model-dir "$WORK/models" $TLS_SERVER)
for r in $(seq "$ROUNDS"); do
  for side in plain tls; do
    if [ "$side" = plain ]; then target="$PLAIN"; extra=""; else target="$TLS"; extra="$TLS_CLIENT"; fi
    # shellcheck disable=SC2086
    "$EMBER" bench serve --target "$target" --qps 200 --batch 64 --seconds "$SECS" --data "$WORK/data.tsv" --json $extra \
      >"$WORK/serve-$side-$r.json"
    echo "serve $side round $r: $(cat "$WORK/serve-$side-$r.json")" >&2
  done
done
SERVE_JSON="$(python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def runs(side):
    return [json.load(open(f"{work}/serve-{side}-{r}.json")) for r in range(1, rounds + 1)]
out = {}
for key in ["p50_ms", "p99_ms"]:
    a = [(x.get("steady") or x)[key] for x in runs("plain")]
    b = [(x.get("steady") or x)[key] for x in runs("tls")]
    out[key] = {"plain": a, "tls": b, "ratio_tls_over_plain": round(statistics.median(b) / statistics.median(a), 3)}
print(json.dumps(out))
PY
)"
echo "{\"ps\": $PS_JSON, \"serve\": $SERVE_JSON}"
