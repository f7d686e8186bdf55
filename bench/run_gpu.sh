#!/usr/bin/env bash
# One command for a GPU session, offline, in under 8 minutes:
#   1. install this checkout (pip, no network: setuptools backend, no build isolation, no deps);
#   2. run the GPU-marked tests;
#   3. run the whole benchmark, timed, under a budget that leaves room for the report;
#   4. write pytest-benchmark JSON, report.md, plots, logs and the inspect table into
#      bench/results/<gpu>-<date>/, then print the git command that commits them.
# DRY_RUN=1 does what a CPU-only machine can: builds the wheel without installing it (the working
# tree's editable install stays), runs the same steps, writes into a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."

TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-450}   # 7.5 min: the 8-minute limit less a margin
DRY_RUN=${DRY_RUN:-0}
START=$(date +%s)
left() { echo $(( TOTAL_BUDGET_S - ($(date +%s) - START) )); }
say() { echo "[run_gpu $(( $(date +%s) - START ))s] $*"; }

for mod in torch triton transformers pytest pytest_benchmark; do
    python -c "import $mod" 2>/dev/null || { echo "error: python module '$mod' is missing; the benchmark needs torch, triton, transformers, pytest and pytest-benchmark (pip install -e '.[bench]' where there is a network)" >&2; exit 2; }
done
python -c "import matplotlib" 2>/dev/null || say "matplotlib is missing: report.md is written, plots are not (python -m bench.report <json> redraws them later)"

HAS_GPU=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$HAS_GPU" != 1 ] && [ "$DRY_RUN" != 1 ]; then
    echo "error: no CUDA GPU visible to torch; on a CPU machine run DRY_RUN=1 bash bench/run_gpu.sh" >&2
    exit 2
fi

if [ "$DRY_RUN" = 1 ]; then
    OUT=$(mktemp -d /tmp/bertpool_bench.XXXXXX)
    say "dry run: building the wheel only (the editable install is left alone)"
    pip wheel --quiet --no-build-isolation --no-deps --wheel-dir "$OUT/wheel" . || { echo "error: the wheel does not build offline" >&2; exit 1; }
else
    say "installing this checkout"
    pip install --quiet --no-build-isolation --no-deps . || { echo "error: pip install failed (offline: setuptools must be installed)" >&2; exit 1; }
    OUT="bench/results/$(python -c 'from bench.harness import results_dir_name; print(results_dir_name())')"
fi
mkdir -p "$OUT"
python -c 'import json; from bench.harness import environment; print(json.dumps(environment(), indent=1))' > "$OUT/environment.json"
say "results go to $OUT"

say "GPU-marked tests"
timeout 150 python -m pytest -m gpu tests -q -p no:cacheprovider 2>&1 | tail -n 40 | tee "$OUT/gpu_tests.log"
TESTS_RC=${PIPESTATUS[0]}
say "GPU tests exit code $TESTS_RC"
# The forward parity suite is not GPU-marked (it runs through the interpreter on CPU), but on a GPU
# it checks the compiled kernel itself: every shape, dtype, layout and activation.
say "forward parity on the compiled kernel"
timeout 120 python -m pytest tests/test_pooler_parity.py -q -p no:cacheprovider 2>&1 | tail -n 15 | tee "$OUT/gpu_parity.log"
PARITY_RC=${PIPESTATUS[0]}
say "parity exit code $PARITY_RC"
if [ "$PARITY_RC" != 0 ]; then TESTS_RC=$PARITY_RC; fi

# The benchmark skips cases once its budget is spent; what is left after it pays for the report
# and the inspect table (about 40 s together), and the case running when the budget ends (cases
# that compile are not started with under 20-60 s left). The hard timeout is a last resort: a
# killed pytest writes no JSON.
BENCH_S=$(( $(left) - 90 ))
if [ "$BENCH_S" -lt 60 ]; then BENCH_S=60; fi
say "benchmark, budget ${BENCH_S}s"
# The pooler bench first: it holds the targets, and a spent budget skips what comes last.
BENCH_FILES="bench/test_bench_pooler.py bench/test_bench_backward.py bench/test_bench_heads.py bench/test_bench_masked_pool.py"
BENCH_BUDGET_S=$BENCH_S timeout $(( BENCH_S + 75 )) python -m pytest $BENCH_FILES --benchmark-enable \
    --benchmark-json="$OUT/benchmark.json" --benchmark-columns=median,iqr,rounds -q -p no:cacheprovider \
    > "$OUT/bench.log" 2>&1
BENCH_RC=$?
tail -n 5 "$OUT/bench.log"
say "benchmark exit code $BENCH_RC"

python -m bench.report "$OUT/benchmark.json" || say "report failed (see above)"
# The forward pooler's configs only: the full table (every kernel) takes minutes to compile.
timeout 60 python -m bertpool_fast inspect --kernel pooler > "$OUT/inspect.txt" 2>&1 || say "inspect did not finish in 60 s (see $OUT/inspect.txt)"

say "done in $(( $(date +%s) - START ))s; GPU tests rc=$TESTS_RC, benchmark rc=$BENCH_RC"
if [ "$DRY_RUN" != 1 ]; then
    echo "commit the results:  git add $OUT && git commit -m \"Benchmark results: $(basename "$OUT")\""
fi
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
