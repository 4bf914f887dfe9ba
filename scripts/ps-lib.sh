# Shared by the bench scripts (source it; it defines functions only).
#
# start_ps DATA_DIR [ps flags...]: starts `$EMBER ps` on ephemeral gRPC and metrics ports with its
# data dir at DATA_DIR (stdout in DATA_DIR.out, logs in DATA_DIR.log) and waits until it listens:
# up to 10 min, since a restart restores its checkpoints first (50M tiered rows took over a
# minute). Sets PS_PID, ADDR and METRICS (the /metrics URL); exits the script if it never listens.
start_ps() {
  local dir="$1"; shift
  "$EMBER" ps --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$dir" --checkpoint-every 0 "$@" \
    >"$dir.out" 2>"$dir.log" &
  PS_PID=$!
  for _ in $(seq 1 6000); do
    kill -0 "$PS_PID" 2>/dev/null || break
    ADDR=$(sed -n 's/^ember ps listening on //p' "$dir.out")
    METRICS=$(sed -n 's/^ember ps metrics on //p' "$dir.out")
    [ -n "$ADDR" ] && [ -n "$METRICS" ] && return 0
    sleep 0.1
  done
  echo "ps at $dir did not start (log: $dir.log)" >&2
  exit 1
}
