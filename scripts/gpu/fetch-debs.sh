#!/usr/bin/env bash
# Downloads (never installs) the Debian 12 packages the build needs into .deps/debs, so scripts/gpu/run.sh can
# unpack them on a GPU machine that has CUDA, a compiler and CMake but no package registry.
# Run on a Debian 12 machine with apt: scripts/gpu/fetch-debs.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps/debs
cd .deps/debs
pkgs=(
  libfmt-dev libfmt9 libcli11-dev nlohmann-json3-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libsqlite3-dev libsqlite3-0 libcpp-httplib-dev libcpp-httplib0.11
  libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian
  libssl-dev libssl3 zlib1g-dev zlib1g libbrotli-dev libbrotli1
  pkgconf pkgconf-bin libpkgconf3 pkg-config
)
apt-get download "${pkgs[@]}"
ls -1 *.deb | wc -l
