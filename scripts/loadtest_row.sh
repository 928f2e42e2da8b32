#!/usr/bin/env bash
# One row of the README's load-test table: the daemon pinned to core 0, the load test
# (with its mock provider) pinned to core 1, on loopback ports 19690 (daemon), 19691
# (its admin listener) and 4690 (the mock). Prints the load test's summary and leaves
# its JSON report in $OUT (default lt-<format>-<calls>.json).
#
#   scripts/loadtest_row.sh <format: pcmu|pcm24> <calls> [daemon binary] [extra loadtest args...]
#
# The daemon binary defaults to target/release/voicebridge; the load test runs from
# $CLIENT (default target/release/voicebridge), so two daemon builds can be compared with
# the same load generator, and a long run is not disturbed by a rebuild. HOLD_SECS (default 10) sets the hold, URL the load test's --url
# (URL=127.0.0.1:19692 with --protocol audiosocket). Run it on an otherwise idle machine (CPU figures are per core).
set -euo pipefail
format=${1:?format: pcmu or pcm24}
calls=${2:?number of calls}
daemon=${3:-target/release/voicebridge}
shift $(( $# >= 3 ? 3 : $# ))
client=${CLIENT:-target/release/voicebridge}
out=${OUT:-lt-$format-$calls.json}
config=$(mktemp --suffix .toml)   # the built-in defaults, overridden below
# An AudioSocket listener on 19692 for `--protocol audiosocket` (with URL=127.0.0.1:19692);
# idle otherwise. [[audiosocket]] cannot be set from the environment.
printf '[[audiosocket]]\nlisten = "127.0.0.1:19692"\nroute = "call"\n' > "$config"

OPENAI_API_KEY=sk-fake VOICEBRIDGE__CALL__PROVIDER=openai \
VOICEBRIDGE__PROVIDERS__OPENAI__URL=ws://127.0.0.1:4690/v1/realtime \
VOICEBRIDGE__PROVIDERS__OPENAI__AUDIO_FORMAT="$format" \
VOICEBRIDGE__CALL__INSTRUCTIONS='Load test call {{call_id}}' \
VOICEBRIDGE__SERVER__LISTEN=127.0.0.1:19690 VOICEBRIDGE__ADMIN__LISTEN=127.0.0.1:19691 \
VOICEBRIDGE__SERVER__PER_IP_RATE_LIMIT=0 VOICEBRIDGE__SERVER__MAX_CALLS=5000 \
VOICEBRIDGE__SERVER__MAX_HANDSHAKES_PER_IP=1024 VOICEBRIDGE__LOG__LEVEL=warn \
  taskset -c 0 "$daemon" serve --config "$config" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$config"' EXIT
# Wait for the listener (the daemon answers /healthz on its admin port once up).
for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:19691/healthz >/dev/null 2>&1; then break; fi
  sleep 0.1
done
taskset -c 1 "$client" loadtest --url "${URL:-ws://127.0.0.1:19690}" --mock-listen 127.0.0.1:4690 \
  -n "$calls" --ramp-per-sec 200 --hold-secs "${HOLD_SECS:-10}" --settle-secs 3 \
  --pid "$pid" --json-out "$out" "$@"
