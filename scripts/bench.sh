#!/usr/bin/env bash
# Herald against Nginx+Nchan, side by side on this machine: the same herald-bench scenarios,
# alternating servers, RUNS runs each (default 3), medians in a table. Every server is started
# fresh for every run (so idle memory is measured from a clean process), bound to loopback,
# and stopped by its PID. Every run is bounded in streams, events and time.
#
#   scripts/bench.sh                 # everything (about 20-30 minutes on 2 cores)
#   CASES="idle-10k fanout-1k-1000" RUNS=1 scripts/bench.sh
#   HERALD_FLAGS="--stream-writes pipeline" TARGETS=herald scripts/bench.sh   # extra flags; one server only
#   CASES="cluster-latency cluster-throughput cluster-capacity" scripts/bench.sh   # cluster mode (opt-in)
#   SCRATCH=.build-bench scripts/bench.sh   # build in another folder (swift build --scratch-path)
#
# Results: bench-results/<case>-<target>-<run>.json and bench-results/results.md. The cluster-*
# cases (Herald nodes on one PostgreSQL against nginx+Nchan instances on one Redis) are run by
# scripts/bench-cluster.sh, results in bench-results/cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
OUT="${OUT:-bench-results}"
HERALD_PORT="${HERALD_PORT:-18080}"
NCHAN_PORT="${NCHAN_PORT:-18081}"
mkdir -p "$OUT"

if ! dpkg -s nginx-light >/dev/null 2>&1 && ! dpkg -s nginx >/dev/null 2>&1 || ! dpkg -s libnginx-mod-nchan >/dev/null 2>&1; then
  echo "==> installing nginx-light and libnginx-mod-nchan"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
fi
dpkg -s zlib1g-dev >/dev/null 2>&1 || apt-get install -y -qq zlib1g-dev >/dev/null

SCRATCH="${SCRATCH:-}" # empty: SwiftPM's default .build
echo "==> swift build -c release (herald, herald-bench)${SCRATCH:+ in $SCRATCH}"
swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --product herald >/dev/null
swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --product herald-bench >/dev/null
bin="$(swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --show-bin-path)"
ulimit -n "$(ulimit -Hn)"

nchan_dir="$(mktemp -d /tmp/herald-bench-nchan.XXXXXX)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$nchan_dir"' EXIT

wait_port() {
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  return 1
}

start_server() { # start_server herald|nchan
  if [ "$1" = herald ]; then
    # shellcheck disable=SC2086 # HERALD_FLAGS is a list of flags
    "$bin/herald" --host 127.0.0.1 --port "$HERALD_PORT" --threads 2 --history 10000 \
      --max-body-bytes 1048576 --log-level error ${HERALD_FLAGS:-} ${CASE_FLAGS:-} >/dev/null 2>"$OUT/herald.stderr" &
    server_pid=$!
    wait_port "$HERALD_PORT"
  else
    rm -rf "$nchan_dir"/*
    sed -e "s#@PREFIX@#$nchan_dir#g" -e "s#@PORT@#$NCHAN_PORT#g" scripts/nchan.conf >"$nchan_dir/nginx.conf"
    nginx -p "$nchan_dir" -c "$nchan_dir/nginx.conf" >"$OUT/nchan.stderr" 2>&1 &
    server_pid=$!
    wait_port "$NCHAN_PORT"
  fi
  sleep 0.5
}

declare -A CASE_ARGS=(
  [idle-1k]="--scenario idle --streams 1000"
  [idle-10k]="--scenario idle --streams 10000 --source-addresses 4"
  [idle-19k]="--scenario idle --streams 19000 --source-addresses 8"
  [fanout-1k-100]="--scenario fanout --streams 1000 --rate 100 --duration 10"
  [fanout-1k-1000]="--scenario fanout --streams 1000 --rate 1000 --duration 5"
  [fanout-10k-100]="--scenario fanout --streams 10000 --rate 100 --duration 5 --source-addresses 4"
  [fanout-10k-1000]="--scenario fanout --streams 10000 --rate 1000 --duration 2 --source-addresses 4"
  [topics-10k]="--scenario fanout --streams 10000 --topics 10000 --rate 1000 --duration 10 --source-addresses 4"
  [reconnect-10k]="--scenario reconnect --streams 10000 --topics 100 --rate 200 --duration 3 --gap-events 1000 --source-addresses 4"
  # The same storm with subscriber authorization on (SPEC §14): every reconnect presents an
  # HS256 token in the query, which Herald verifies; compare with reconnect-10k (Herald only).
  [reconnect-10k-auth]="--scenario reconnect --streams 10000 --topics 100 --rate 200 --duration 3 --gap-events 1000 --source-addresses 4"
)
# Cases that run against Herald only, with extra server flags and a subscribe path.
BENCH_SUBSCRIBER_KEY="bench-subscriber-key-0123456789abcdef-0123"
declare -A CASE_HERALD_ONLY=([reconnect-10k-auth]=1)
ORDER="idle-1k idle-10k idle-19k fanout-1k-100 fanout-1k-1000 fanout-10k-100 fanout-10k-1000 topics-10k reconnect-10k"
CASES="${CASES:-$ORDER}"
cluster_cases=""
single_cases=""
for case in $CASES; do
  case "$case" in cluster-*) cluster_cases="$cluster_cases $case" ;; *) single_cases="$single_cases $case" ;; esac
done

for case in $single_cases; do
  args="${CASE_ARGS[$case]:?unknown case $case}"
  CASE_FLAGS=""
  case_targets="${TARGETS:-herald nchan}"
  if [ -n "${CASE_HERALD_ONLY[$case]:-}" ]; then
    case_targets="herald"
    CASE_FLAGS="--subscriber-key $BENCH_SUBSCRIBER_KEY"
    token="$("$bin/herald" token --key "$BENCH_SUBSCRIBER_KEY" --topic '*' --ttl 7200)"
    args="$args --sub-path /events?topic={topic}&access_token=$token"
  fi
  for run in $(seq 1 "$RUNS"); do
    # Alternate which server goes first, so neither always runs on a machine still busy
    # with the other's teardown.
    if [ $((run % 2)) = 1 ]; then targets="herald nchan"; else targets="nchan herald"; fi
    for target in $targets; do
      case " $case_targets " in *" $target "*) ;; *) continue ;; esac
      port=$HERALD_PORT; [ "$target" = nchan ] && port=$NCHAN_PORT
      start_server "$target"
      echo "==> $case / $target / run $run"
      # shellcheck disable=SC2086
      timeout 300 "$bin/herald-bench" --target "$target" --port "$port" --server-pid "$server_pid" \
        --label "$case" --json "$OUT/$case-$target-$run.json" $args >/dev/null || echo "   (run failed: $?)"
      stop_server
      sleep 1
    done
  done
done

if [ -n "$single_cases" ]; then
  python3 scripts/bench_summary.py "$OUT" | tee "$OUT/results.md"
fi
if [ -n "$cluster_cases" ]; then
  stop_server
  BIN="$bin" OUT="$OUT" CASES="$cluster_cases" scripts/bench-cluster.sh
fi
