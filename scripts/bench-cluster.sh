#!/usr/bin/env bash
# Herald in cluster mode (several nodes on one PostgreSQL, SPEC §12) against Nginx+Nchan with
# several nginx instances on one Redis, side by side in the same run. Called by scripts/bench.sh
# for the case names below (or run directly); every server is started by this script, bound to
# loopback, and stopped by its PID at exit; every run is bounded in count and time.
#
#   CASES="cluster-latency cluster-throughput cluster-capacity" RUNS=3 scripts/bench.sh
#   CAP_RUNS=1 CASES=cluster-capacity TARGETS=herald scripts/bench.sh
#
# Cases:
#   cluster-latency     LAT_STREAMS (1000) streams on node A, LAT_RATE (200) events/s published
#                       on node B for LAT_DURATION (20) s: publish -> receive latency across nodes.
#   cluster-throughput  acknowledged events/s with 1, 2 and 3 nodes (TP_NODES), TP_CONNECTIONS
#                       (24) publishing connections spread evenly over the nodes (one wrk per
#                       node), TP_DURATION (10) s; single-event POSTs and 10-event NDJSON batches
#                       (Nchan publishes one message per POST: batches are n/a there).
#   cluster-capacity    CAP_NODES (6) nodes hold CAP_STREAMS (100 000) streams at once, then one
#                       publish reaches all of them: deliveries/s, and memory per stream.
#
# PostgreSQL runs with fsync ON (scripts/e2e/pg.py --fsync): a publish is acknowledged only
# once committed to disk. Redis runs in memory, without snapshots or AOF (Nchan's usual setup;
# Nchan acknowledges a publish once Redis has it).
#
# Results: $OUT/cluster/*.json (one per run) and $OUT/cluster/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
CAP_RUNS="${CAP_RUNS:-$RUNS}"
OUT="${OUT:-bench-results}/cluster"
BASE_PORT="${CLUSTER_BASE_PORT:-18100}"
REDIS_PORT="${REDIS_PORT:-18379}"
CASES="${CASES:-cluster-latency cluster-throughput cluster-capacity}"
TARGETS="${TARGETS:-herald nchan}"
LAT_STREAMS="${LAT_STREAMS:-1000}"
LAT_RATE="${LAT_RATE:-200}"
LAT_DURATION="${LAT_DURATION:-20}"
TP_NODES="${TP_NODES:-1 2 3}"
TP_CONNECTIONS="${TP_CONNECTIONS:-24}"
TP_DURATION="${TP_DURATION:-10}"
CAP_NODES="${CAP_NODES:-6}"
CAP_STREAMS="${CAP_STREAMS:-100000}"
mkdir -p "$OUT"

# --- packages (idempotent) -------------------------------------------------------------------
need=()
dpkg -s nginx-light >/dev/null 2>&1 || dpkg -s nginx >/dev/null 2>&1 || need+=(nginx-light)
dpkg -s libnginx-mod-nchan >/dev/null 2>&1 || need+=(libnginx-mod-nchan)
dpkg -s redis-server >/dev/null 2>&1 || need+=(redis-server)
dpkg -s wrk >/dev/null 2>&1 || need+=(wrk)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  echo "==> installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- binaries ---------------------------------------------------------------------------------
if [ -z "${BIN:-}" ]; then
  echo "==> swift build -c release (herald, herald-bench)${SCRATCH:+ in $SCRATCH}"
  swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --product herald >/dev/null
  swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --product herald-bench >/dev/null
  BIN="$(swift build -c release ${SCRATCH:+--scratch-path "$SCRATCH"} --show-bin-path)"
fi
ulimit -n "$(ulimit -Hn)"

# --- process bookkeeping ------------------------------------------------------------------------
work="$(mktemp -d /tmp/herald-bench-cluster.XXXXXX)"
chmod 755 "$work" # the postgres user must reach the database folder under it
pids=()           # servers of the current run (herald nodes, nginx masters, redis)
pg_dir="$work/pg"
pg_url=""

stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_servers() {
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  pids=()
}
cleanup() {
  stop_servers
  if [ -n "$pg_url" ]; then python3 scripts/e2e/pg.py stop --dir "$pg_dir" --remove >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  for _ in $(seq 1 600); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  return 1
}

wait_health() { # herald: /health 200 (connected to PostgreSQL)
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/health")" = 200 ] && return 0
    sleep 0.1
  done
  echo "herald on port $1 is not healthy" >&2
  return 1
}

