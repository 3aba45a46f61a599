#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: the exact k-NN benchmark on
# the best available backend (and every other one) against NumPy and FAISS, writing JSON
# to bench/results/. Extra arguments go to bench/bench_knn.py (--help lists them).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "${M2M_VENV:-$root/.venv}/bin/python" bench/bench_knn.py "$@"
