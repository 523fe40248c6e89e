#!/usr/bin/env bash
# The one GPU call: build, test on CUDA, benchmark, and write the results into a directory.
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR        (with the device tool: bash benchmarks/gpu_check.sh "$OUT")
#
# Assumes a machine with no network where torch (CUDA), triton, pybind11, ninja, pytest and
# pytest-benchmark are installed: nothing is downloaded (no build isolation, no dependencies,
# no index).  Tests that need the data pipeline's extras (pandas, tqdm, matplotlib) skip, saying
# so, where those are missing.  Budget: under 8 minutes.  Each step has its own time limit
# (SIGINT, so pytest still writes what it has) and a failing step does not stop the next.
# Writes into RESULTS_DIR: env.txt, build.log, tests.log, bench.log, gpu-<date>-*.json and
# gpu-<date>.md (the tables, with the device name).  Step limits: 120 + 150 + 100 + 70 + 90 s.
# The build compiles the CUDA kernels (csrc/cuda/, FORCE_CUDA=1) for TORCH_CUDA_ARCH_LIST, by
# default sm_80 and sm_90; the tests then run backend="cuda" (tests/test_cuda.py) and "triton"
# on the GPU, and the benchmark has both as providers.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
stamp="gpu-$(date -u +%Y-%m-%d)"
start=$SECONDS
step() { echo "== $1 ($((SECONDS - start)) s)"; }

step "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device', '| triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
} | tee "$out/env.txt"

step "build and install, CUDA kernels included (<= 120 s)"
FORCE_CUDA=1 MAX_JOBS=16 timeout -s INT 120 pip install --no-build-isolation --no-deps --no-index -e . > "$out/build.log" 2>&1
echo "build exit $?" | tee -a "$out/build.log"
python -c "import neumf_fast.ops._library as l; print('extension:', l.EXTENSION_ERROR or 'built', '| CUDA kernels:', l.CUDA_KERNELS_BUILT)" 2>&1 | tee -a "$out/build.log"

step "tests on CUDA (<= 150 s)"
timeout -s INT 150 python -m pytest tests -q -rs -m "not slow" -p no:cacheprovider > "$out/tests.log" 2>&1
echo "tests exit $?" | tee -a "$out/tests.log"
tail -5 "$out/tests.log"

# kernels and eager first, torch.compile (max-autotune: slow to compile) last, each its own file
step "benchmarks: copy bandwidth, eager, kernels (<= 100 s)"
timeout -s INT 100 python -m pytest benchmarks/test_bench_gpu.py -q -p no:cacheprovider -k "not compiled" \
  --benchmark-json="$out/$stamp-kernels.json" > "$out/bench.log" 2>&1
echo "bench exit $?" | tee -a "$out/bench.log"
step "benchmarks: torch.compile max-autotune-no-cudagraphs (<= 70 s)"
timeout -s INT 70 python -m pytest benchmarks/test_bench_gpu.py -q -p no:cacheprovider -k "compiled" \
  --benchmark-json="$out/$stamp-compiled.json" >> "$out/bench.log" 2>&1
echo "bench (compiled) exit $?" | tee -a "$out/bench.log"

step "training throughput at full ML-20M scale, fused vs no fused op, time to quality (<= 90 s)"
NEUMF_FAST_SCALE=1.0 timeout -s INT 90 python -m pytest benchmarks/test_bench_scale.py -q -p no:cacheprovider \
  --benchmark-json="$out/$stamp-scale.json" >> "$out/bench.log" 2>&1
echo "bench (scale) exit $?" | tee -a "$out/bench.log"

jsons=$(ls "$out"/$stamp-*.json 2>/dev/null | while read -r f; do [ -s "$f" ] && echo "$f"; done)
if [ -n "$jsons" ]; then
  python benchmarks/report.py $jsons --command "bash benchmarks/gpu_check.sh" > "$out/$stamp.md"
  cat "$out/$stamp.md"
fi
step "done"
