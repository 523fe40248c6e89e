#!/usr/bin/env bash
# The one GPU call: build, test on CUDA, benchmark, and write the results into a directory, all
# in at most 9 minutes of wall time (a GPU machine is lent for minutes and starts bare).
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR        (with the device tool: bash benchmarks/gpu_check.sh "$OUT")
#
# Uses `python -m pip`: on the GPU image the `pip` on PATH belongs to another Python than the one
# with torch, and the first H200 run's build failed on it.
# Assumes a machine with no network where torch (CUDA), triton, pybind11, ninja, pytest and
# pytest-benchmark are installed (pytest-xdist is used when present): nothing is downloaded.
# Tests that need the data pipeline's extras (pandas, tqdm, matplotlib) skip, saying so.
#
# One deadline (GPU_CHECK_BUDGET, default 540 s) bounds the whole run; each step gets at most its
# own cap and never more than what is left, then SIGINT (pytest still writes what it has).  A
# failing step does not stop the next.  The caps come from the H200 runs of 2026-11-27
# (benchmarks/results/gpu-h200-2026-11-27T*.md), where the build took 48 s and the GPU test files 90 s:
#   build     <= 120 s  FORCE_CUDA=1, for this GPU's architecture only (TORCH_CUDA_ARCH_LIST overrides);
#                       setup.py fails the build if _C.so carries its own libstdc++
#   tests     <= 130 s  every tests/test_*.py in its own process, 4 at a time, the GPU suites first and
#                       with xdist workers: a crash is recorded and the other files still run
#   kernels   <= 60 s   warm-up: every Triton case once on 8 xdist workers, untimed, so that Triton's
#                       JIT (which alone outran a 120 s step there) fills its disk cache in parallel
#                       (the other providers have nothing to compile: eager, and CUDA built ahead);
#             then timed, one process per provider so that one running out of time loses no other's
#             rows: eager and the copy bandwidth (<= 30 s), cuda (<= 40 s), triton (<= 60 s)
#   train     <= 45 s   training at batch 4096: eager and whole-step CUDA graphs
#   scale     <= 70 s   training throughput at ML-20M scale, and the time to quality
#   compiled  the rest  torch.compile of the baseline (max-autotune, slow to compile), last
# Without a GPU it is a dry run: the same steps, CPU build, GPU benchmarks skipped.
#
# GPU_CHECK_STEPS picks the steps (default: all, "build tests kernels train scale compiled"), so
# that the work can be split over two device calls, e.g. "build tests kernels" then
# "build train scale compiled" (the build is incremental on a machine that is still warm).
# GPU_CHECK_CAP_<STEP> (BUILD, TESTS, WARM, KERNELS_EAGER, KERNELS_CUDA, KERNELS_TRITON, TRAIN,
# SCALE) replaces a step's cap in seconds, and GPU_CHECK_TESTS the test files (default
# tests/test_*.py).
#
# Writes 2 files into RESULTS_DIR (the device tool brings back at most 8): gpu-<date>.md, which is
# also printed last (the environment, one row per test file, and the benchmark tables; it fits in
# the last 12,000 characters of output), and gpu-<date>.tgz, rewritten after every step, with
# everything: that summary, build.log, tests.log, bench.log, auto_table.json (what "auto" should
# take here, by measurement) and one pytest-benchmark JSON per benchmark step.
set -uo pipefail
results="${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
out=$(mktemp -d)  # every file goes here; pack() copies the summary and an archive of all into $results
cd "$(dirname "$0")/.."
stamp="gpu-$(date -u +%Y-%m-%d)"
budget="${GPU_CHECK_BUDGET:-540}"
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$((l > 1 ? l : 1))" || echo "$1"; }  # min(cap, time left)
step_cap() { local v="GPU_CHECK_CAP_${1^^}"; echo "${!v:-$2}"; }  # step_cap NAME DEFAULT: GPU_CHECK_CAP_NAME overrides
step() { echo "== $1 ($((SECONDS - start)) s elapsed, $(left) s left)"; }
summary="$out/$stamp.md"
pack() { cp "$summary" "$results/$stamp.md"; tar czf "$results/$stamp.tgz" -C "$out" .; }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

steps=" ${GPU_CHECK_STEPS:-build tests kernels train scale compiled} "
want() { [[ "$steps" == *" $1 "* ]]; }

step "environment"
gpu=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
{
  # a copy of a working tree can carry an older .git than its files (the device tool's did): say so
  tree=$(git diff --quiet HEAD -- . 2>/dev/null && echo "" || echo ", with uncommitted changes to tracked files")
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$tree"
  echo; echo "Steps:$steps"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device', '| triton', triton.__version__)" 2>&1
  python -c "import xdist; print('pytest-xdist', xdist.__version__)" 2>&1 | tail -1
  nvcc --version 2>&1 | tail -1
  [ "$gpu" = 1 ] || echo "DRY RUN: no GPU; CPU build, GPU benchmarks skip"
  echo '```'
} > "$summary"
cat "$summary"

