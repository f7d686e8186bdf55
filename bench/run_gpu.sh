#!/usr/bin/env bash
# One command for a GPU machine, offline, in at most 8 minutes (TOTAL_BUDGET_S, default 450 s):
#   1. tune: `python3 -m bench.tune` times the tile candidates on this GPU, checks each against a
#      float64 reference, and writes the winning table for its architecture into
#      kernels/pooler_tables.py (TUNE=0 keeps the committed table);
#   1a. other widths: the same sweep at H = 1024 and 384 (TUNE_WIDTHS, a space-separated list;
#      empty skips it), M = 1024-8192; each width's winners become its own table in
#      kernels/pooler_tables.py (the main table's M buckets are tuned at H = 768);
#   1b. attribution: `python3 -m bench.attribute` splits the large-M time of the fused kernel
#      (tanh epilogue, bias, main loop, strided rows, TMA) next to cuBLAS (ATTRIBUTE=0 skips it);
#   1c. L2 counters: Nsight Compute reads what the large-M tiles and cuBLAS move from L2 into the
#      SMs (`python3 -m bench.l2_counters`; L2_COUNTERS=0 skips it, so does a machine without ncu);
#   2. install this checkout non-editable (python3 -m pip, no network, no build isolation);
#   3. GPU correctness: the tile sweep of every kernel, the GPU-marked tests, forward parity on the
#      compiled kernel, the fp32 compiled-code scan;
#   4. the benchmark, timed, under what is left of the budget: per-call launch cost first, then
#      the pooler against eager / addmm+tanh / torch.compile, then the rest; each finished case is
#      appended to records.jsonl at once, so a run cut short still leaves its figures;
#   5. report.md (+ plots) and the compiled pooler kernels' registers/spills.
# Everything lands in bench/results/<gpu>-<date>/; the script prints the git command to commit it.
# DRY_RUN=1 (a CPU machine): the same steps and the same non-editable install, into a throwaway
# virtualenv that sees this interpreter's torch/triton; the kernels run through Triton's
# interpreter, timings are skipped, results go to a temporary folder and the committed table stays.
set -uo pipefail
cd "$(dirname "$0")/.."

TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-450}
TUNE_BUDGET_S=${TUNE_BUDGET_S:-150}
TUNE=${TUNE:-1}
# the dtypes tuned (bench.tune --dtypes); a dtype left out keeps its committed table
TUNE_DTYPES=${TUNE_DTYPES:-fp16,bf16}
ATTRIBUTE=${ATTRIBUTE:-1}
DRY_RUN=${DRY_RUN:-0}
START=$(date +%s)
left() { echo $(( TOTAL_BUDGET_S - ($(date +%s) - START) )); }
say() { echo "[run_gpu $(( $(date +%s) - START ))s] $*"; }

# The GPU image's python3 is a virtualenv: call it by name, and install with `python3 -m pip` (a
# bare `pip` there may belong to another Python).
PY=${PYTHON:-python3}
for mod in torch triton transformers pytest pytest_benchmark; do
    "$PY" -c "import $mod" 2>/dev/null || { echo "error: python module '$mod' is missing from $PY; the benchmark needs torch, triton, transformers, pytest and pytest-benchmark ($PY -m pip install '.[bench]' where there is a network)" >&2; exit 2; }
done
"$PY" -c "import matplotlib" 2>/dev/null || say "matplotlib is missing: report.md is written, plots are not (python3 -m bench.report <records> redraws them later)"

HAS_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$HAS_GPU" != 1 ] && [ "$DRY_RUN" != 1 ]; then
    echo "error: no CUDA GPU visible to torch; on a CPU machine run DRY_RUN=1 bash bench/run_gpu.sh" >&2
    exit 2
fi

# Time limits are the GPU's; the interpreter on a small CPU machine needs several times longer.
SLOW=1
if [ "$DRY_RUN" = 1 ]; then
    SLOW=${DRY_RUN_SLOWDOWN:-5}
    RESULTS=$(mktemp -d /tmp/bertpool_bench.XXXXXX)
    say "dry run: a throwaway virtualenv in $RESULTS/venv sees $PY's packages"
    "$PY" -m venv --without-pip "$RESULTS/venv" || { echo "error: cannot create a virtualenv" >&2; exit 1; }
    # $PY's own site-packages (a venv's, not only the base interpreter's) through a .pth: torch,
    # triton and pip are found there, and the checkout installed below lands in the throwaway venv
    "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$("$RESULTS/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/outer_site.pth"
    PY="$RESULTS/venv/bin/python"
    export TRITON_INTERPRET=1
