#!/usr/bin/env bash
# `make demo`: the product end to end on defaults. Starts what it needs, shows each
# step, and stops everything it started (also on Ctrl-C or a failed step).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-demo}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug}
mkdir -p "$DEMO_DIR"
rm -f "$DEMO_DIR/bundle.zip"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "D-Trust simulator (mutual TLS, real certificates) and a connector bundle for it"
"$BIN/dtrust-sim" --listen 127.0.0.1:0 --write-bundle "$DEMO_DIR/bundle.zip" >"$DEMO_DIR/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$DEMO_DIR/bundle.zip" ] && break; sleep 0.1; done
[ -s "$DEMO_DIR/bundle.zip" ] || { cat "$DEMO_DIR/sim.log"; echo "error: the simulator did not start" >&2; exit 1; }
cat "$DEMO_DIR/sim.log"

step "dtrust-worker check-config: what the bundle configures"
"$BIN/dtrust-worker" check-config --bundle "$DEMO_DIR/bundle.zip"

step "dtrust-worker products: the account's products (Identity Manager's Search)"
"$BIN/dtrust-worker" products --bundle "$DEMO_DIR/bundle.zip"

step "dtrust-worker test-connection: every connection (Identity Manager's Testing)"
"$BIN/dtrust-worker" test-connection --bundle "$DEMO_DIR/bundle.zip"

step "the worker: dtrust-worker run (log in $DEMO_DIR/worker.log)"
scripts/ensure-rabbitmq.sh
PREFIX=${DEMO_PREFIX:-dtrust-demo}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
rm -rf "$DEMO_DIR/store"
METRICS_PORT=${DEMO_METRICS_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
"$BIN/dtrust-worker" run --bundle "$DEMO_DIR/bundle.zip" --amqp-url "$AMQP_URL" --prefix "$PREFIX" \
  --store "$DEMO_DIR/store" --poll-interval-secs 1 --metrics-addr "127.0.0.1:$METRICS_PORT" >"$DEMO_DIR/worker.log" 2>&1 &
worker=$!
pids+=($worker)
echo "worker started (pid $worker, prefix $PREFIX)"

step "a mixed batch: PKCS#10, PKCS#12, three jobs D-Trust's rules refuse, an invalid message, a revocation"
AMQP_URL="$AMQP_URL" "$BIN/dtrust-testkit" demo-batch --prefix "$PREFIX"

step "the worker's metrics (http://127.0.0.1:$METRICS_PORT/metrics; also /healthz and /readyz)"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^dtrust_(jobs_received_total|jobs_finished_total)' | sed 's/^/  /' || echo "  (metrics not reachable)"

step "stopping the worker (SIGTERM: finishes in-flight jobs, flushes its store)"
kill -TERM "$worker"; wait "$worker" || true
grep -E "dtrust-worker (started|stopped)" "$DEMO_DIR/worker.log" | sed 's/^/  /' || true
"$BIN/dtrust-worker" jobs --store "$DEMO_DIR/store"
"$BIN/dtrust-worker" status demo-p12-1 --store "$DEMO_DIR/store"

step "a mistake: the keystore password from the environment is wrong"
DTRUST_P12PASSWORD=wrong "$BIN/dtrust-worker" check-config --bundle "$DEMO_DIR/bundle.zip" || true

step "a bundle for D-Trust's legacy SOAP interface, refused, then migrated to REST"
"$BIN/dtrust-testkit" write-bundle --legacy-soap --out "$DEMO_DIR/soap-bundle.zip"
"$BIN/dtrust-worker" check-config --bundle "$DEMO_DIR/soap-bundle.zip" || true
"$BIN/dtrust-worker" migrate-config "$DEMO_DIR/soap-bundle.zip" "$DEMO_DIR/rest-bundle.zip" --url https://127.0.0.1:8443/ --force

step "where to look next"
echo "  the worker's log:     $DEMO_DIR/worker.log"
echo "  one job:              $BIN/dtrust-worker status JOB_ID --store $DEMO_DIR/store"
echo "  your own bundle:      dtrust-worker check-config --bundle YOUR-BUNDLE.zip, then test-connection"
echo "  run it:               dtrust-worker run --bundle YOUR-BUNDLE.zip --amqp-url amqp://... (README.md)"
echo "  metrics and health:   dtrust-worker run ... --metrics-addr 0.0.0.0:9464, then http://HOST:9464/metrics, /healthz, /readyz"
echo "  several workers:      README.md, \"Several workers\""
