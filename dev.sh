#!/usr/bin/env bash
# One entry point for a fresh machine: set up (venv, pinned deps, build the extension), then
#   bash dev.sh train  the main job: train NeuMF on the built-in synthetic data and print its test
#                      HR@10/NDCG@10 beside the popularity baseline (about 2 minutes on 2 cores);
#                      bash dev.sh train --paper: the paper's full setting (batch 256, 20 epochs)
#   bash dev.sh test   run the test suite (what .ci/run runs, after lint); --quick leaves out the
#                      tests marked slow (builds, compiles, the distributed run): a few minutes
#   bash dev.sh lint   ruff check, with pyproject.toml's rules (.ci/run runs it before the tests)
#   bash dev.sh demo   the fused op alone on the design's shapes (parity and speed)
#   bash dev.sh bench [op|train|scale|throughput|serve|table]  run the CPU benchmarks and write benchmarks/results/
#                      (throughput: training samples/s, ML-1M-sized at batch 256/8192 against the
#                      plain loop, one after the other and interleaved, and ML-20M-shaped at scale,
#                      fp32 and bf16, in one run; serve: all-user top-10, exported-program latency and
#                      peak memory of recommend, benchmarks/test_bench_serve.py, about 5 minutes; table:
#                      row-wise table optimizers against dense Adam, benchmarks/test_bench_table_optim.py,
#                      about 10 minutes)
# Extra arguments go to the command (neumf-fast train, pytest, the demo).
# Set-up steps that have nothing to do (same requirements, same sources) are skipped.
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-test}"
shift || true
t0=$SECONDS

# quiet_step "what" command...: says what it does, shows the output only if it fails
quiet_step() {
  local what=$1 log
  shift
  echo "[set-up, $((SECONDS - t0)) s] $what"
  log=$(mktemp)
  if ! "$@" > "$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40 >&2
    echo "dev.sh: failed: $what" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

if [ ! -x .venv/bin/python ]; then
  quiet_step "creating .venv" python3 -m venv .venv
fi
. .venv/bin/activate
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
req_stamp=$(stamp_of requirements-dev.txt)
if [ "$(cat .venv/.requirements-stamp 2>/dev/null)" != "$req_stamp" ]; then
  quiet_step "installing the pinned dependencies (requirements-dev.txt: torch 2.13.0 CPU build, triton, pytest, pandas, ...); a few minutes the first time" \
    pip install --disable-pip-version-check -r requirements-dev.txt
  echo "$req_stamp" > .venv/.requirements-stamp
fi
# the build's inputs: sources, build files, and the switches setup.py reads
build_stamp=$( { stamp_of setup.py pyproject.toml neumf_fast/_build.py $(find csrc -type f | sort);
                 env | { grep -E '^(NEUMF_FAST_SKIP_EXTENSION|NEUMF_FAST_CPU_ARCH|FORCE_CUDA|TORCH_CUDA_ARCH_LIST|CUDA_HOME|LDFLAGS)=' || true; } | sort; } \
               | sha256sum | cut -c1-16)
if [ "$(cat .venv/.build-stamp 2>/dev/null)" != "$build_stamp" ] || ! python -c "import neumf_fast" 2>/dev/null; then
  # --no-build-isolation: build against the torch installed above, not a freshly downloaded one.
  quiet_step "building the C++ extension and installing neumf_fast (pip install --no-build-isolation -e .; about 1 minute)" \
    pip install --disable-pip-version-check --no-build-isolation -e .
  echo "$build_stamp" > .venv/.build-stamp
fi
python -c "import neumf_fast.ops._library as l; print('[set-up, done]', 'neumf_fast extension:', l.EXTENSION_ERROR or 'built')"

case "$cmd" in
  train)
    # Quick by default: the paper's NeuMF at batch 4096 for 10 epochs ends well above popularity
    # in about 2 minutes on 2 cores.  --paper drops these two settings: batch 256, 20 epochs.
    quick=(--batch-size 4096 --epochs 10)
    if [ "${1:-}" = --paper ]; then quick=(); shift; fi
    neumf-fast train --model neumf --dataset synthetic ${quick[@]+"${quick[@]}"} "$@" ;;
  demo) python -m neumf_fast.demo "$@" ;;
  test)
    if [ "${1:-}" = --quick ]; then shift; set -- -m "not slow" "$@"; fi
    python -m pytest tests "$@" ;;
  lint) ruff check . "$@" ;;
  bench)
    which="${1:-all}"
    [ $# -gt 0 ] && shift
    for suite in op train scale throughput serve table; do
      [ "$which" = "$suite" ] || { [ "$which" = all ] && [ "$suite" != throughput ]; } || continue
      file=benchmarks/test_bench_cpu.py; stamp="cpu-$(date -u +%Y-%m-%dT%H%M%S)"
      if [ "$suite" = train ]; then file=benchmarks/test_bench_train.py; stamp="train-cpu-$(date -u +%Y-%m-%dT%H%M%S)"; fi
      if [ "$suite" = scale ]; then file=benchmarks/test_bench_scale.py; stamp="scale-cpu-$(date -u +%Y-%m-%dT%H%M%S)"; fi
      if [ "$suite" = throughput ]; then
        file="benchmarks/test_bench_train.py::test_epoch benchmarks/test_bench_train.py::test_epoch_paired benchmarks/test_bench_scale.py::test_epoch_throughput"
        stamp="throughput-cpu-$(date -u +%Y-%m-%dT%H%M%S)"
      fi
      if [ "$suite" = serve ]; then
        stamp="serve-cpu-$(date -u +%Y-%m-%dT%H%M%S)"
        python -m pytest benchmarks/test_bench_serve.py -q --benchmark-json="benchmarks/results/$stamp.json" "$@"
        python benchmarks/serve_report.py "benchmarks/results/$stamp.json" --command "bash dev.sh bench serve" > "benchmarks/results/$stamp.md"
        cat "benchmarks/results/$stamp.md"
        continue
      fi
      if [ "$suite" = table ]; then
        stamp="table-optim-cpu-$(date -u +%Y-%m-%dT%H%M%S)"
        python -m pytest benchmarks/test_bench_table_optim.py -q --benchmark-json="benchmarks/results/$stamp.json" "$@"
        python benchmarks/table_report.py "benchmarks/results/$stamp.json" > "benchmarks/results/$stamp.md"
        cat "benchmarks/results/$stamp.md"
        continue
      fi
      # shellcheck disable=SC2086  # $file may name two test selections
      python -m pytest $file -q --benchmark-json="benchmarks/results/$stamp.json" "$@"
      python benchmarks/report.py "benchmarks/results/$stamp.json" --command "bash dev.sh bench $suite" > "benchmarks/results/$stamp.md"
      cat "benchmarks/results/$stamp.md"
    done
    ;;
  *) echo "usage: bash dev.sh {train|test [--quick]|lint|demo|bench [op|train|scale|throughput|serve|table]} [args...]" >&2; exit 2 ;;
esac
