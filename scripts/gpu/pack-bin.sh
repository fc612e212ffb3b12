#!/usr/bin/env bash
# Binaries built on the development machine (CUDA toolkit, sm_90a) packed for a GPU call, so the call spends no
# device time building: the given files of a build folder, at their paths inside it, with the shared libraries
# they load from the system's lib folder (not glibc's, not CUDA's: the box has its own), in one xz tarball
# under .bin (ignored through .git/info/exclude; carry ".bin"). On the box, `scripts/gpu/run.sh unpack ...` puts
# it in build-gpu (unpack-base: build-base) and the stages run as after `build`.
#   cmake --build build --target moe test_cuda sandbox_moe_decode_experts
#   scripts/gpu/pack-bin.sh                                   # build -> .bin/binpk.tar.xz, the default files
#   scripts/gpu/pack-bin.sh .base/build .bin/basepk.tar.xz src/cli/moe
# The pack names what it was built from (BUILT: moe --version, which names its commit). The upload limit is 64 MiB
# with the tree: moe, test_cuda and one sandbox with their libraries come to ~26 MB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
BUILD=${1:-build}
TAR=${2:-.bin/binpk.tar.xz}
shift $(($# > 2 ? 2 : $#))
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(src/cli/moe tests/cuda/test_cuda bench/gpu/sandbox/sandbox_moe_decode_experts)
EX=$(git rev-parse --git-path info/exclude)
grep -qxF "/.bin/" "$EX" 2>/dev/null || echo "/.bin/" >> "$EX"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/lib" "$(dirname "$TAR")"
for f in "${FILES[@]}"; do
  [ -x "$BUILD/$f" ] || { echo "pack-bin.sh: no executable $BUILD/$f" >&2; exit 2; }
  mkdir -p "$STAGE/$(dirname "$f")"
  cp "$BUILD/$f" "$STAGE/$f"
  # The libraries it loads from the system's folder, less the C runtime and CUDA's.
  ldd "$BUILD/$f" | awk '$3 ~ /^\/(usr\/)?lib\/x86_64-linux-gnu\// {print $3}' |
    grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux-x86-64|libcuda)\.so' |
    while read -r lib; do cp -n "$lib" "$STAGE/lib/"; done
done
# What it was built from: moe's own --version (the commit its build configured at, "-dirty" with changes) where
# moe is packed, else the checkout now.
if [ -x "$BUILD/src/cli/moe" ]; then rev=$("$BUILD/src/cli/moe" --version | head -1)
else rev="checkout $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests bench || echo ' + changes')"; fi
echo "$rev" > "$STAGE/BUILT"
tar -cJf "$TAR" -C "$STAGE" .
echo "$TAR: $(du -h "$TAR" | cut -f1) (${FILES[*]}, $(ls "$STAGE/lib" | wc -l) libraries, built at $rev)"
