#!/usr/bin/env bash
# One entry point for a fresh machine: set up (venv, pinned deps, build the extension), then
#   bash dev.sh demo   run the main job
#   bash dev.sh test   run the test suite (what .ci/run runs)
#   bash dev.sh bench  run the CPU benchmarks and write benchmarks/results/
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
  demo) python -m neumf_fast.demo "$@" ;;
  test) python -m pytest tests "$@" ;;
  bench)
    stamp="cpu-$(date -u +%Y-%m-%d)"
    python -m pytest benchmarks/test_bench_cpu.py -q --benchmark-json="benchmarks/results/$stamp.json" "$@"
    python benchmarks/report.py "benchmarks/results/$stamp.json" > "benchmarks/results/$stamp.md"
    cat "benchmarks/results/$stamp.md"
    ;;
  *) echo "usage: bash dev.sh {demo|test|bench} [args...]" >&2; exit 2 ;;
esac