# A fresh database for every run (the previous one dropped), on one PostgreSQL server (fsync
# on) for the whole script. Sets db_url.
db_seq=0
db_url=""
fresh_database() {
  if [ -z "$pg_url" ]; then
    pg_url="$(timeout 180 python3 scripts/e2e/pg.py start --dir "$pg_dir" --fsync | tail -1)"
    echo "==> PostgreSQL (fsync on): $pg_url"
  fi
  db_seq=$((db_seq + 1))
  timeout 60 python3 scripts/e2e/pg.py psql --dir "$pg_dir" --db postgres "DROP DATABASE IF EXISTS bench_$((db_seq - 1)) WITH (FORCE)" >/dev/null
  timeout 60 python3 scripts/e2e/pg.py psql --dir "$pg_dir" --db postgres "CREATE DATABASE bench_$db_seq" >/dev/null
  db_url="${pg_url%/*}/bench_$db_seq"
}

ports=()
server_pids=()
start_cluster() { # start_cluster herald|nchan N: N nodes on ports BASE_PORT..BASE_PORT+N-1
  local target="$1" count="$2" i port
  ports=()
  server_pids=()
  if [ "$target" = herald ]; then
    fresh_database
    for i in $(seq 0 $((count - 1))); do
      port=$((BASE_PORT + i))
      "$BIN/herald" --host 127.0.0.1 --port "$port" --threads 2 --history 10000 --max-body-bytes 1048576 \
        --log-level error --store "$db_url" ${HERALD_FLAGS:-} >/dev/null 2>>"$OUT/herald-node$i.stderr" &
      pids+=($!)
      server_pids+=($!)
      ports+=("$port")
    done
    for port in "${ports[@]}"; do wait_port "$port" && wait_health "$port"; done
  else
    rm -rf "$work/redis" && mkdir -p "$work/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
      --dir "$work/redis" --loglevel warning >"$OUT/redis.stderr" 2>&1 &
    pids+=($!)
    wait_port "$REDIS_PORT"
    for i in $(seq 0 $((count - 1))); do
      port=$((BASE_PORT + i))
      local prefix="$work/nginx$i"
      rm -rf "$prefix" && mkdir -p "$prefix"
      sed -e "s#@PREFIX@#$prefix#g" -e "s#@PORT@#$port#g" -e "s#@REDIS_PORT@#$REDIS_PORT#g" \
        scripts/nchan-redis.conf >"$prefix/nginx.conf"
      nginx -p "$prefix" -c "$prefix/nginx.conf" >>"$OUT/nchan-node$i.stderr" 2>&1 &
      pids+=($!)
      server_pids+=($!)
      ports+=("$port")
    done
    for port in "${ports[@]}"; do wait_port "$port"; done
  fi
  sleep 1
}

pid_args() { local pid; for pid in "${server_pids[@]}"; do printf -- '--server-pid %s ' "$pid"; done; }

# --- cases -----------------------------------------------------------------------------------
run_latency() { # target run
  local target="$1" run="$2"
  start_cluster "$target" 2
  echo "==> cluster-latency / $target / run $run: $LAT_STREAMS streams on :${ports[0]}, $LAT_RATE/s published on :${ports[1]}"
  # shellcheck disable=SC2046
  timeout 300 "$BIN/herald-bench" --target "$target" --scenario fanout --port "${ports[0]}" --pub-port "${ports[1]}" \
    --streams "$LAT_STREAMS" --rate "$LAT_RATE" --duration "$LAT_DURATION" $(pid_args) \
    --label cluster-latency --json "$OUT/cluster-latency-$target-$run.json" >/dev/null 2>"$work/bench.log" \
    || echo "   (run failed: $?)"
  sed 's/^/   /' "$work/bench.log" | tail -6
  stop_servers
}

write_wrk_script() { # file content-type body-file events-per-request
  cat >"$1" <<EOF
local f = io.open("$3", "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "$2"
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"durationMicros":%d,"connectErrors":%d,"readErrors":%d,"writeErrors":%d,"statusErrors":%d,"timeouts":%d,"latencyP50Micros":%d,"latencyP99Micros":%d,"latencyMaxMicros":%d,"eventsPerRequest":$4}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
EOF
}

