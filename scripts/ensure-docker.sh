#!/usr/bin/env bash
# Runs COMMAND with a Docker engine for the container tests, and cleans up after it.
#
#   scripts/ensure-docker.sh [--optional] COMMAND [ARGS...]
#
# - An engine that already answers (DOCKER_HOST, else /var/run/docker.sock) is used as
#   it is, and left running.
# - Else dockerd is started here (Debian's docker.io is installed when missing): host
#   networking only (--bridge=none, no iptables, forwarding or masquerading), its own
#   data root (DTRUST_DOCKER_ROOT, default target/docker) and its own socket, exec root
#   and pid file under /run/dtrust-docker. COMMAND gets DOCKER_HOST pointing at it.
# - DTRUST_TEST_RABBITMQ_IMAGE, unless set, becomes the local image that
#   scripts/rabbitmq-image.sh builds once from Debian's rabbitmq-server package.
# - At the end, also after a failure or Ctrl-C, every container labelled `dtrust-test`
#   is removed, and a dockerd started here is stopped by its PID.
#
# COMMAND runs with DTRUST_DOCKER=1. With --optional, when no engine can be had and
# CI is not set, COMMAND runs anyway with DTRUST_DOCKER=0 and the reason in
# DTRUST_DOCKER_SKIPPED (the container tests then show as skipped, never as passed);
# in CI, or without --optional, that is an error. Exits with COMMAND's status.
set -uo pipefail
cd "$(dirname "$0")/.."

optional=0
if [ "${1:-}" = "--optional" ]; then
  optional=1
  shift
fi
if [ $# -eq 0 ]; then
  echo "usage: $0 [--optional] COMMAND [ARGS...]" >&2
  exit 2
fi

run_dir=/run/dtrust-docker
data_root=${DTRUST_DOCKER_ROOT:-$PWD/target/docker}
started_pid=

answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

remove_test_containers() {
  local ids
  ids=$(timeout 30 docker ps -aq --filter label=dtrust-test 2>/dev/null || true)
  if [ -n "$ids" ]; then
    echo "removing the test containers left: $(echo $ids)"
    # shellcheck disable=SC2086
    timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
  fi
}

stop_dockerd() {
  [ -n "$started_pid" ] || return 0
  echo "stopping dockerd (pid $started_pid)"
  kill -TERM "$started_pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$started_pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$started_pid" 2>/dev/null; then
    echo "dockerd did not stop within 30 s: SIGKILL" >&2
    kill -KILL "$started_pid" 2>/dev/null || true
  fi
  wait "$started_pid" 2>/dev/null || true
  started_pid=
}

cleanup() {
  if [ "${DTRUST_DOCKER:-0}" = 1 ]; then
    remove_test_containers
    left=$(timeout 30 docker ps -aq --filter label=dtrust-test 2>/dev/null | wc -l)
    [ "$left" -eq 0 ] || echo "warning: $left test containers could not be removed" >&2
  fi
  stop_dockerd
}

# Makes Docker answer (starting dockerd if need be); else returns 1 with the reason in $why.
why=
bring_up() {
  if answers; then
    echo "Docker answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
    return 0
  fi
  local own="unix://$run_dir/docker.sock"
  if [ -z "${DOCKER_HOST:-}" ] && DOCKER_HOST=$own answers; then
    export DOCKER_HOST=$own
    echo "Docker answers at $DOCKER_HOST (started by another run; left running)"
    return 0
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    why="DOCKER_HOST=$DOCKER_HOST does not answer"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    why="no Docker engine answers, and starting one needs root"
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd is missing: installing Debian's docker.io" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }; then
      why="installing docker.io failed"
      return 1
    fi
  fi
  mkdir -p "$run_dir" "$data_root" target
  if [ -f "$run_dir/dockerd.pid" ] && ! kill -0 "$(cat "$run_dir/dockerd.pid")" 2>/dev/null; then
    rm -f "$run_dir/dockerd.pid"
  fi
  echo "starting dockerd (host networking only, data root $data_root, log target/dockerd.log)" >&2
  dockerd \
    --bridge=none --iptables=false --ip-forward=false --ip-masq=false --ip6tables=false \
    --data-root "$data_root" --exec-root "$run_dir/exec" --pidfile "$run_dir/dockerd.pid" \
    -H "$own" >target/dockerd.log 2>&1 &
  started_pid=$!
  export DOCKER_HOST=$own
  for _ in $(seq 1 120); do
    if answers; then
      echo "Docker answers at $DOCKER_HOST (dockerd pid $started_pid)"
      return 0
    fi
    if ! kill -0 "$started_pid" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  tail -n 5 target/dockerd.log >&2
  stop_dockerd
  unset DOCKER_HOST
  why="dockerd did not start (target/dockerd.log)"
  return 1
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if bring_up; then
  export DTRUST_DOCKER=1
  remove_test_containers
  if [ -z "${DTRUST_TEST_RABBITMQ_IMAGE:-}" ]; then
    if ! image=$(scripts/rabbitmq-image.sh | tail -n 1); then
      echo "error: the local RabbitMQ image could not be built" >&2
      exit 1
    fi
    export DTRUST_TEST_RABBITMQ_IMAGE=$image
  fi
  echo "container tests use $DTRUST_TEST_RABBITMQ_IMAGE"
else
  if [ $optional -eq 0 ] || [ "${CI:-}" = true ]; then
    echo "error: no Docker engine for the container tests: $why" >&2
    exit 1
  fi
  export DTRUST_DOCKER=0 DTRUST_DOCKER_SKIPPED="$why"
  echo "container tests skipped: $why"
fi

"$@"
