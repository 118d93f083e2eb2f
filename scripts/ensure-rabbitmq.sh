#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers for the tests and the demo.
# With AMQP_URL set, only that broker is checked. Without it, the local broker at
# 127.0.0.1:5672 is used, and started (installed from Debian's packages if missing)
# when none answers.
set -euo pipefail

url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# amqp://user:pass@host:port/vhost -> host and port
rest=${url#*://}
rest=${rest#*@}
hostport=${rest%%/*}
host=${hostport%%:*}
port=${hostport##*:}
[ "$port" = "$hostport" ] && port=5672

answers() { timeout 2 bash -c "</dev/tcp/$host/$port" 2>/dev/null; }

if answers; then
  echo "RabbitMQ answers at $host:$port"
  exit 0
fi
if [ -n "${AMQP_URL:-}" ]; then
  echo "error: AMQP_URL=$AMQP_URL does not answer; start that broker or unset AMQP_URL to use a local one" >&2
  exit 1
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is not installed: installing Debian's rabbitmq-server"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing rabbitmq-server needs root (sudo apt-get install rabbitmq-server)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
echo "starting the local RabbitMQ (rabbitmq-server -detached)"
rabbitmq-server -detached || true
for _ in $(seq 1 90); do
  if answers; then
    echo "RabbitMQ answers at $host:$port"
    exit 0
  fi
  sleep 1
done
echo "error: RabbitMQ did not start within 90 s; see /var/log/rabbitmq/" >&2
exit 1
