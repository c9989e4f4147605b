#!/usr/bin/env bash
# A stand-alone stock-quote feed: how a real publisher drives Herald (without --demo).
# Every tick it POSTs one NDJSON batch of quote updates to quotes/<SYMBOL> with type=quote and
# retain=1, exactly what the demo page subscribes to. Bounded: it stops after DURATION seconds.
#
#   scripts/stock-feed.sh                                   # http://127.0.0.1:8080, 4 ticks/s, 10 min
#   HERALD_URL=http://127.0.0.1:9000 HERALD_KEY=secret DURATION=60 TICKS_PER_SECOND=10 scripts/stock-feed.sh
#
# HERALD_KEY is sent as 'Authorization: Bearer ...' when set (servers with --publish-key).
set -euo pipefail

url="${HERALD_URL:-http://127.0.0.1:8080}"
duration="${DURATION:-600}"
ticks="${TICKS_PER_SECOND:-4}"
auth=()
[ -n "${HERALD_KEY:-}" ] && auth=(-H "Authorization: Bearer ${HERALD_KEY}")

symbols=(AAPL MSFT GOOG AMZN NVDA META TSLA NFLX ORCL IBM)
names=("Apple" "Microsoft" "Alphabet" "Amazon" "NVIDIA" "Meta Platforms" "Tesla" "Netflix" "Oracle" "IBM")
# Prices in cents, to keep the arithmetic in bash.
opens=(18950 41420 17290 18130 12140 49800 17680 64210 13960 18370)
prices=("${opens[@]}")
volumes=(0 0 0 0 0 0 0 0 0 0)

cents() { printf '%d.%02d' $(( $1 / 100 )) $(( ($1 < 0 ? -$1 : $1) % 100 )); }
signed_cents() { if [ "$1" -lt 0 ]; then printf -- '-%s' "$(cents $(( -$1 )))"; else cents "$1"; fi; }

end=$(( $(date +%s) + duration ))
sleep_for="$(awk "BEGIN { printf \"%.3f\", 1 / $ticks }")"
sent=0
while [ "$(date +%s)" -lt "$end" ]; do
  batch=""
  for _ in 1 2; do
    i=$(( RANDOM % ${#symbols[@]} ))
    step=$(( (RANDOM % 81) - 40 ))                      # -0.40 % .. +0.40 %
    prices[i]=$(( prices[i] + prices[i] * step / 10000 ))
    [ "${prices[i]}" -lt 100 ] && prices[i]=100
    volumes[i]=$(( volumes[i] + 100 + RANDOM % 4900 ))
    change=$(( prices[i] - opens[i] ))
    percent=$(( change * 10000 / opens[i] ))             # hundredths of a percent
    now_ms=$(( $(date +%s%N) / 1000000 ))
    batch+="{\"topic\":\"quotes/${symbols[i]}\",\"type\":\"quote\",\"data\":{\"symbol\":\"${symbols[i]}\",\"name\":\"${names[i]}\",\"price\":$(cents "${prices[i]}"),\"change\":$(signed_cents "$change"),\"changePercent\":$(signed_cents "$percent"),\"volume\":${volumes[i]},\"time\":${now_ms}}}"$'\n'
  done
  if ! curl -sS --fail-with-body -o /dev/null -X POST "$url/events?retain=1" "${auth[@]}" \
      -H 'Content-Type: application/x-ndjson' --data-binary "$batch"; then
    echo "publish failed; retrying in 1 s" >&2
    sleep 1
    continue
  fi
  sent=$(( sent + 2 ))
  sleep "$sleep_for"
done
echo "stock feed: published $sent quotes to $url"
