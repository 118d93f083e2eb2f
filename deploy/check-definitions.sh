#!/usr/bin/env bash
# Checks deploy/definitions.json against the topology the worker declares, on a real
# broker: imports the definitions into a temporary vhost, starts the worker on that vhost
# (it declares every exchange, queue and binding itself, and the broker refuses any
# declaration whose arguments differ with PRECONDITION_FAILED, which stops the worker),
# then deletes the vhost. Needs rabbitmqctl on the broker's host and the built binaries
# (cargo build --workspace --bins).
#
#   deploy/check-definitions.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/debug}
VHOST=${VHOST:-dtrust-deploy-check-$$}
AMQP_HOST=${AMQP_HOST:-127.0.0.1:5672}
work=$(mktemp -d)
sim=
cleanup() {
  if [ -n "$sim" ]; then kill "$sim" 2>/dev/null || true; fi
  rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
  rm -rf "$work" "${defs:-}"
}
trap cleanup EXIT INT TERM

# The definitions, moved from vhost `/` to the temporary vhost.
# rabbitmqctl may run as the rabbitmq user: the file must be readable by it (it holds no
# secret), outside the private work directory.
defs=$(mktemp /tmp/dtrust-deploy-check.XXXXXX)
chmod 0644 "$defs"
python3 - deploy/definitions.json "$VHOST" "$defs" <<'EOF'
import json, sys
src, vhost, out = sys.argv[1:4]
d = json.load(open(src))
d["vhosts"] = [dict(v, name=vhost) for v in d.get("vhosts", [])] or [{"name": vhost}]
for key in ("exchanges", "queues", "bindings"):
    for o in d.get(key, []):
        o["vhost"] = vhost
json.dump(d, open(out, "w"))
EOF

rabbitmqctl -q add_vhost "$VHOST"
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*'
rabbitmqctl -q import_definitions "$defs"
for _ in $(seq 1 50); do
  n=$(rabbitmqctl -q list_queues -p "$VHOST" name | grep -c '^dtrust\.' || true)
  [ "$n" -ge 5 ] && break
  sleep 0.2
done
echo "imported: $(rabbitmqctl -q list_exchanges -p "$VHOST" name | grep -c '^dtrust\.') exchanges, $n queues, $(rabbitmqctl -q list_bindings -p "$VHOST" source_name | grep -c '^dtrust\.') bindings"

"$BIN/dtrust-sim" --listen 127.0.0.1:0 --write-bundle "$work/bundle.zip" >"$work/sim.log" 2>&1 &
sim=$!
for _ in $(seq 1 100); do [ -s "$work/bundle.zip" ] && break; sleep 0.1; done

# The worker runs until it declared its topology (or was refused), then gets SIGINT.
set +e
timeout -s INT 10 "$BIN/dtrust-worker" run --bundle "$work/bundle.zip" \
  --amqp-url "amqp://guest:guest@$AMQP_HOST/$VHOST" --store "$work/store" >"$work/worker.log" 2>&1
status=$?
set -e
if grep -q "topology declared" "$work/worker.log" && ! grep -q PRECONDITION_FAILED "$work/worker.log"; then
  echo "OK: the worker declared its topology over deploy/definitions.json without a conflict"
else
  sed 's/^/  /' "$work/worker.log" | tail -n 20
  echo "FAILED: deploy/definitions.json differs from what the worker declares (exit $status)" >&2
  exit 1
fi
