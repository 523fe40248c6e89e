"""Run each test file in its own pytest process, several at a time, under one deadline, and
print one row per file: a crash (a signal) or a timeout in one file is recorded and the others
still run.  Used by benchmarks/gpu_check.sh; runs anywhere.

    python benchmarks/tests_per_file.py --deadline 130 --jobs 4 --log tests.log tests/test_*.py -- -m "not slow"

Files named in ``--xdist`` (default: the GPU kernel suites, whose Triton JIT dominates) run with
pytest-xdist's ``-n`` workers when xdist is installed.  Each process gets the time left until
the deadline, then SIGINT (pytest still prints its summary), then SIGKILL 10 s later.  The
output of every file goes into ``--log``, one after another; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _outcome(code: int, timed_out: bool) -> str:
    if timed_out:
        return "timed out"
    if code < 0:
        return f"crashed ({signal.Signals(-code).name})"
    if code in (0, 5):
        return "ok" if code == 0 else "no tests"
    return {1: "failures", 2: "interrupted", 3: "internal error", 4: "usage error"}.get(code, f"exit {code}")


def _counts(output: str) -> dict[str, int]:
    lines = [line for line in output.splitlines() if COUNTS.search(line) and " in " in line]
    found = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    if lines:
        for n, what in COUNTS.findall(lines[-1]):
            key = "error" if what.startswith("error") else what
            if key in found:
                found[key] += int(n)
    return found


def run_file(path: str, deadline: float, workers: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pytest", path, "-q", "-rfE", "-p", "no:cacheprovider", *extra]
    if workers > 1:
        cmd += ["-n", str(workers)]
    start = time.monotonic()
    left = deadline - start
    if left <= 1:
        return dict(file=path, outcome="not started (deadline)", seconds=0.0, output="",
                    **{"passed": 0, "failed": 0, "skipped": 0, "error": 0})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGINT)  # pytest prints what it has
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    seconds = time.monotonic() - start
    return dict(file=path, outcome=_outcome(proc.returncode, timed_out), seconds=seconds, output=output,
                **_counts(output))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--deadline", type=float, required=True, help="seconds from now for the whole run")
    parser.add_argument("--jobs", type=int, default=4, help="files run at the same time")
    parser.add_argument("--xdist", default="tests/test_parity.py,tests/test_triton.py,tests/test_cuda.py",
                        help="comma-separated files run with pytest-xdist workers")
    parser.add_argument("--workers", type=int, default=4, help="xdist workers for those files")
    parser.add_argument("--log", required=True, help="file for the whole output of every test file")
    parser.add_argument("--show-failures", type=int, default=25,
                        help="failing tests named in the table's output (the log has them all)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1:]  # after --: passed to every pytest
    deadline = time.monotonic() + args.deadline
    have_xdist = importlib.util.find_spec("xdist") is not None
    parallel = {str(Path(p)) for p in args.xdist.split(",") if p}
    # the xdist files first: they are the longest, and the ones a GPU run is for
    files = sorted(args.files, key=lambda f: str(Path(f)) not in parallel)
    workers = lambda f: args.workers if have_xdist and str(Path(f)) in parallel else 1
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda f: run_file(f, deadline, workers(f), extra), files))
    with open(args.log, "w") as log:
        for r in results:
            log.write(f"===== {r['file']}: {r['outcome']} in {r['seconds']:.0f} s =====\n{r['output']}\n")
    print("| test file | outcome | passed | failed | errors | skipped | seconds |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {Path(r['file']).name} | {r['outcome']} | {r['passed']} | {r['failed']} | {r['error']} | "
              f"{r['skipped']} | {r['seconds']:.0f} |")
    total = {k: sum(r[k] for r in results) for k in ("passed", "failed", "error", "skipped")}
    bad = [r for r in results if r["outcome"] not in ("ok", "no tests")]
    print(f"\n{total['passed']} passed, {total['failed']} failed, {total['error']} errors, {total['skipped']} skipped; "
          f"{len(bad)} of {len(results)} files not ok" + (" (xdist: no)" if not have_xdist else ""))
    # the failing tests' names, so the summary says what to look at (the log has the rest)
    failing = [line for r in results for line in r["output"].splitlines() if line.startswith(("FAILED ", "ERROR "))]
    for line in failing[:args.show_failures]:
        print(f"  {line[:200]}")
    if len(failing) > args.show_failures:
        print(f"  ... and {len(failing) - args.show_failures} more in {args.log}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
