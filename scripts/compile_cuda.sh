#!/usr/bin/env bash
# Compiles every CUDA source in kernels/ with nvcc for sm_80 and sm_90, so that an error in
# a kernel is caught on a machine with no GPU. Fails if nvcc is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v nvcc >/dev/null || { echo "nvcc not found" >&2; exit 1; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for cu in "$root"/kernels/*.cu; do
  for arch in sm_80 sm_90; do
    nvcc -arch="$arch" -c "$cu" -o "$out/$(basename "$cu" .cu)_$arch.o"
    echo "nvcc $arch: $(basename "$cu") ok"
  done
done
