#!/usr/bin/env bash
# One entry point for a fresh machine: set up (venv, pinned deps, build the extension), then
#   bash dev.sh train  the main job: train NeuMF on the built-in synthetic data, print HR@10/NDCG@10
#   bash dev.sh test   run the test suite (what .ci/run runs)
#   bash dev.sh demo   the fused op alone on the design's shapes (parity and speed)
#   bash dev.sh bench [op|train|scale]  run the CPU benchmarks and write benchmarks/results/
# Extra arguments go to the command (pytest, the demo).
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-test}"
shift || true

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
# --no-build-isolation: build against the torch installed above, not a freshly downloaded one.
pip install --quiet --disable-pip-version-check --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
python -c "import neumf_fast.ops._library as l; print('neumf_fast extension:', l.EXTENSION_ERROR or 'built')"

case "$cmd" in
  train) neumf-fast train --model neumf --dataset synthetic --out runs/neumf "$@" ;;
  demo) python -m neumf_fast.demo "$@" ;;
  test) python -m pytest tests "$@" ;;
  bench)
    which="${1:-all}"
    [ $# -gt 0 ] && shift
    for suite in op train scale; do
      [ "$which" = all ] || [ "$which" = "$suite" ] || continue
      file=benchmarks/test_bench_cpu.py; stamp="cpu-$(date -u +%Y-%m-%dT%H%M)"
      if [ "$suite" = train ]; then file=benchmarks/test_bench_train.py; stamp="train-cpu-$(date -u +%Y-%m-%dT%H%M)"; fi
      if [ "$suite" = scale ]; then file=benchmarks/test_bench_scale.py; stamp="scale-cpu-$(date -u +%Y-%m-%dT%H%M)"; fi
      python -m pytest "$file" -q --benchmark-json="benchmarks/results/$stamp.json" "$@"
      python benchmarks/report.py "benchmarks/results/$stamp.json" --command "bash dev.sh bench $suite" > "benchmarks/results/$stamp.md"
      cat "benchmarks/results/$stamp.md"
    done
    ;;
  *) echo "usage: bash dev.sh {train|test|demo|bench [op|train|scale]} [args...]" >&2; exit 2 ;;
esac
