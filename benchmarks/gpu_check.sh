#!/usr/bin/env bash
# The one GPU call: build, test on CUDA, benchmark, and write the results into a directory, all
# in at most 5 minutes of wall time, build included (a GPU machine is lent for minutes and starts bare).
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR        (on a machine with a GPU; RESULTS_DIR is what you copy back)
#
# Assumes a machine with no network where torch (CUDA), triton, pybind11, ninja, pytest and
# pytest-benchmark are installed (pytest-xdist is used when present): nothing is downloaded.
# The package is imported from this tree (PYTHONPATH), its extension built in place: nothing is
# installed, so no environment's editable install is re-pointed.  It runs `python`; the first
# H200 run's build failed on a `pip` on PATH that belonged to another Python.
#
# One deadline (GPU_CHECK_BUDGET, default 290 s) bounds the whole run, and the last 10 s of it are
# kept for the table; each step gets at most its own cap and never more than what is left, then
# SIGINT (pytest still writes what it has; the benchmarks also keep each row as it ends, in
# JSONL).  A failing step does not stop the next.  The caps come from the H200 runs of
# 2026-11-27 (benchmarks/results/gpu-h200-2026-11-27T*.md: build 48 s for sm_90 alone, the GPU
# test files 31 s (CUDA) and 65 s (Triton, autotuning), training at batch 4096 under 45 s for
# eight cases, Triton's JIT twice outrunning a 120 s kernels step when it ran inside the timing):
#   build     <= 75 s   FORCE_CUDA=1, for this GPU's architecture only (TORCH_CUDA_ARCH_LIST overrides),
#                       `python setup.py build_ext --inplace` (GPU_CHECK_INSTALL=pip: `pip install -e .`)
#   tests     <= 45 s   the GPU suites alone (tests/test_cuda.py, test_triton.py, test_parity.py; the
#                       rest run in CI), one process per file with xdist workers and -x; at the
#                       same time, on other cores, the warm-up: every Triton and torch.compile
#                       benchmark case once, untimed, on 6 xdist workers, so that Triton's JIT and
#                       Inductor fill their on-disk caches in parallel and outside the timing
#   kernels   <= 35 s   the copy bandwidth, then every case of eager, Triton and CUDA, shape by shape,
#                       pytest-benchmark with at least 10 rounds of at most 0.05 s each
#   compiled  <= 30 s   torch.compile of the user's code (the default mode: max-autotune searches
#                       GEMMs for minutes), from the warm-up's caches
#   first     <= 25 s   the first calls of a fresh process with empty caches (benchmarks/first_call.py)
#   train     <= 30 s   a training epoch at batch 4096, fp32: eager and with the step in a CUDA graph
#   scale     <= 40 s   a training epoch at ML-20M scale, batch 2^20, fp32 and bf16
#   tables    <= 60 s   the same epoch, fp32, dense Adam and each table optimizer, interleaved
# Triton's default is the package's (not NEUMF_FAST_TRITON_AUTOTUNE=1): with one compile per shape
# the warm-up is short; where the package still autotunes by default, the Triton cases that do
# not finish within their caps read "not measured".
# Without a GPU it is a dry run: the same steps, GPU benchmarks and training skipped, e.g.
#   GPU_CHECK_STEPS="tests kernels compiled first train scale" GPU_CHECK_TESTS=tests/test_dispatch.py \
#     GPU_CHECK_BUDGET=120 bash benchmarks/gpu_check.sh /tmp/gpucheck
#
# GPU_CHECK_STEPS picks the steps (default: all, "build tests kernels compiled first train scale tables").
# GPU_CHECK_CAP_<STEP> (BUILD, TESTS, KERNELS, COMPILED, FIRST, TRAIN, SCALE, TABLES) replaces a step's
# cap in seconds, GPU_CHECK_TESTS the test files, GPU_CHECK_COMPILE_MODE torch.compile's mode.
#
# Writes 2 files into RESULTS_DIR (few, so that a job that returns few files keeps both): gpu-<date>.md, which is
# also printed last and ends with the one table (it fits in the last 12,000 characters of
# output), and gpu-<date>.tgz, rewritten after every step, with everything: that summary,
# build.log, tests.log, bench.log, auto_table.json (what "auto" should take here, by
# measurement) and the rows of every benchmark step (JSONL, and pytest-benchmark's JSON).
set -uo pipefail
results="${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
out=$(mktemp -d)  # every file goes here; pack() copies the summary and an archive of all into $results
cd "$(dirname "$0")/.."
stamp="gpu-$(date -u +%Y-%m-%d)"
budget="${GPU_CHECK_BUDGET:-290}"
reserve=10  # for the table at the end
start=$SECONDS
left() { echo $((budget - reserve - (SECONDS - start))); }
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$((l > 1 ? l : 1))" || echo "$1"; }  # min(cap, time left)
step_cap() { local v="GPU_CHECK_CAP_${1^^}"; echo "${!v:-$2}"; }  # step_cap NAME DEFAULT: GPU_CHECK_CAP_NAME overrides
step() { echo "== $1 ($((SECONDS - start)) s elapsed, $(left) s left)"; }
summary="$out/$stamp.md"
pack() { cp "$summary" "$results/$stamp.md"; tar czf "$results/$stamp.tgz" -C "$out" .; }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NEUMF_FAST_BENCH_COMPILE_MODE="${GPU_CHECK_COMPILE_MODE:-default}"
bench_opts=(-q -p no:cacheprovider --benchmark-min-rounds=10 --benchmark-max-time=0.05 --benchmark-warmup=off)

