#!/usr/bin/env bash
# Builds the local RabbitMQ image of the container tests from Debian's own
# rabbitmq-server package, once: reused by its tag afterwards. Needs a Docker engine
# (scripts/ensure-docker.sh) and root (debootstrap). Prints the tag on its last line
# (standard output); what it does goes to standard error.
#
#   debootstrap --variant=minbase --include=rabbitmq-server SUITE target/rabbitmq-rootfs MIRROR
#   tar -C target/rabbitmq-rootfs -c . | docker import (CMD the server itself, not Debian's
#   /usr/sbin wrapper, which sends its output to a file; USER rabbitmq; RABBITMQ_LOGS=- so
#   that readiness can wait for "Server startup complete" on stdout)
#
# The suite is this machine's (/etc/os-release), the mirror the first Debian one of its
# apt sources (DTRUST_DEBIAN_MIRROR overrides it); the tag is DTRUST_RABBITMQ_IMAGE_TAG,
# default dtrust-test-rabbitmq:debian-SUITE.
set -euo pipefail
cd "$(dirname "$0")/.."

. /etc/os-release
suite=${VERSION_CODENAME:-bookworm}
tag=${DTRUST_RABBITMQ_IMAGE_TAG:-dtrust-test-rabbitmq:debian-$suite}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "RabbitMQ image $tag is there" >&2
  echo "$tag"
  exit 0
fi

mirror=${DTRUST_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -n -E 's/^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)([^[:space:]]+).*/\3/p' |
    grep -E '/debian/?$' | head -n 1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debootstrap is missing: installing Debian's debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

rootfs=target/rabbitmq-rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"
echo "building $tag: debootstrap $suite from $mirror (a minute or two)" >&2
start=$(date +%s)
if ! debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$rootfs" "$mirror" \
    >target/rabbitmq-rootfs.log 2>&1; then
  tail -n 20 target/rabbitmq-rootfs.log >&2
  echo "error: debootstrap failed; the whole log is target/rabbitmq-rootfs.log" >&2
  exit 1
fi
# Nothing of the build's own state in the image: no apt lists or caches, no cookie
# or node database made by the package's scripts.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/lib/rabbitmq/mnesia "$rootfs"/var/lib/rabbitmq/.erlang.cookie
tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]' \
  -c 'USER rabbitmq' \
  -c 'WORKDIR /var/lib/rabbitmq' \
  -c 'ENV HOME=/var/lib/rabbitmq' \
  -c 'ENV RABBITMQ_LOGS=-' \
  -c 'ENV RABBITMQ_SASL_LOGS=-' \
  -c 'LABEL dtrust-test-image=rabbitmq' \
  - "$tag" >/dev/null
rm -rf "$rootfs"
echo "built $tag in $(($(date +%s) - start)) s" >&2
echo "$tag"