run_throughput() { # target nodes mode(single|batch) run
  local target="$1" nodes="$2" mode="$3" run="$4"
  local per=$((TP_CONNECTIONS / nodes)) path body ctype events=1
  payload="$(printf 'x%.0s' $(seq 1 100))"
  if [ "$mode" = batch ]; then
    events=10
    ctype="application/x-ndjson"
    : >"$work/body"
    for i in $(seq 1 10); do printf '{"topic":"bench","data":"%s"}\n' "$payload" >>"$work/body"; done
    path="/events"
  else
    ctype="text/plain"
    printf '%s' "$payload" >"$work/body"
    path="/events?topic=bench"
    [ "$target" = nchan ] && path="/pub/bench"
  fi
  write_wrk_script "$work/post.lua" "$ctype" "$work/body" "$events"
  echo "==> cluster-throughput / $target / $nodes node(s) / $mode / run $run: $per connections per node, ${TP_DURATION}s"
  local wrk_pids=() i
  for i in $(seq 0 $((nodes - 1))); do
    timeout $((TP_DURATION + 30)) wrk -t1 -c"$per" -d"${TP_DURATION}s" --timeout 10s -s "$work/post.lua" \
      "http://127.0.0.1:${ports[$i]}$path" >"$work/wrk$i.out" 2>&1 &
    wrk_pids+=($!)
  done
  local failed=0
  for pid in "${wrk_pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || echo "   (a wrk run failed)"
  python3 - "$OUT/cluster-throughput-$target-n$nodes-$mode-$run.json" "$target" "$nodes" "$mode" "$per" "$work"/wrk*.out <<'EOF'
import json, sys
out, target, nodes, mode, per, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6:]
parts = []
for name in files:
    text = open(name).read()
    line = [l for l in text.splitlines() if l.startswith("WRKJSON ")]
    parts.append(json.loads(line[-1][8:]) if line else {"error": text[-500:]})
ok = [p for p in parts if "requests" in p]
acked = sum((p["requests"] - p["statusErrors"]) * p["eventsPerRequest"] for p in ok)
seconds = max((p["durationMicros"] for p in ok), default=0) / 1e6
report = {"label": "cluster-throughput", "target": target, "nodes": nodes, "mode": mode,
          "connectionsPerNode": per, "nodeRuns": parts,
          "requests": sum(p["requests"] for p in ok),
          "errors": sum(p["connectErrors"] + p["readErrors"] + p["writeErrors"] + p["statusErrors"] + p["timeouts"] for p in ok),
          "acknowledgedEvents": acked, "seconds": seconds,
          "acknowledgedEventsPerSecond": acked / seconds if seconds else None,
          "postLatencyP99Micros": max((p["latencyP99Micros"] for p in ok), default=None),
          "postLatencyP50Micros": sorted(p["latencyP50Micros"] for p in ok)[len(ok) // 2] if ok else None,
          "failedNodes": len(parts) - len(ok)}
json.dump(report, open(out, "w"), indent=1)
print(f"   {report['acknowledgedEventsPerSecond'] or 0:,.0f} acknowledged events/s, {report['requests']:,} requests, "
      f"{report['errors']} errors, POST p99 {(report['postLatencyP99Micros'] or 0) / 1000:.1f} ms")
EOF
  rm -f "$work"/wrk*.out
}

run_capacity() { # target run
  local target="$1" run="$2"
  start_cluster "$target" "$CAP_NODES"
  local list
  list="$(IFS=,; echo "${ports[*]}")"
  echo "==> cluster-capacity / $target / run $run: $CAP_STREAMS streams over $CAP_NODES nodes ($list), one publish on :${ports[0]}"
  # shellcheck disable=SC2046
  timeout 600 "$BIN/herald-bench" --target "$target" --scenario capacity --port "${ports[0]}" --ports "$list" \
    --pub-port "${ports[0]}" --streams "$CAP_STREAMS" --processes "$CAP_NODES" --source-addresses 8 \
    --rate 1 --duration 1 --publishers 1 --settle 5 $(pid_args) \
    --label cluster-capacity --json "$OUT/cluster-capacity-$target-$run.json" >/dev/null 2>"$work/bench.log" \
    || echo "   (run failed: $?)"
  sed 's/^/   /' "$work/bench.log" | tail -9
  stop_servers
}

for case in $CASES; do
  case "$case" in
    cluster-latency | cluster-throughput | cluster-capacity) ;;
    *) echo "unknown cluster case $case" >&2; exit 2 ;;
  esac
  runs="$RUNS"; [ "$case" = cluster-capacity ] && runs="$CAP_RUNS"
  for run in $(seq 1 "$runs"); do
    # Alternate which server goes first (see bench.sh).
    if [ $((run % 2)) = 1 ]; then order="herald nchan"; else order="nchan herald"; fi
    for target in $order; do
      case " $TARGETS " in *" $target "*) ;; *) continue ;; esac
      case "$case" in
        cluster-latency) run_latency "$target" "$run" ;;
        cluster-capacity) run_capacity "$target" "$run" ;;
        cluster-throughput)
          for nodes in $TP_NODES; do
            start_cluster "$target" "$nodes"
            run_throughput "$target" "$nodes" single "$run"
            [ "$target" = herald ] && run_throughput "$target" "$nodes" batch "$run"
            stop_servers
          done
          ;;
      esac
      sleep 1
    done
  done
done

python3 scripts/bench_cluster_summary.py "$OUT" | tee "$OUT/results.md"
