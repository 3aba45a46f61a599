#!/usr/bin/env bash
# The GPU check: everything a lent NVIDIA machine should verify, in one call of about eight
# minutes on an H200 (bash .gl/run-suite.sh runs it there; see ../shared/gpu/ and the README).
# It runs here too, with no GPU: steps that need CUDA say so and are skipped, the rest run.
#
#   1. the whole test suite, with M2M_REQUIRE_BACKENDS (default: cpu,cuda,vulkan where
#      nvidia-smi sees a GPU, else the backends this machine has);
#   2. compute-sanitizer --tool memcheck and --tool racecheck over scripts/kernel_smoke.py
#      (every CUDA kernel launched once, small, checked against the reference);
#   3. scripts/kernel_smoke.py on every available backend, without the sanitizer;
#   4. m2m-gpu bench --preset gpu on the GPU backends (tiny where there is no GPU, so that
#      lavapipe's run stays short), and bench/bench_small_batch.py;
#   5. summary.txt: each step's status, exit code and seconds.
#
# Results go to $OUT/gpu-check when $OUT is set (the device tool brings $OUT back), else to
# bench/results/gpu-check. Each step has its own time limit, so one stuck step cannot eat the
# lease. Environment: M2M_PYTHON (default .venv/bin/python here, python3 elsewhere).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:+$OUT/gpu-check}
out=${out:-$root/bench/results/gpu-check}
mkdir -p "$out"
py=${M2M_PYTHON:-}
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]] && ! command -v nvidia-smi >/dev/null; then py=.venv/bin/python
  else py=python3; fi
fi
summary=$out/summary.txt
: > "$summary"
say() { printf '%s\n' "$*" | tee -a "$summary"; }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to NAME.log, record status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  local status=ok
  ((rc == 124 || rc == 137)) && status="TIMED OUT after ${limit}s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED"
  say "$(printf '%-22s %-22s rc=%-3s %4ss  %s' "$name" "$status" "$rc" $((SECONDS - t0)) "$name.log")"
  tail -n 3 "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
}

have_gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
say "gpu check $(date -u +%FT%TZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), python: $py"
if ((have_gpu)); then
  say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
  export M2M_REQUIRE_BACKENDS=${M2M_REQUIRE_BACKENDS:-cpu,cuda,vulkan}
else
  say "gpu: none (nvidia-smi not found or sees no GPU): the CUDA steps are skipped"
fi
"$py" -m m2m_gpu.cli info --json > "$out/info.json" 2>&1
avail=$("$py" - "$out/info.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print(" ".join(b["name"] for b in doc["backends"] if b["available"]))
PY
)
say "backends available: ${avail:-none}"
gpus=""
for b in $avail; do [[ $b != cpu ]] && gpus+=" $b"; done
if [[ -z ${M2M_REQUIRE_BACKENDS:-} ]]; then export M2M_REQUIRE_BACKENDS=${avail// /,}; fi
say "M2M_REQUIRE_BACKENDS=$M2M_REQUIRE_BACKENDS"

step tests 240 "$py" -m pytest -q -p no:cacheprovider -x tests
if [[ " $avail " == *" cuda "* ]] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$py" scripts/kernel_smoke.py cuda
  done
else
  say "sanitizer              skipped: $( [[ " $avail " == *" cuda "* ]] || echo 'no cuda backend' ) $(command -v compute-sanitizer >/dev/null || echo 'no compute-sanitizer')"
fi
for b in $avail; do step "smoke-$b" 60 "$py" scripts/kernel_smoke.py "$b"; done
if [[ -n $gpus ]]; then
  bargs=(); for b in $gpus; do bargs+=(-b "$b"); done
  preset=${M2M_GPU_CHECK_PRESET:-$( ((have_gpu)) && echo gpu || echo tiny )}  # no GPU: seconds
  step "bench-$preset" 150 "$py" -m m2m_gpu.cli bench --preset "$preset" "${bargs[@]}" \
    --out "$out" --name "bench-$preset-${gpus// /-}"
  for b in $gpus; do
    sizes=1000000x128,4000000x64
    [[ $b == vulkan ]] && ! ((have_gpu)) && sizes=100000x128  # lavapipe: one small size
    step "small-batch-$b" 60 "$py" bench/bench_small_batch.py --backend "$b" --sizes "$sizes" \
      --out "$out/small-batch-$b.json"
  done
else
  say "bench                  skipped: no GPU backend available"
fi
say "results in $out"
! grep -qE "FAILED|TIMED OUT" "$summary"