else
    # RESULTS_DIR names another folder; by default <gpu>-<date>, and a later run on the same day
    # gets -run2, -run3 ... so that it never appends to an earlier run's records.jsonl
    if [ -n "${RESULTS_DIR:-}" ]; then
        RESULTS=$RESULTS_DIR
    else
        BASE="bench/results/$("$PY" -c 'from bench.harness import results_dir_name; print(results_dir_name())')"
        RESULTS=$BASE
        N=2
        while [ -e "$RESULTS" ]; do RESULTS="$BASE-run$N"; N=$((N + 1)); done
    fi
fi
mkdir -p "$RESULTS"
# This script's own output goes to run.log in the results too. ARCHIVE=<file.tgz> packs the
# results folder into one file on every exit, a timeout's SIGTERM included, for machines whose
# results travel back as a few files.
exec 3>&1 4>&2
exec > >(tee -a "$RESULTS/run.log") 2>&1
TEE_PID=$!
ARCHIVE=${ARCHIVE:-}
finish() {
    local rc=$?
    exec 1>&3 2>&4
    wait "$TEE_PID" 2>/dev/null
    if [ -n "$ARCHIVE" ] && [ -d "$RESULTS" ]; then
        if tar czf "$ARCHIVE" --exclude=venv -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"; then
            echo "[run_gpu] results archived in $ARCHIVE"
        else
            echo "error: cannot write the archive $ARCHIVE" >&2
            rc=1
        fi
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
"$PY" -c 'import json; from bench.harness import environment; print(json.dumps(environment(), indent=1))' > "$RESULTS/environment.json"
say "results go to $RESULTS"

TUNE_RC=0
if [ "$TUNE" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        TUNE_ARGS=(--dry-run --table-out "$RESULTS/pooler_tables.py")
    else
        TUNE_ARGS=()
    fi
    say "tuning the pooler's tiles on this GPU, budget ${TUNE_BUDGET_S}s"
    timeout $(( (TUNE_BUDGET_S + 30) * SLOW )) "$PY" -m bench.tune --budget-s "$TUNE_BUDGET_S" --dtypes "$TUNE_DTYPES" --out "$RESULTS/tune" "${TUNE_ARGS[@]}" 2>&1 | tee "$RESULTS/tune.log" | tail -n 40
    TUNE_RC=${PIPESTATUS[0]}
    say "tune exit code $TUNE_RC"
fi

# Other widths: the main table's M buckets are tuned at H = 768, and a wider weight at the same M
# makes more programs. Each width's winners (large M, where the grid's waves decide) become its
# own table; smaller M keep the main table's tiles.
TUNE_WIDTHS=${TUNE_WIDTHS-1024 384}
WIDTH_BUDGET_S=${WIDTH_BUDGET_S:-60}
if [ "$TUNE" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        WIDTH_ARGS=(--dry-run --table-out "$RESULTS/pooler_tables.py")
    else
        WIDTH_ARGS=(--batches 1024,2048,4096,8192)
    fi
    for WIDTH in $TUNE_WIDTHS; do
        say "tile sweep at H = $WIDTH, budget ${WIDTH_BUDGET_S}s (its own table; H = 768's stays)"
        timeout $(( (WIDTH_BUDGET_S + 30) * SLOW )) "$PY" -m bench.tune --hidden "$WIDTH" \
            --budget-s "$WIDTH_BUDGET_S" --dtypes "$TUNE_DTYPES" --out "$RESULTS/tune-h$WIDTH" "${WIDTH_ARGS[@]}" \
            > "$RESULTS/tune-h$WIDTH.log" 2>&1 \
            || say "the sweep at H = $WIDTH failed (see $RESULTS/tune-h$WIDTH.log)"
        grep "^| [fb][pf]16" "$RESULTS/tune-h$WIDTH/tune.md" 2>/dev/null | head -n 6
    done
fi

ATTRIBUTE_RC=0
if [ "$ATTRIBUTE" = 1 ]; then
    ATTRIBUTE_ARGS=()
    if [ "$DRY_RUN" = 1 ]; then ATTRIBUTE_ARGS=(--dry-run); fi
    say "large-M attribution (the table just tuned)"
    timeout $(( 90 * SLOW )) "$PY" -m bench.attribute --out "$RESULTS/attribute" "${ATTRIBUTE_ARGS[@]}" > "$RESULTS/attribute.log" 2>&1
    ATTRIBUTE_RC=$?
    tail -n 16 "$RESULTS/attribute.log"
    say "attribution exit code $ATTRIBUTE_RC"
fi

L2_COUNTERS=${L2_COUNTERS:-1}
if [ "$L2_COUNTERS" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        say "L2 counters: the launch step only (no profiler on a CPU)"
        timeout $(( 60 * SLOW )) "$PY" -m bench.l2_counters --launch --dry-run || say "L2 counters' launch step failed"
    else
        NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
        if [ -z "$NCU" ]; then
            say "L2 counters skipped: no ncu on this machine"
        else
            # the clocks left as they are (the timings elsewhere in this run see the same ones);
            # a profiler that refuses one of the metrics fails them all: then the basic four
            say "L2-to-SM counters of the large-M tiles ($NCU)"
            mkdir -p "$RESULTS/l2"
            for SET in all basic; do
                timeout 60 "$NCU" --clock-control none --profile-from-start off -f -o "$RESULTS/l2/ncu" \
                    --metrics "$("$PY" -m bench.l2_counters --metrics $SET)" \
                    "$PY" -m bench.l2_counters --launch > "$RESULTS/l2/ncu_$SET.log" 2>&1 && break
                rm -f "$RESULTS/l2/ncu.ncu-rep"
            done
            if [ -f "$RESULTS/l2/ncu.ncu-rep" ] && "$NCU" --import "$RESULTS/l2/ncu.ncu-rep" --csv \
                --page raw --print-units base > "$RESULTS/l2/ncu.csv" 2>> "$RESULTS/l2/ncu_import.log"; then
                "$PY" -m bench.l2_counters --summarize "$RESULTS/l2/ncu.csv" --out "$RESULTS/l2" | tail -n 8 || say "L2 counters: no table (see $RESULTS/l2)"
            else
                say "L2 counters: nothing collected (see $RESULTS/l2/ncu_*.log)"
            fi
        fi
    fi
fi

# After tuning, so that the installed copy carries the table just written.
say "installing this checkout (non-editable)"
"$PY" -m pip install --quiet --no-build-isolation --no-deps . || { echo "error: pip install failed (offline: setuptools must be installed)" >&2; exit 1; }
"$PY" -c "import bertpool_fast.kernels" || { echo "error: the installed package does not import" >&2; exit 1; }

# Compiling ~200 tile specializations dominates the GPU checks: pytest-xdist (on the GPU image)
# spreads them over XDIST_WORKERS processes (default 8); without it they run serially.
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null && [ "$DRY_RUN" != 1 ]; then XDIST=(-n "${XDIST_WORKERS:-8}"); fi
# GPU_TESTS_K (a pytest -k expression) narrows them for a short run
GPU_SELECT=()
if [ -n "${GPU_TESTS_K:-}" ]; then GPU_SELECT=(-k "$GPU_TESTS_K"); fi
say "GPU correctness: tile sweep and GPU-marked tests ${XDIST[*]} ${GPU_SELECT[*]}"
timeout $(( 200 * SLOW )) "$PY" -m pytest -m gpu tests -q -rxX -p no:cacheprovider --maxfail=30 "${XDIST[@]}" "${GPU_SELECT[@]}" 2>&1 | tee "$RESULTS/gpu_tests.log" | tail -n 60
TESTS_RC=${PIPESTATUS[0]}
say "GPU tests exit code $TESTS_RC"
# Not GPU-marked (both run on CPU too), but here they check what this machine's Triton builds: the
# forward parity suite on the compiled kernel (every shape, dtype, layout and activation), and the
# scan of every fp32 GEMM tile's compiled code for the miscompile seen with Triton 3.6, and the
# fine-tuning recipe (on CUDA autocast here).
PARITY_FILES=${PARITY_FILES:-"tests/test_pooler_parity.py tests/test_compiled_code.py tests/test_finetune.py"}
timeout $(( 120 * SLOW )) "$PY" -m pytest $PARITY_FILES -q -p no:cacheprovider "${XDIST[@]}" 2>&1 | tee "$RESULTS/gpu_parity.log" | tail -n 15
PARITY_RC=${PIPESTATUS[0]}
say "parity and compiled-code exit code $PARITY_RC"
if [ "$PARITY_RC" != 0 ]; then TESTS_RC=$PARITY_RC; fi

# What is left pays for the benchmark, less ~40 s for the report and inspect. Cases that compile
# are not started with too little left; the hard timeout is a last resort, and records.jsonl keeps
# every case that finished before it.
BENCH_S=$(( $(left) - 40 ))
if [ "$BENCH_S" -lt 60 ]; then BENCH_S=60; fi
say "benchmark, budget ${BENCH_S}s"
ENABLE=--benchmark-enable
if [ "$DRY_RUN" = 1 ]; then ENABLE=--benchmark-disable; fi
# BENCH_FILES and BENCH_K (a pytest -k expression, e.g. "H768 and not compile") narrow a short run.
BENCH_FILES=${BENCH_FILES:-"bench/test_bench_launch.py bench/test_bench_pooler.py bench/test_bench_backward.py bench/test_bench_heads.py bench/test_bench_masked_pool.py"}
BENCH_FILES=$(for f in $BENCH_FILES; do [ -f "$f" ] && echo "$f"; done)
BENCH_SELECT=()
if [ -n "${BENCH_K:-}" ]; then BENCH_SELECT=(-k "$BENCH_K"); fi
BENCH_RECORDS="$RESULTS/records.jsonl" BENCH_BUDGET_S=$BENCH_S timeout $(( BENCH_S + 30 )) \
    "$PY" -m pytest $BENCH_FILES "${BENCH_SELECT[@]}" $ENABLE --benchmark-json="$RESULTS/benchmark.json" \
    --benchmark-columns=median,iqr,rounds -q -p no:cacheprovider > "$RESULTS/bench.log" 2>&1
BENCH_RC=$?
tail -n 5 "$RESULTS/bench.log"
say "benchmark exit code $BENCH_RC"

if [ -s "$RESULTS/records.jsonl" ]; then
    "$PY" -m bench.report "$RESULTS/records.jsonl" || say "report failed (see above)"
else
    say "no timed records (dry run or nothing finished): no report"
fi
# The forward pooler's configs only: the full table (every kernel) takes minutes to compile.
# Inspection compiles for a GPU target, never through the interpreter; a dry run compiles one
# dtype's sm_90 pooler configs only (the suite's test_inspect compiles them all).
# INSPECT=0 skips it (a short run whose tiles an earlier run inspected).
if [ "${INSPECT:-1}" = 1 ]; then
    INSPECT_ARGS=(--kernel pooler)
    if [ "$DRY_RUN" = 1 ]; then INSPECT_ARGS=(--kernel "pooler_fwd fp16" --arch sm_90); fi
    timeout $(( 45 * SLOW )) env -u TRITON_INTERPRET "$PY" -m bertpool_fast inspect "${INSPECT_ARGS[@]}" > "$RESULTS/inspect.txt" 2>&1 || say "inspect failed or did not finish in $(( 45 * SLOW )) s (see $RESULTS/inspect.txt)"
    tail -n 1 "$RESULTS/inspect.txt"
fi

say "done in $(( $(date +%s) - START ))s; tune rc=$TUNE_RC, attribution rc=$ATTRIBUTE_RC, GPU tests rc=$TESTS_RC, benchmark rc=$BENCH_RC"
if [ "$DRY_RUN" != 1 ]; then
    echo "commit the results:  git add $RESULTS kernels/pooler_tables.py && git commit -m \"Benchmark results: $(basename "$RESULTS")\""
else
    rm -rf "$RESULTS/venv"
fi
[ "$TUNE_RC" = 0 ] && [ "$ATTRIBUTE_RC" = 0 ] && [ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
