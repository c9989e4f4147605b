#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotently), runs the Swift test
# suites (HeraldCore unit tests, HeraldServer integration tests over real sockets), then
# drives the built `herald` binary with curl (flags from the environment, stream, publish,
# 406, keep-alive, static page, graceful SIGTERM) and with headless Chromium (scripts/e2e:
# the demo page, a cross-origin EventSource that resumes, the /poll fallback, a restart).
# Every part runs even when one fails; the last line is the total over all of them.
#
# Needs root only to install missing Debian packages (apt-get); the Python packages go into a
# virtual environment of its own (.venv-test), so a stock Debian Python ("externally managed")
# works and nothing is installed system-wide. The cluster tests (scripts/e2e/test_cluster.py)
# start a throwaway PostgreSQL in a temporary folder and stop it at their end.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # the TLS tests make their certificates
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_apt+=(zlib1g-dev)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The cluster tests start a throwaway PostgreSQL of their own (scripts/e2e/pg.py).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian starts the services it installs (PostgreSQL's main cluster among them); the
  # tests start their own servers, so nothing is started here (policy-rc.d: 101 = refuse).
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; own_policy=true; fi
  status=0
  { apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null; } || status=$?
  if $own_policy; then rm -f "$policy"; fi
  [ "$status" -eq 0 ] || { echo "installing ${need_apt[*]} failed" >&2; exit "$status"; }
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  log "installing python3-venv"; export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
}
venv=".venv-test"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import selenium, pytest, h2' 2>/dev/null || {
  log "installing selenium, pytest and h2 into $venv"; "$venv/bin/python" -m pip install -q selenium pytest h2
}
python="$venv/bin/python"

# Totals over every part, for the last line.
total_passed=0
total_failed=0
count_swift() { # count_swift LOGFILE: adds a Swift Testing run's results to the totals
  local line tests failed
  line="$(grep -E '^. Test run with [0-9]+ tests' "$1" | tail -n 1)"
  tests="$(printf '%s' "$line" | sed -E 's/.*Test run with ([0-9]+) tests.*/\1/')"
  failed="$(grep -cE '^. Test ".*" failed after' "$1" || true)"
  if [ -z "$tests" ]; then total_failed=$((total_failed + 1)); return; fi
  total_passed=$((total_passed + tests - failed))
  total_failed=$((total_failed + failed))
}

log "swift build (debug, with tests)"
swift build --build-tests

logs="$(mktemp -d)"
log "swift test"
# The hostile-client suite measures this process's memory while it attacks the in-process
# server, so it runs on its own, after the others (whose allocations would blur it). Only
# Swift Testing runs: the project has no XCTest cases.
swift test --skip-build --disable-xctest --skip HardeningTests 2>&1 | tee "$logs/swift.log" || true
count_swift "$logs/swift.log"
log "swift test: hostile clients (SPEC §16), alone"
swift test --skip-build --disable-xctest --filter HardeningTests 2>&1 | tee "$logs/hardening.log" || true
count_swift "$logs/hardening.log"

log "end-to-end: the herald binary driven by curl"
bin="$(swift build --show-bin-path)/herald"
work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$work" "$logs"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check NAME COMMAND...
  local name="$1"; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   - $name"; else failed=$((failed + 1)); echo "FAIL - $name"; fi
}

# A bad flag and a bad environment value are usage errors.
check "unknown flag is a usage error" bash -c "! '$bin' --no-such-flag >/dev/null 2>&1"
check "bad HERALD_PORT is a usage error naming the variable" bash -c "HERALD_PORT=abc '$bin' >/dev/null 2>'$work/env-err'; test \$? = 64 && grep -q 'HERALD_PORT' '$work/env-err'"
check "--version prints the version" bash -c "'$bin' --version | grep -qE '^[0-9]+\.[0-9]+\.[0-9]+$'"
check "--help lists the flags" bash -c "'$bin' --help | grep -q -- '--max-queued-bytes'"
check "--store with an unknown scheme is a usage error (64) naming the flag" bash -c "'$bin' --store bogus >/dev/null 2>'$work/store-err'; test \$? = 64 && grep -q -- '--store' '$work/store-err'"
check "--store sqlite: without a path is a usage error" bash -c "'$bin' --store sqlite: >/dev/null 2>&1; test \$? = 64"
check "--history-max-age 0 and --cache 0 are usage errors" bash -c "'$bin' --history-max-age 0 >/dev/null 2>&1; a=\$?; '$bin' --cache 0 >/dev/null 2>&1; b=\$?; test \$a = 64 && test \$b = 64"
check "non-finite or out-of-range numbers are usage errors (64) naming the flag" bash -c "for args in '--keepalive 1e300' '--keepalive nan' '--history-max-age inf' '--history-max-age -1' '--shutdown-grace 1e300' '--history 0' '--max-retained 0' '--threads 100000'; do '$bin' \$args >/dev/null 2>'$work/num-err'; code=\$?; flag=\${args%% *}; test \$code = 64 && grep -q -- \"\$flag\" '$work/num-err' || { echo \"\$args: exit \$code\"; exit 1; }; done"
check "a second herald on the same sqlite: file refuses to start, saying it is in use" bash -c "'$bin' --port 0 --store sqlite:'$work/one.db' >'$work/first-out' 2>/dev/null & first=\$!; for _ in \$(seq 1 100); do grep -q listening '$work/first-out' && break; sleep 0.05; done; timeout 10 '$bin' --port 0 --store sqlite:'$work/one.db' >/dev/null 2>'$work/second-err'; code=\$?; kill \$first; wait \$first; test \$code != 0 && grep -q 'in use' '$work/second-err'"
check "a port in use is named, with --port suggested" bash -c "'$bin' --port 0 >'$work/taken-out' 2>/dev/null & first=\$!; for _ in \$(seq 1 100); do grep -q listening '$work/taken-out' && break; sleep 0.05; done; port=\$(sed -n 's/.*:\([0-9]*\)\$/\1/p' '$work/taken-out' | head -n 1); timeout 10 '$bin' --port \$port >/dev/null 2>'$work/taken-err'; code=\$?; kill \$first; wait \$first; test \$code != 0 && grep -q \"127.0.0.1:\$port\" '$work/taken-err' && grep -q -- '--port' '$work/taken-err'"
check "an unopenable store file stops herald with an error naming it" bash -c "! timeout 10 '$bin' --port 0 --store sqlite:/nonexistent-dir/e.db >/dev/null 2>'$work/open-err' && grep -q 'nonexistent-dir/e.db' '$work/open-err'"

