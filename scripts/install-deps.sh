#!/usr/bin/env bash
# Installs what moe.cpp needs to build and test on Debian 12 (bookworm). Run as root (or with sudo).
# (xz-utils: the default model's data bundle, scripts/train/build_corpus.sh, and its rehearsal test.)
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  libgtest-dev libgmock-dev libbenchmark-dev \
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libcpp-httplib-dev libsqlite3-dev sqlite3 libssl-dev libedit-dev \
  clang libclang-rt-14-dev python3 libicu-dev xz-utils \
  libopenmpi-dev openmpi-bin \
  nodejs chromium fonts-dejavu-core
# npm: Debian's package, unless the installed Node.js already brings its own (NodeSource builds do, and
# conflict with Debian's npm).
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends npm
fi
# The chat page's libraries (web/package-lock.json), bundled into the binary at build time by web/build.mjs.
(cd "$(dirname "$0")/../web" && npm ci --no-audit --no-fund)
