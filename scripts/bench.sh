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
#   CASES="tls-idle-10k tls-fanout-1k-1000 h2-idle-10k" scripts/bench.sh   # HTTPS and HTTP/2 (opt-in)
#
# The tls-* and h2-* cases run Herald with --tls-cert/--tls-key against nginx terminating TLS in
# front of Nchan (scripts/nchan-tls.conf; `http2` on the listener for h2-*), both with the same
# self-signed P-256 certificate made here with openssl in a temp dir. tls-* use herald-bench
# --tls (HTTP/1.1 over TLS); h2-idle-10k holds H2_CONNECTIONS (100) connections x H2_STREAMS
# (100) SSE streams with h2load (Debian's nghttp2-client, installed when missing) and reads the
# server's PSS from /proc while they are open (the JSON is shaped like herald-bench's idle
# report, so bench_summary.py tabulates it).
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
tls_dir="$(mktemp -d /tmp/herald-bench-tls.XXXXXX)"
h2_pid=""
stop_h2load() {
  if [ -n "$h2_pid" ]; then
    kill "$h2_pid" 2>/dev/null || true
    wait "$h2_pid" 2>/dev/null || true
    h2_pid=""
  fi
}
trap 'stop_h2load; stop_server; rm -rf "$nchan_dir" "$tls_dir"' EXIT

# A self-signed certificate for 127.0.0.1 (P-256: cheap handshakes for both servers), made once.
ensure_cert() {
  [ -s "$tls_dir/cert.pem" ] && [ -s "$tls_dir/key.pem" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1
}

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
    if [ -n "${CASE_TLS:-}" ]; then
      http2=""; [ "$CASE_TLS" = h2 ] && http2=http2
      sed -e "s#@PREFIX@#$nchan_dir#g" -e "s#@PORT@#$NCHAN_PORT#g" -e "s#@CERT@#$tls_dir/cert.pem#g" \
        -e "s#@KEY@#$tls_dir/key.pem#g" -e "s#@HTTP2@#$http2#g" scripts/nchan-tls.conf >"$nchan_dir/nginx.conf"
    else
      sed -e "s#@PREFIX@#$nchan_dir#g" -e "s#@PORT@#$NCHAN_PORT#g" scripts/nchan.conf >"$nchan_dir/nginx.conf"
    fi
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
  # HTTPS (opt-in): HTTP/1.1 over TLS, Herald's own TLS against nginx's in front of Nchan.
  [tls-idle-10k]="--scenario idle --streams 10000 --source-addresses 4 --tls"
  [tls-fanout-1k-1000]="--scenario fanout --streams 1000 --rate 1000 --duration 5 --tls"
  # HTTP/2 over TLS (opt-in): run with h2load (run_h2_idle below), not herald-bench.
  [h2-idle-10k]="h2load"
)
# Cases over TLS: h1 (HTTP/1.1) or h2 (HTTP/2, nginx listens with `http2`).
declare -A CASE_TLS_MODE=([tls-idle-10k]=h1 [tls-fanout-1k-1000]=h1 [h2-idle-10k]=h2)
H2_CONNECTIONS="${H2_CONNECTIONS:-100}"
H2_STREAMS="${H2_STREAMS:-100}"
H2_SAMPLE="${H2_SAMPLE:-10}" # seconds after h2load starts that the server's memory is read
H2_HOLD="${H2_HOLD:-15}"     # h2load --duration: how long the streams are held open

# Server memory (KiB, PSS and RSS, children included) from /proc, like herald-bench's.
proc_kib() { # proc_kib PID Pss:|VmRSS:
  local total=0 p v file
  for p in "$1" $(pgrep -P "$1" || true); do
    file=/proc/$p/smaps_rollup; [ "$2" = VmRSS: ] && file=/proc/$p/status
    v="$(awk -v k="$2" '$1 == k { print $2 }' "$file" 2>/dev/null || true)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# h2-idle-10k: H2_CONNECTIONS x H2_STREAMS idle SSE streams over HTTP/2 + TLS, held by h2load
# (the responses never end, so every request stays an open stream until --duration is over).
run_h2_idle() { # run_h2_idle CASE TARGET PORT RUN
  local path=/events?topic=bench
  [ "$2" = nchan ] && path=/sub/bench
  local total=$((H2_CONNECTIONS * H2_STREAMS)) log="$OUT/$1-$2-$4.h2load.txt"
  local pss_before rss_before pss_after rss_after
  pss_before="$(proc_kib "$server_pid" Pss:)"; rss_before="$(proc_kib "$server_pid" VmRSS:)"
  timeout $((H2_HOLD + 60)) h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -n "$total" -t 1 -D "$H2_HOLD" \
    -H 'accept: text/event-stream' "https://127.0.0.1:$3$path" >"$log" 2>&1 &
  h2_pid=$!
  sleep "$H2_SAMPLE"
  pss_after="$(proc_kib "$server_pid" Pss:)"; rss_after="$(proc_kib "$server_pid" VmRSS:)"
  local sockets
  sockets="$(ss -Htn state established "( sport = :$3 )" | wc -l)"
  wait "$h2_pid" || echo "   (h2load exited with $?)"
  h2_pid=""
  python3 - "$1" "$2" "$total" "$log" "$pss_before" "$rss_before" "$pss_after" "$rss_after" "$sockets" \
    "$OUT/$1-$2-$4.json" <<'PY'
import json, re, sys
label, target, total, log, pb, rb, pa, ra, sockets, out = sys.argv[1:]
text = open(log).read()
m = re.search(r"status codes: (\d+) 2xx", text)
ok = int(m.group(1)) if m else 0
ttfb = re.search(r"time to 1st byte:\s+(\S+)\s+(\S+)", text)
report = {"label": label, "target": target, "scenario": "idle", "tool": "h2load", "streams": int(total),
          "established": ok, "failed": int(total) - ok, "connections": int(sockets),
          "serverBefore": {"pssKiB": int(pb), "rssKiB": int(rb)}, "serverAfter": {"pssKiB": int(pa), "rssKiB": int(ra)},
          "timeToFirstByteMax": ttfb.group(2) if ttfb else None}
if ok:
    report["memoryPerStreamBytes"] = (int(pa) - int(pb)) * 1024 / ok
    report["rssPerStreamBytes"] = int(ra) * 1024 / ok
json.dump(report, open(out, "w"), sort_keys=True)
print(f"   [{target}] h2: {ok}/{total} streams (2xx) on {sockets} connections; "
      f"{report.get('memoryPerStreamBytes', 0):.0f} bytes PSS per stream; first byte max {report['timeToFirstByteMax']}")
PY
}
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

if [[ " $single_cases " == *" h2-"* ]] && ! command -v h2load >/dev/null; then
  echo "==> installing nghttp2-client (h2load)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
fi

for case in $single_cases; do
  args="${CASE_ARGS[$case]:?unknown case $case}"
  CASE_FLAGS=""
  CASE_TLS="${CASE_TLS_MODE[$case]:-}"
  if [ -n "$CASE_TLS" ]; then
    ensure_cert
    CASE_FLAGS="--tls-cert $tls_dir/cert.pem --tls-key $tls_dir/key.pem"
  fi
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
      if [ "$args" = h2load ]; then
        run_h2_idle "$case" "$target" "$port" "$run"
        stop_server
        sleep 1
        continue
      fi
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
