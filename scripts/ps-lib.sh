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

# start NAME PREFIX CMD...: runs CMD in the background (stdout in $OUT/NAME.out, logs in
# $OUT/NAME.log, its pid in $OUT/NAME.pid and appended to $OUT/pids) and echoes what follows
# PREFIX on its stdout once printed (up to 60 s); exits the script if it never is. It is called in
# command substitutions (subshells), so pids go through files.
start() {
  local name="$1" prefix="$2"; shift 2
  : >"$OUT/$name.out"  # exists before the first read below, whenever the child opens it
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  echo $! >>"$OUT/pids"
  echo $! >"$OUT/$name.pid"
  for _ in $(seq 1 600); do
    local v; v=$(sed -n "s/^$prefix//p" "$OUT/$name.out" | head -1)
    [ -n "$v" ] && { echo "$v"; return 0; }
    sleep 0.1
  done
  echo "$name did not start (see $OUT/$name.log)" >&2; exit 1
}

# stop_started [SIGNAL]: sends SIGNAL (default TERM) to every process `start` started; for an EXIT
# trap.
stop_started() {
  [ -f "$OUT/pids" ] || return 0
  while read -r p; do kill "-${1:-TERM}" "$p" 2>/dev/null || true; done <"$OUT/pids"
}

# bench_init [SIGNAL]: the common start of a bench script (with ROOT, EMBER and OUT set): builds
# the release binary if it is missing, empties OUT, prints the machine line, and on exit sends
# SIGNAL (default TERM) to everything `start` started.
bench_init() {
  [ -x "$EMBER" ] || (cd "$ROOT" && cargo build --release -p ember-cli)
  rm -rf "$OUT" && mkdir -p "$OUT"
  echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  # shellcheck disable=SC2064
  trap "stop_started ${1:-TERM}" EXIT
}