if want build; then
build_cap=$(step_cap build 120)
step "build and install (<= $(cap "$build_cap") s)"
if [ "$gpu" = 1 ]; then
  export FORCE_CUDA=1
  arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}"  # this GPU only: half the nvcc time of 8.0;9.0
fi
MAX_JOBS=16 timeout -s INT "$(cap "$build_cap")" python -m pip install --no-build-isolation --no-deps --no-index -e . > "$out/build.log" 2>&1
build_rc=$?
python -c "import neumf_fast.ops._library as l; print('extension:', l.EXTENSION_ERROR or 'built', '| CUDA kernels:', l.CUDA_KERNELS_BUILT)" >> "$out/build.log" 2>&1
{ echo; echo "**Build** (exit $build_rc, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-default}, $((SECONDS - start)) s elapsed): $(tail -1 "$out/build.log")"; } | tee -a "$summary"
[ "$build_rc" = 0 ] || grep -E "error|neumf_fast:" "$out/build.log" | tail -5
pack
fi

if want tests; then
tests_cap=$(step_cap tests 130)
step "tests, one process per file (<= $(cap "$tests_cap") s)"
{ echo; echo "## Tests (one process per file)"; echo; } >> "$summary"
python benchmarks/tests_per_file.py --deadline "$(cap "$tests_cap")" --jobs 4 --workers 4 --log "$out/tests.log" \
  ${GPU_CHECK_TESTS:-tests/test_*.py} -- -m "not slow" >> "$summary"
echo "tests exit $?; $(grep -E '^[0-9]+ passed' "$summary" | tail -1)"
pack
fi

bench() {  # bench NAME CAP FILE [pytest args...]
  local name=$1 limit; limit=$(cap "$(step_cap "$1" "$2")"); shift 2
  step "benchmarks: $name (<= $limit s)"
  timeout -s INT "$limit" python -m pytest "$@" -q -p no:cacheprovider --benchmark-json="$out/$stamp-$name.json" \
    >> "$out/bench.log" 2>&1
  echo "bench $name exit $?" | tee -a "$out/bench.log"
  pack
}
if want kernels; then
  if python -c "import xdist" 2>/dev/null; then
    limit=$(cap "$(step_cap warm 60)")
    step "benchmarks: warm-up, every Triton case once on 8 workers, untimed (<= $limit s)"
    timeout -s INT "$limit" python -m pytest benchmarks/test_bench_gpu.py -m provider_triton -n 8 -q -p no:cacheprovider \
      --benchmark-disable >> "$out/bench.log" 2>&1
    echo "warm-up exit $?" | tee -a "$out/bench.log"
  fi
  bench kernels_eager 30 benchmarks/test_bench_gpu.py -m "not (provider_compiled or provider_triton or provider_cuda)"
  bench kernels_cuda 40 benchmarks/test_bench_gpu.py -m provider_cuda
  bench kernels_triton 60 benchmarks/test_bench_gpu.py -m provider_triton
  # what backend="auto" should take on this GPU, measured just now (commit it as neumf_fast/ops/auto_table.json)
  cp neumf_fast/ops/auto_table.json "$out/auto_table.json"
  [ "$gpu" = 1 ] && python benchmarks/choose_auto.py "$out/$stamp-kernels_cuda.json" "$out/$stamp-kernels_triton.json" \
    --out "$out/auto_table.json" 2>&1 | tee -a "$out/bench.log" "$summary"
fi
want train && bench train 45 benchmarks/test_bench_train.py -k test_epoch
want scale && bench scale 70 benchmarks/test_bench_scale.py
want compiled && bench compiled "$(left)" benchmarks/test_bench_gpu.py -m provider_compiled

jsons=$(for f in "$out"/$stamp-*.json; do [ -s "$f" ] && python -c "import json,sys; sys.exit(not json.load(open('$f'))['benchmarks'])" 2>/dev/null && echo "$f"; done)
{ echo; echo "## Benchmarks"; echo; } >> "$summary"
if [ -n "$jsons" ]; then
  python benchmarks/report.py $jsons --command "bash benchmarks/gpu_check.sh" | sed 1d >> "$summary"
else
  echo "no benchmark results (no GPU, or every step ran out of time: see bench.log)" >> "$summary"
fi
echo "Wall time: $((SECONDS - start)) s of a $budget s budget." >> "$summary"
pack
step "done"
echo
cat "$summary"
