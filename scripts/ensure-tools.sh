#!/usr/bin/env bash
# Makes sure the tools the build and the tests call are there: cargo (with rustfmt
# and clippy) and the openssl command (tests make operators' keystores with it).
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "openssl is missing: installing Debian's openssl"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