HERALD_PORT=0 HERALD_PUBLISH_KEY="k-one, k-two" HERALD_KEEPALIVE=1 HERALD_PUBLIC=public \
  "$bin" --host 127.0.0.1 >"$work/stdout" 2>"$work/stderr" &
pid=$!
for _ in $(seq 1 200); do grep -q '^listening on ' "$work/stdout" 2>/dev/null && break; sleep 0.05; done
url="$(sed -n 's/^listening on //p' "$work/stdout" | head -n 1)"
check "prints 'listening on http://HOST:PORT'" test -n "$url"
echo "     server at $url"

code="$(curl -s -o "$work/406" -w '%{http_code}' "$url/events?topic=demo")"
check "subscribe without Accept is 406" test "$code" = 406
check "406 detail tells curl users the header" grep -q "Accept: text/event-stream" "$work/406"

curl -s -N --max-time 4 -H 'Accept: text/event-stream' "$url/events?topic=demo&client=curl_client" >"$work/stream" &
for _ in $(seq 1 100); do grep -q 'herald.hello' "$work/stream" 2>/dev/null && break; sleep 0.05; done
check "stream starts with retry: and herald.hello" bash -c "head -n 1 '$work/stream' | grep -q '^retry: 3000' && grep -q 'event: herald.hello' '$work/stream'"

code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/events?topic=demo" --data-binary 'no key')"
check "publish without a key is 401 (HERALD_PUBLISH_KEY is read)" test "$code" = 401
ids="$(curl -s -X POST "$url/events?topic=demo&type=note" -H 'Authorization: Bearer k-two' -H 'Content-Type: text/plain' --data-binary $'first line\nsecond line')"
check "raw publish with the second key returns ids" bash -c "echo '$ids' | grep -q '\"ids\":\[\"[0-9]*\"\]'"
curl -s -X POST "$url/events" -H 'Authorization: Bearer k-one' -H 'Content-Type: application/x-ndjson' \
  --data-binary $'{"topic":"demo","data":{"price":1.5}}\n{"topic":"other","data":"x"}\n' >/dev/null
sleep 1.6
check "the stream got the raw event as two data: lines" grep -q '^data: second line' "$work/stream"
check "the stream got the NDJSON event, not the other topic" bash -c "grep -q '^data: {\"price\":1.5}' '$work/stream' && ! grep -q '^data: x$' '$work/stream'"
check "a keep-alive comment followed a silent second" grep -q '^:' "$work/stream"

code="$(curl -s -o "$work/index" -w '%{http_code}' "$url/")"
check "GET / serves public/index.html" bash -c "test '$code' = 200 && grep -qi '<html' '$work/index'"
check "/health is ok" bash -c "curl -s '$url/health' | grep -q '\"status\":\"ok\"'"

HERALD_URL="$url" HERALD_KEY=k-one DURATION=2 TICKS_PER_SECOND=5 scripts/stock-feed.sh >"$work/feed" 2>&1 || true
check "scripts/stock-feed.sh publishes (with HERALD_KEY)" grep -q '^stock feed: published [1-9]' "$work/feed"
check "its quotes are retained: /poll returns them at once" bash -c "curl -s '$url/poll?topic=quotes/*&timeout=0' | grep -q '\"type\":\"quote\"'"

start=$(date +%s%N)
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
pid=""
check "SIGTERM: exit 0 (got $status) within 5 s (took ${elapsed_ms} ms)" bash -c "test $status = 0 && test $elapsed_ms -lt 5000"

echo
echo "end-to-end: $passed passed, $failed failed"
total_passed=$((total_passed + passed))
total_failed=$((total_failed + failed))

log "browser and process tests (pytest): headless Chromium, crash recovery, descriptor limits"
HERALD_BIN="$bin" "$python" -m pytest -q -p no:cacheprovider scripts/e2e 2>&1 | tee "$logs/pytest.log" || true
pytest_passed="$(grep -oE '[0-9]+ passed' "$logs/pytest.log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)"
pytest_failed=0
for n in $(grep -oE '[0-9]+ (failed|errors?)\b' "$logs/pytest.log" | grep -oE '^[0-9]+' || true); do
  pytest_failed=$((pytest_failed + n))
done
[ -n "$pytest_passed" ] || pytest_passed=0
[ "$pytest_passed" -gt 0 ] || pytest_failed=$((pytest_failed + 1))
total_passed=$((total_passed + pytest_passed))
total_failed=$((total_failed + pytest_failed))

echo
echo "herald: $total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