steps=" ${GPU_CHECK_STEPS:-build tests kernels compiled first train scale tables} "
want() { [[ "$steps" == *" $1 "* ]]; }

step "environment"
gpu=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
{
  # a copy of a working tree can carry an older .git than its files (a copy sent to a GPU machine did): say so
  tree=""
  git diff --quiet HEAD -- . 2>/dev/null || tree=", with uncommitted changes to tracked files"
  [ -z "$(git ls-files --others --exclude-standard 2>/dev/null | head -1)" ] || tree="$tree, with untracked files"
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$tree"
  echo; echo "Steps:$steps(budget $budget s)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device', '| triton', triton.__version__)" 2>&1
  python -c "import xdist; print('pytest-xdist', xdist.__version__)" 2>&1 | tail -1
  nvcc --version 2>&1 | tail -1
  [ "$gpu" = 1 ] || echo "DRY RUN: no GPU; GPU benchmarks and training skipped"
  echo '```'
} > "$summary"
cat "$summary"

if want build; then
limit=$(cap "$(step_cap build 75)")
step "build (<= $limit s)"
if [ "$gpu" = 1 ]; then
  export FORCE_CUDA=1
  arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}"  # this GPU only: half the nvcc time of 8.0;9.0
fi
if [ "${GPU_CHECK_INSTALL:-inplace}" = pip ]; then
  MAX_JOBS=16 timeout -s INT "$limit" python -m pip install --no-build-isolation --no-deps --no-index -e . > "$out/build.log" 2>&1
else
  MAX_JOBS=16 timeout -s INT "$limit" python setup.py build_ext --inplace > "$out/build.log" 2>&1
fi
build_rc=$?
python -c "import neumf_fast.ops._library as l; print('extension:', l.EXTENSION_ERROR or 'built', '| CUDA kernels:', l.CUDA_KERNELS_BUILT)" >> "$out/build.log" 2>&1
{ echo; echo "**Build** (exit $build_rc, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-default}, $((SECONDS - start)) s elapsed): $(tail -1 "$out/build.log")"; } | tee -a "$summary"
[ "$build_rc" = 0 ] || grep -E "error|neumf_fast:" "$out/build.log" | tail -5
pack
fi

warm_pid=""
if want tests; then
  limit=$(cap "$(step_cap tests 45)")
  if [ "$gpu" = 1 ] && want kernels && python -c "import xdist" 2>/dev/null; then
    # the warm-up, beside the tests: its timings are thrown away (--benchmark-disable)
    TORCHINDUCTOR_COMPILE_THREADS=2 timeout -s INT "$limit" python -m pytest benchmarks/test_bench_gpu.py -k test_fused_input \
      -m "provider_triton or provider_compiled" -n 6 -q -p no:cacheprovider --benchmark-disable \
      > "$out/warmup.log" 2>&1 &
    warm_pid=$!
  fi
  step "tests: the GPU suites, one process per file (<= $limit s)${warm_pid:+, and the warm-up beside them}"
  { echo; echo "## Tests (one process per file)"; echo; } >> "$summary"
  python benchmarks/tests_per_file.py --deadline "$limit" --jobs 3 --workers 4 --log "$out/tests.log" --show-failures 8 \
    ${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_triton.py tests/test_parity.py} -- -x -m "not slow" >> "$summary"
  echo "tests exit $?; $(grep -E '^[0-9]+ passed' "$summary" | tail -1)"
  if [ -n "$warm_pid" ]; then
    wait "$warm_pid"
    echo "warm-up exit $? ($(tail -1 "$out/warmup.log"))" | tee -a "$out/bench.log"
  fi
  pack
