#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job on the best available backend
# (and every other one), each against baselines measured in the same run, writing JSON to
# bench/results/: first the suite (`m2m-gpu bench --quick`, or --standard), then
#   1. exact k-NN vs NumPy and FAISS (bench/bench_knn.py; extra arguments go to it)
#   2. the splat kernels: fused energy vs NumPy, Hebbian events/s, splat_topk vs knn
#      (bench/bench_splat.py; --quick is passed on)
#   3. HRM2 approximate search: recall@10 vs queries/s against faiss IVF-Flat and hnswlib,
#      on 100,000 clustered vectors (20,000 with --quick) (bench/bench_hrm2.py)
#   4. memory tiers: exact search over a store 4x its hot budget (warm, and warm + cold)
#      against the same store fully in memory, 400,000 x 64 (50,000 with --quick)
#      (bench/bench_tiers.py, on the best available backend), and the same for the HRM2
#      index with a hot budget of 1/4 (spread and local query batches)
#   5. single-query latency on each GPU backend (lavapipe included): the small-batch path
#      against the path before, same run (bench/bench_small_batch.py)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
py="${M2M_VENV:-$root/.venv}/bin/python"
quick=()
for a in "$@"; do [[ $a == --quick ]] && quick=(--quick); done
# 0. the benchmark suite: every kernel on every backend against the installed baselines,
#    the machine's limits, JSON + plots + report in bench/results/ (m2m-gpu bench)
if ((${#quick[@]})); then
  "$py" -m m2m_gpu.cli bench --quick --name bench-quick
else
  "$py" -m m2m_gpu.cli bench --standard --name bench-standard
fi
"$py" bench/bench_knn.py "$@"
"$py" bench/bench_splat.py "${quick[@]}"
if ((${#quick[@]})); then
  "$py" bench/bench_hrm2.py --n 20000 --repeat 3 --single 50 --out bench/results/hrm2-quick.json
  "$py" bench/bench_tiers.py --n 50000 --repeat 3 --out bench/results/tiers-quick.json
  "$py" bench/bench_tiers.py --index hrm2 --n 50000 --repeat 3 \
    --out bench/results/tiers-hrm2-quick.json
else
  "$py" bench/bench_hrm2.py --n 100000
  "$py" bench/bench_tiers.py --n 400000
  "$py" bench/bench_tiers.py --index hrm2 --n 400000
  "$py" bench/bench_tiers.py --index hrm2 --local --n 400000
fi
gpus=$("$py" -c 'import m2m_gpu; print(" ".join(b["name"] for b in m2m_gpu.info()["backends"] if b["available"] and b["name"] != "cpu"))')
for b in $gpus; do
  if ((${#quick[@]})); then
    "$py" bench/bench_small_batch.py --backend "$b" --sizes 100000x128 --rounds 2 \
      --out "bench/results/small-batch-$b-quick.json"
  else
    "$py" bench/bench_small_batch.py --backend "$b"
  fi
done