fi

bench() {  # bench NAME CAP [pytest args...]: rows kept in $out/rows-NAME.jsonl as they end
  local name=$1 limit; limit=$(cap "$(step_cap "$1" "$2")"); shift 2
  step "benchmarks: $name (<= $limit s)"
  NEUMF_FAST_BENCH_ROWS="$out/rows-$name.jsonl" timeout -s INT "$limit" python -m pytest "$@" "${bench_opts[@]}" \
    --benchmark-json="$out/$stamp-$name.json" >> "$out/bench.log" 2>&1
  echo "bench $name exit $? ($(cat "$out/rows-$name.jsonl" 2>/dev/null | wc -l) rows kept)" | tee -a "$out/bench.log"
  pack
}
skipped=""
gpu_only() { [ "$gpu" = 1 ] && return 0; skipped="$skipped $1"; echo "== $1: skipped, no GPU"; return 1; }
g=benchmarks/test_bench_gpu.py
if want kernels; then
  # the copy first (every share of bandwidth needs it), then the cases in RUN_ORDER
  bench kernels 35 "$g::test_copy_bandwidth" "$g::test_fused_input" "$g::test_serving_under_a_cuda_graph" \
    -m "not provider_compiled"
  # what backend="auto" should take on this GPU, measured just now (commit it as neumf_fast/ops/auto_table.json)
  cp neumf_fast/ops/auto_table.json "$out/auto_table.json"
  [ "$gpu" = 1 ] && { echo; python benchmarks/choose_auto.py "$out/rows-kernels.jsonl" --out "$out/auto_table.json" 2>&1; } \
    | tee -a "$out/bench.log" >> "$summary"
fi
want compiled && bench compiled 30 "$g::test_fused_input" -m provider_compiled
if want first && gpu_only first; then
  limit=$(cap "$(step_cap first 25)")
  step "first calls, fresh process, empty caches (<= $limit s)"
  fresh=$(mktemp -d)
  TRITON_CACHE_DIR="$fresh/triton" TORCHINDUCTOR_CACHE_DIR="$fresh/inductor" timeout -s INT "$limit" \
    python benchmarks/first_call.py eager cuda triton --rows "$out/rows-first.jsonl" >> "$out/bench.log" 2>&1
  echo "first calls exit $?" | tee -a "$out/bench.log"
  pack
fi
if want train && gpu_only train; then
  bench train 30 benchmarks/test_bench_train.py -k "test_epoch and fp32 and not paired"
fi
if want scale && gpu_only scale; then
  bench scale 40 benchmarks/test_bench_scale.py -k test_epoch_throughput
fi
if want tables && gpu_only tables; then
  bench tables 60 benchmarks/test_bench_table_optim.py -k test_scale_epoch
  { echo; python benchmarks/table_report.py "$out/$stamp-tables.json" --command "gpu_check.sh: tables" 2>&1 \
      || echo "(table_report.py: no result)"; } >> "$summary"
fi

# the backend neumf_fast's training runs took with backend="auto" (NeuMF's call: ids, batch 4096, fp32)
auto=$(python -c "
import torch
from neumf_fast.ops import dispatch
d = dispatch.CallKind(4096, True, True, torch.float32, torch.device('cuda'))
print(dispatch.select_backend(d).name if torch.cuda.is_available() else 'none (no GPU)')" 2>/dev/null || echo none)
rows=$(ls "$out"/rows-*.jsonl "$out"/$stamp-train.json "$out"/$stamp-scale.json 2>/dev/null)
{
  [ -z "$skipped" ] || { echo; echo "Skipped without a GPU:$skipped."; }
  echo; echo "Wall time: $((SECONDS - start)) s of a $budget s budget. Logs, JSON and auto_table.json: $stamp.tgz."
  echo; echo "## The table (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$tree; backend auto for NeuMF training here: $auto)"; echo
  # shellcheck disable=SC2086
  python benchmarks/report.py --gpu-table --auto-backend "$auto" /dev/null $rows 2>&1 || echo "(report.py failed: see above)"
} >> "$summary"
pack
step "done"
size=$(wc -c < "$summary")
[ "$size" -lt 11500 ] || echo "note: the summary is $size characters; its start is in $stamp.md, not in the last 12,000 of this output"
echo
cat "$summary"
