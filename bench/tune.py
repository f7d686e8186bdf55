"""``python -m bench.tune``: measure the forward pooler's tile candidates on this GPU and write its
tile table into ``kernels/pooler_tables.py``.

For each dtype and each M of ``BATCHES`` (H = 768, S = 128 ``hidden_states``, so the rows the kernel
reads are strided as in BERT), every candidate of ``kernels.pooler_candidates.TUNE_CANDIDATES`` whose M range
covers that M, plus the table's current pick, is

  1. checked against a float64 reference (twice, into NaN-filled outputs: an element left unwritten,
     or a split-K ticket counter left non-zero by the first launch, fails the second); a wrong
     candidate is reported loudly and never picked;
  2. timed with ``harness.gpu_time`` (CUDA-graph replays) over rotated input sets so the weight is
     cold in L2, as the benchmark times it.

Eager ``tanh(nn.functional.linear(x, w, b))`` (what ``BertPooler`` runs) is timed at each M in the
same run. The fastest correct candidate per M wins, unless the table's current pick measured
within ``TABLE_MARGIN`` (2%) of it, which then stays; adjacent M with the same winner merge into one
bucket; the table of this GPU's architecture ("sm90" on an H100) is rewritten, the others kept.
``--out DIR`` receives tune.json (every timing), tune.md (the summary) and a copy of the table.

On a GPU with programmatic dependent launch (sm_90 and later), each M's fastest tile is timed
once more with ``pdl=True`` (a launch option: ``kernels/pooler.py``) and wins only if faster.

Compiling is most of the cost (~1-2 s per config and dtype): ``--compile-jobs`` worker processes
compile every candidate first, and its PDL form where PDL is timed (each runs one launch at the
largest M it is swept at, which fills Triton's on-disk cache, so this process then loads instead
of compiling). A config whose launch has not returned ``JOB_TIMEOUT_S`` after it started is given
up (its worker killed and replaced), and one whose launch faulted the GPU is left out too; both
are rejected unrun: in this process a launch that never returns would end the whole run, and a
fault would fail every measurement after it. What is not compiled by ``PRECOMPILE_DEADLINE_S``
is compiled here, by the sweep. ``--budget-s`` bounds the
run: with less than ``RESERVE_S`` of it left, each remaining M measures only eager and the
table's current pick.

``--dry-run`` runs the same code path on a CPU through Triton's interpreter: three candidates, tiny
sizes, wall-clock "timings" that mean nothing, and the table written under ``--out`` only.

``--hidden H`` sweeps another width (BERT-large's 1024, MiniLM's 384): the main table's M buckets
are tuned at H = 768, and a wider weight at the same M makes more programs. Its winners become
that width's own table (``WIDTH_TABLES[arch][H]`` in the same module), which the runtime reads for
square [H, H] weights of that width; the M below the sweep's smallest keep the main table (a
``None`` row), and the main table itself is never touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from bench import harness

BATCHES = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
HIDDEN = 768
SEQ = 128
# float64-reference tolerance, relative Frobenius: two output roundings (tests/conftest.py REL_TOL)
TOLERANCE = {"fp16": 2 * 2.0**-11, "bf16": 2 * 2.0**-8, "fp32": 2e-5}
DRY_RUN = {"batches": (1, 8, 33), "hidden": 128, "seq": 3}
# Seconds of --budget-s kept for what follows the candidates: the remaining M's eager and
# current-table timings (~1 s each) and writing the results, so a run ends inside its budget.
RESERVE_S = 20.0
# How much faster eager (cuBLAS linear, then tanh) must measure than the fastest tile at an M for
# the table to send backend="auto" there (kernels/pooler_tables.py's EAGER_TABLES): medians of
# one run differ by about 1% between runs, so a tie never flips to eager on noise.
EAGER_MARGIN = 1.03
# How much faster a candidate must measure than the table's current pick at an M to replace it.
# The same tile's median moves by about 1% between runs (H100: 7.62 and 7.57 us at M = 2048,
# 21.53 and 21.67 at 8192, runs 9 and 10), so without a margin the table changes on noise: run 10
# replaced M = 2048's 4-stage tile with a 5-stage one measured 0.01 us faster.
TABLE_MARGIN = 1.02
# Seconds the parallel compile may take in all (half of --budget-s at most); what is left then is
# compiled by the sweep itself (80 configs over 8 workers compiled in 15.5 s on the H100 host).
PRECOMPILE_DEADLINE_S = 75.0
# Seconds one warm-up launch may take, its compile included, before it is taken for a hang: the
# slowest config compiles in ~2 s (Triton 3.6, one CPU). The eighth H100 run's 24 warp-specialized
# 128-row launches never returned, and held 16 workers until the deadline, starving 30 other jobs.
JOB_TIMEOUT_S = 30.0
# Compile workers: one per usable CPU (compiling is CPU-bound: LLVM and ptxas), at most this many;
# each holds a CUDA context. Run 7 compiled 240 configs in 30.5 s with 8 workers on a 16-core host.
MAX_COMPILE_JOBS = 16


@dataclass
class Measurement:
    label: str
    config: Optional[dict]  # None for eager
    source: str  # "candidate", "current table", "eager"
    rel_err: Optional[float] = None
    status: str = "ok"  # "ok", "REJECTED: ...", "skipped: budget"
    median_us: Optional[float] = None
    min_us: Optional[float] = None
    method: str = ""


@dataclass
class BucketResult:
    dtype: str
    m: int
    rotated_sets: int
    weight_l2_cold: bool
    measurements: list[Measurement] = field(default_factory=list)
    winner: Optional[str] = None


class Inputs:
    """``n`` input sets at one M: rows are token ``i % seq`` of one [M, seq, H] buffer (strided like
    ``hidden_states[:, 0]``, distinct memory per set), each set with its own weight and bias."""

    def __init__(self, m: int, hidden: int, seq: int, dtype: torch.dtype, device: str, n: int):
        self.m = m
        buf = torch.randn(m, seq, hidden, device=device).to(dtype)
        self.sets = []
        for i in range(n):
            w = (torch.randn(hidden, hidden, device=device) * hidden**-0.5).to(dtype)
            b = (torch.randn(hidden, device=device) * 0.1).to(dtype)
            self.sets.append((buf[:, i % seq], w, b))

    def reference(self, i: int = 0) -> torch.Tensor:
        x, w, b = self.sets[i]
        return torch.tanh(torch.addmm(b.double(), x.double(), w.double().t()))


def check(call, inputs: Inputs, dtype_name: str) -> tuple[float, str]:
    """(rel_err, status) of two calls into NaN-filled outputs against the float64 reference."""
    ref = inputs.reference(0)
    worst = 0.0
    for _ in range(2):
        out = torch.full(ref.shape, float("nan"), dtype=inputs.sets[0][0].dtype, device=ref.device)
        call(0, out)
        harness.sync()
        if torch.isnan(out).any():
            return math.inf, "REJECTED: NaN left in the output (unwritten elements)"
        worst = max(worst, harness.rel_err(out, ref))
    if worst > TOLERANCE[dtype_name]:
        return worst, f"REJECTED: rel err {worst:.2e} > {TOLERANCE[dtype_name]:.1e}"
    return worst, "ok"


def time_call(call, n: int, dry_run: bool) -> harness.Timing:
    if dry_run or not harness.HAS_CUDA:
        return harness.wall_time(lambda i: call(i, None), n, iters=2, rounds=2)
    return harness.gpu_time(lambda i: call(i, None), n, reps=15, min_calls=32)


def candidates_at(m: int, dtype: torch.dtype, dry_run: bool, arch: str = "default") -> list:
    from bertpool_fast.kernels.pooler_candidates import tune_candidates

    candidates = tune_candidates(dtype, arch)  # this architecture's own candidates included
    if dry_run:  # one plain, one split-K, one swap-AB candidate: every kernel branch
        picks = [c for _, _, c in candidates]
        plain = next(c for c in picks if c.split_k == 1 and not c.swap_ab)
        split = next(c for c in picks if c.split_k > 1 and not c.swap_ab)
        swap = next((c for c in picks if c.swap_ab), None)
        return [c for c in (plain, split, swap) if c is not None]
    return [cfg for lo, hi, cfg in candidates if lo <= m <= hi]


# What precompile says of a config it leaves out of the sweep: its warm-up launch never
# returned, or it faulted the GPU (an illegal address, a misaligned access): a CUDA context that
# has run such a launch fails every later call, so the sweep's own process must never run it.
NEVER_RETURNED = "its warm-up launch did not return (a hang?)"
FAULTED = "its warm-up launch faulted the GPU"


def _device_usable() -> bool:
    """Whether this process's GPU context still runs work (always, without a GPU)."""
    if not torch.cuda.is_available():
        return True
    try:
        torch.ones(1, device="cuda").add_(1).item()  # item() waits for it
        return True
    except Exception:  # noqa: BLE001 - any error here means the context is gone
        return False


def _warm_one(job: tuple[str, tuple, int, int]) -> tuple[str, Optional[str]]:
    # In a worker process: one launch of a config at the largest M it is swept at, which compiles
    # it into Triton's on-disk cache (M is not specialized; rows 16-aligned, H apart: divisible by
    # 16, as the sweep's S * H) and runs it once with several tiles per program where the grid is
    # persistent: a launch that never returns, or one that faults the GPU, shows here, where it
    # costs a worker and not the sweep. Returns ("ok", None), ("failed", why) (compiled inline
    # later), ("faulted", why), or ("unknown", why): a worker whose context an earlier job
    # faulted cannot tell, and the sweep compiles its jobs itself.
    dtype_name, cfg_fields, hidden, m = job
    if not _device_usable():
        return "unknown", f"{dtype_name} {cfg_fields}: not run, an earlier job faulted this worker"
    try:
        from bertpool_fast.kernels.pooler import pooler_fwd
        from bertpool_fast.kernels.tiles import TileConfig

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = harness.DTYPES_BY_NAME[dtype_name]
        inputs = Inputs(m, hidden, 1, dtype, device, 1)
        pooler_fwd(*inputs.sets[0], "tanh", config=TileConfig(*cfg_fields))
        harness.sync()
        return "ok", None
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        why = f"{dtype_name} {cfg_fields}: {type(exc).__name__}: {exc}"
        return ("failed" if _device_usable() else "faulted"), why


def default_compile_jobs(args) -> int:
    """``--compile-jobs`` when not given: none for a dry run (the interpreter compiles nothing),
    else one per CPU this process may run on, at most MAX_COMPILE_JOBS."""
    if args.dry_run:
        return 0
    usable = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    return max(1, min(MAX_COMPILE_JOBS, len(usable)))


def _precompile_worker(jobs: list, warm, tasks, events) -> None:
    # One compile worker: takes job indices until a None, announcing each before its launch so
    # that the parent can tell a launch that never returns (this worker killed) from a job not
    # yet started. A launch that faulted the GPU, or found this context already gone ("unknown"),
    # ends the worker: its context fails every later launch, so a fresh one takes the rest.
    pid = os.getpid()
    while (i := tasks.get()) is not None:
        events.put(("start", pid, i))
        try:
            status, why = warm(jobs[i])
        except Exception as exc:  # noqa: BLE001 - reported by the parent
            status, why = "failed", f"{jobs[i][:2]}: {type(exc).__name__}: {exc}"
        events.put(("done", pid, i, status, why))
        if status in ("faulted", "unknown"):
            return


def precompile(jobs: list, workers: int, deadline_s: float, warm=_warm_one,
               job_timeout_s: float = JOB_TIMEOUT_S) -> dict:  # fmt: skip
    """Compile every job (dtype, config fields, hidden, M) in parallel worker processes, each by
    one launch (``warm``); failures only cost time. Returns {job: why} of the jobs the sweep must
    leave out: those whose launch had not returned ``job_timeout_s`` after it started (NEVER_RETURNED;
    its worker is killed and another takes its place, so a hang costs one worker that long, not
    the pool) and those whose launch faulted the GPU (FAULTED). The sweep runs in this process and
    could recover from neither. Jobs left unstarted or unfinished at ``deadline_s`` are not left
    out: the sweep compiles them itself. A job a faulted context could not run ("unknown") runs
    once more in a fresh worker."""
    if workers <= 0 or not jobs:
        return {}
    import multiprocessing
    import queue

    start = time.monotonic()
    # spawn: a forked child must not inherit this process's CUDA context
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for i in range(len(jobs)):
        tasks.put(i)
    queued = len(jobs)  # indices put and not yet announced by a worker
    procs: dict = {}  # pid -> live worker
    running: dict = {}  # pid -> (job index, when it started)
    finished: set = set()
    failures, left_out, retried = [], {}, set()

    def spawn_worker() -> None:
        proc = ctx.Process(target=_precompile_worker, args=(jobs, warm, tasks, events), daemon=True)
        proc.start()
        procs[proc.pid] = proc

    def retire(pid: int) -> None:
        proc = procs.pop(pid)
        if proc.is_alive():
            proc.kill()
        proc.join()

    try:
        for _ in range(min(workers, len(jobs))):
            spawn_worker()
        while len(finished) < len(jobs) and time.monotonic() - start < deadline_s:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                event = None
            if event is not None and event[0] == "start":
                _, pid, i = event
                running[pid] = (i, time.monotonic())
                queued -= 1
            elif event is not None:
                _, pid, i, status, why = event
                running.pop(pid, None)
                finished.add(i)
                if status == "faulted":
                    left_out[jobs[i]] = f"{FAULTED}: {why}"[:300]
                elif status == "unknown" and i not in retried:
                    retried.add(i)  # this context was gone before the launch: once more
                    finished.discard(i)
                    tasks.put(i)
                    queued += 1
                elif status not in ("ok", "unknown"):
                    failures.append(why)
            now = time.monotonic()
            for pid, (i, since) in list(running.items()):
                if now - since > job_timeout_s:
                    left_out[jobs[i]] = NEVER_RETURNED
                    finished.add(i)
                    del running[pid]
                    retire(pid)
            for pid, proc in list(procs.items()):
                if proc.is_alive() or (pid in running and proc.exitcode == 0):
                    continue  # at work, or ended after a fault: its last event is on the way
                if pid in running:  # it crashed in a job, which the sweep compiles itself
                    i, _ = running.pop(pid)
                    finished.add(i)
                    failures.append(f"{jobs[i][:2]}: its worker died (exit code {proc.exitcode})")
                retire(pid)
            while queued > 0 and len(procs) < min(workers, queued + len(running)):
                spawn_worker()
    finally:
        for pid in list(procs):
            retire(pid)
    for f in failures:
        print(f"precompile: {f}", file=sys.stderr)
    for job, why in sorted(left_out.items()):
        when = f" in {job_timeout_s:.0f} s" if why == NEVER_RETURNED else ""
        print(f"precompile: {job[0]} {job[1]} at M={job[3]}: {why}{when}; left out of the sweep",
              file=sys.stderr)  # fmt: skip
    hung = sum(why == NEVER_RETURNED for why in left_out.values())
    print(f"precompiled {len(jobs)} configs in {time.monotonic() - start:.1f} s ({workers} "
          f"workers, {len(failures)} failed, {hung} never returned, "
          f"{len(left_out) - hung} faulted the GPU, {len(jobs) - len(finished)} not finished by "
          f"the {deadline_s:.0f} s deadline: the sweep compiles those)")  # fmt: skip
    return left_out


def sweep(dtypes: list[str], batches, hidden: int, seq: int, dry_run: bool, budget: harness.Budget,
          arch: str, left_out: Optional[dict] = None) -> list[BucketResult]:  # fmt: skip
    """``left_out``: {(dtype name, config fields): why} of configs precompile found unsafe to run
    here (rejected unrun)."""
    left_out = left_out or {}
    import torch.nn.functional as F

    from bertpool_fast.kernels.pooler import arch_has_pdl, pick_config
    from bertpool_fast.kernels.tiles import TileConfig, config_label

    device = "cuda" if harness.HAS_CUDA else "cpu"
    results = []
    for dtype_name in dtypes:
        dtype = harness.DTYPES_BY_NAME[dtype_name]
        for m in batches:
            nbytes, _ = harness.pooler_traffic(m, hidden, hidden, dtype.itemsize)
            n = 1 if dry_run else harness.rotation_count(nbytes, nbytes)
            inputs = Inputs(m, hidden, seq, dtype, device, n)
            sets = inputs.sets
            bucket = BucketResult(dtype_name, m, n, harness.l2_cold(nbytes, n))
            results.append(bucket)
            with torch.inference_mode():
                eager = Measurement("eager linear+tanh", None, "eager")
                eager_call = lambda i, out, sets=sets: torch.tanh(F.linear(*sets[i]), out=out)  # noqa: E731
                eager.rel_err, eager.status = check(eager_call, inputs, dtype_name)
                _record(eager, time_call(eager_call, n, dry_run))
                bucket.measurements.append(eager)

                current = pick_config(m, dtype, False, arch, hidden)
                configs = [(current, "current table")]
                configs += [(c, "candidate") for c in candidates_at(m, dtype, dry_run, arch)
                            if c != current]  # fmt: skip
                for cfg, source in configs:
                    meas = Measurement(config_label(cfg), cfg._asdict(), source)
                    bucket.measurements.append(meas)
                    if (dtype_name, tuple(cfg)) in left_out:
                        meas.status = f"REJECTED: {left_out[(dtype_name, tuple(cfg))]}"
                        print(f"!! {dtype_name} M={m} {meas.label}: {meas.status}",
                              file=sys.stderr)  # fmt: skip
                        continue
                    if source == "candidate" and budget.left() <= RESERVE_S:
                        # the table's current pick and eager are still timed at every M
                        meas.status = "skipped: budget"
                        continue
                    _measure(meas, cfg, inputs, dtype_name, n, dry_run)
                # Programmatic dependent launch is a launch option, not a tile: the fastest tile
                # without it is timed once more with it (unless that is the table's current pick,
                # already timed), and wins only if measured faster. The fastest without it, not
                # the fastest overall: a current pick with PDL would otherwise keep every faster
                # tile from being timed with it.
                best = _fastest(bucket, pdl=False)
                twin = None if best is None else TileConfig(**best.config)._replace(pdl=True)
                if (arch_has_pdl(arch) and twin is not None and twin != current
                        and budget.left() > RESERVE_S):  # fmt: skip
                    cfg = twin
                    meas = Measurement(config_label(cfg), cfg._asdict(), "fastest, with pdl")
                    bucket.measurements.append(meas)
                    if (dtype_name, tuple(cfg)) in left_out:
                        meas.status = f"REJECTED: {left_out[(dtype_name, tuple(cfg))]}"
                    else:
                        _measure(meas, cfg, inputs, dtype_name, n, dry_run)
                skipped = sum(x.status == "skipped: budget" for x in bucket.measurements)
                if skipped:
                    print(f"budget: {dtype_name} M={m}: {skipped} candidates not measured",
                          file=sys.stderr)  # fmt: skip
            best = choose_winner(bucket)
            bucket.winner = best.label if best is not None else None
    return results


def choose_winner(bucket: BucketResult) -> Optional[Measurement]:
    """The fastest correct tile, unless the table's current pick measured within TABLE_MARGIN of
    it: then the current pick stays."""
    best = _fastest(bucket)
    current = next((x for x in bucket.measurements if x.source == "current table"
                    and x.config is not None and x.status == "ok"), None)  # fmt: skip
    if best is not None and current is not None:
        if current.median_us <= best.median_us * TABLE_MARGIN:
            return current
    return best


def _fastest(bucket: BucketResult, pdl: Optional[bool] = None) -> Optional[Measurement]:
    """The fastest correct tile; ``pdl``: only tiles launched with (True) or without (False) it."""
    timed = [x for x in bucket.measurements if x.config is not None and x.status == "ok"
             and (pdl is None or x.config["pdl"] == pdl)]  # fmt: skip
    return min(timed, key=lambda x: x.median_us) if timed else None


def _measure(meas: Measurement, cfg, inputs: Inputs, dtype_name: str, n: int,
             dry_run: bool) -> None:  # fmt: skip
    """Check one config against float64, then time it if correct; a failure is reported."""
    from bertpool_fast.kernels.pooler import pooler_fwd

    def call(i, out, sets=inputs.sets):
        return pooler_fwd(*sets[i], "tanh", out=out, config=cfg)

    try:
        meas.rel_err, meas.status = check(call, inputs, dtype_name)
        if meas.status == "ok":
            _record(meas, time_call(call, n, dry_run))
    except Exception as exc:  # noqa: BLE001 - one broken candidate is reported
        meas.status = f"REJECTED: {type(exc).__name__}: {exc}"[:300]
    if meas.status != "ok":
        print(f"!! {dtype_name} M={inputs.m} {meas.label}: {meas.status}", file=sys.stderr)


def _record(meas: Measurement, timing: harness.Timing) -> None:
    meas.median_us, meas.min_us, meas.method = timing.median_us, timing.min_us, timing.method


def build_table(buckets: list[BucketResult], fallback: tuple) -> tuple:
    """Winners per measured M -> table rows; adjacent equal winners merge, the last bound None.
    An M with no correct candidate keeps the fallback table's pick (never a rejected config)."""
    from bertpool_fast.kernels.tiles import TileConfig, pick_tile

    picks = []
    for b in sorted(buckets, key=lambda b: b.m):
        winner = next((x for x in b.measurements if x.label == b.winner and x.config), None)
        picks.append((b.m, TileConfig(**winner.config) if winner else pick_tile(fallback, b.m)))
    return _merged_rows(picks)


def eager_faster(bucket: BucketResult) -> bool:
    """Whether eager measured faster than every correct tile at this M, by EAGER_MARGIN (or no tile
    was correct)."""
    eager = next((x for x in bucket.measurements if x.source == "eager"), None)
    if eager is None or eager.status != "ok" or eager.median_us is None:
        return False
    best = _fastest(bucket)
    return best is None or eager.median_us * EAGER_MARGIN < best.median_us


def eager_rows(buckets: list[BucketResult]) -> tuple:
    """Per measured M, whether eager won (``eager_faster``) -> rows as ``build_table``'s."""
    return _merged_rows([(b.m, eager_faster(b)) for b in sorted(buckets, key=lambda b: b.m)])


def _merged_rows(picks: list) -> tuple:
    # (M, value) in increasing M -> table rows: adjacent equal values merge, the last bound None
    rows: list[list[Any]] = []
    for m, value in picks:
        if rows and rows[-1][1] == value:
            rows[-1][0] = m
        else:
            rows.append([m, value])
    rows[-1][0] = None
    return tuple((m, value) for m, value in rows)


def width_table(buckets: list[BucketResult], fallback: tuple, rows_of=None) -> tuple:
    """``build_table`` (or ``rows_of``) for a width's own table: the M below the smallest measured
    one, down to the previous M of the tune's grid, are handed back to the main table (a None
    row)."""
    rows = build_table(buckets, fallback) if rows_of is None else rows_of(buckets)
    smallest = min(b.m for b in buckets)
    below = [m for m in BATCHES if m < smallest]
    if below:
        return ((below[-1], None), *rows)
    return rows if smallest == 1 else ((smallest - 1, None), *rows)


def render_config(cfg) -> str:
    """T(block_m, block_n, block_k, num_warps, num_stages, <the options not at their default>)."""
    head = ", ".join(str(getattr(cfg, name)) for name in cfg._fields[:5])
    options = "".join(f", {name}={getattr(cfg, name)!r}" for name in cfg._fields[5:]
                      if getattr(cfg, name) != cfg._field_defaults[name])  # fmt: skip
    return f"T({head}{options})"


@dataclass
class TableModule:
    """What kernels/pooler_tables.py holds: the main tables (H = 768) and the widths' own."""

    tables: dict
    provenance: dict
    width_tables: dict = field(default_factory=dict)
    width_provenance: dict = field(default_factory=dict)
    # where eager measured faster (True / False rows), main and per width
    eager_tables: dict = field(default_factory=dict)
    eager_width_tables: dict = field(default_factory=dict)

    @classmethod
    def current(cls) -> TableModule:
        """The module the runtime imported, as copies a new tune may change."""
        from bertpool_fast.kernels import pooler_tables as t

        return cls(
            {arch: dict(by_dtype) for arch, by_dtype in t.TABLES.items()},
            dict(t.PROVENANCE),
            {arch: {h: dict(d) for h, d in by.items()} for arch, by in t.WIDTH_TABLES.items()},
            {arch: dict(by) for arch, by in t.WIDTH_PROVENANCE.items()},
            {arch: dict(by_dtype) for arch, by_dtype in t.EAGER_TABLES.items()},
            {
                arch: {h: dict(d) for h, d in by.items()}
                for arch, by in t.EAGER_WIDTH_TABLES.items()
            },
        )


def _render_text(key: str, text: str, indent: int) -> str:
    """``key: "text",`` with one string literal per wrapped line, double-quoted: the layout ruff
    format keeps."""
    import textwrap

    pad = " " * indent
    # broken at single spaces only (not after a hyphen, not inside a long word), each space given
    # back to its line: the literals join to the text
    parts = textwrap.wrap(text, 88 - indent, break_on_hyphens=False, break_long_words=False)
    parts = parts or [""]
    parts = [p + " " for p in parts[:-1]] + parts[-1:]
    return f"{pad}{key}: " + f"\n{pad}".join(json.dumps(p) for p in parts) + ","


def _render_tables(by_dtype: dict, indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for dtype_name, rows in by_dtype.items():
        lines.append(f"{pad}{json.dumps(dtype_name)}: (")
        for m, value in rows:
            shown = (
                repr(value) if value is None or isinstance(value, bool) else render_config(value)
            )
            lines.append(f"{pad}    ({m!r}, {shown}),")
        lines.append(f"{pad}),")
    return lines


def render_module(module: TableModule, header: str) -> str:
    """The source of kernels/pooler_tables.py for these tables (the same layout as the file)."""
    lines = ['"""' + header.strip() + '\n"""', "", "from .tiles import TileConfig as T", ""]
    lines.append("PROVENANCE = {")
    lines += [_render_text(json.dumps(arch), text, 4) for arch, text in module.provenance.items()]
    lines += ["}", "", *_render_by_arch("TABLES", module.tables), ""]
    if module.width_provenance:
        lines.append("WIDTH_PROVENANCE = {")
        for arch, by_width in module.width_provenance.items():
            lines.append(f"    {json.dumps(arch)}: {{")
            lines += [_render_text(str(h), text, 8) for h, text in by_width.items()]
            lines.append("    },")
        lines.append("}")
    else:
        lines.append("WIDTH_PROVENANCE = {}")
    lines += ["", *_render_by_width("WIDTH_TABLES", module.width_tables), ""]
    lines += [*_render_by_arch("EAGER_TABLES", module.eager_tables), ""]
    lines += _render_by_width("EAGER_WIDTH_TABLES", module.eager_width_tables)
    return "\n".join(lines) + "\n"


def _render_by_arch(name: str, tables: dict) -> list[str]:
    if not tables:
        return [f"{name} = {{}}"]
    lines = [f"{name} = {{"]
    for arch, by_dtype in tables.items():
        lines += [f"    {json.dumps(arch)}: {{", *_render_tables(by_dtype, 8), "    },"]
    return lines + ["}"]


def _render_by_width(name: str, tables: dict) -> list[str]:
    if not tables:
        return [f"{name} = {{}}"]
    lines = [f"{name} = {{"]
    for arch, by_width in tables.items():
        lines.append(f"    {json.dumps(arch)}: {{")
        for h, by_dtype in by_width.items():
            lines += [f"        {h}: {{", *_render_tables(by_dtype, 12), "        },"]
        lines.append("    },")
    return lines + ["}"]


TABLE_HEADER = """Forward-pooler tile tables, per GPU architecture, dtype and batch bucket: data, not code.

Generated by ``python -m bench.tune``, which measures its candidates on the GPU it runs on and
rewrites this file: it replaces the tables of that GPU's architecture and keeps the others as they
were. ``PROVENANCE`` says, per architecture, where its tables came from (GPU, date, versions).
Each table is ((largest M the row serves, config), ...), increasing, the last bound None.
Architectures: "sm<major><minor>" of a compute capability ("sm90" = 9.0, exact match only) and
"default" (every other GPU, and the CPU interpreter).
``TABLES`` is tuned at H = 768 and serves every width. ``WIDTH_TABLES[arch][H]`` (from
``python -m bench.tune --hidden H``) serves square [H, H] weights of that width on that
architecture instead; its rows cover the M it measured, and a row whose config is None hands
those M back to ``TABLES``. ``WIDTH_PROVENANCE`` says where each came from.
``EAGER_TABLES[arch][dtype]`` and ``EAGER_WIDTH_TABLES[arch][H][dtype]``, from the same tunes, have
the tile tables' rows with True or False for a config: True where eager (cuBLAS linear, then the
activation) measured faster than every tile, by the margin the tune names; ``backend="auto"`` runs
eager at those M, ``backend="triton"`` the table's tile. A dtype gets rows only where eager won at
some M; no rows mean False. M that a width's tile table covers read that width's eager rows only.
"""


def new_tables(buckets: list[BucketResult], arch: str, env: dict, hidden: int, seq: int,
               width: Optional[int] = None) -> TableModule:  # fmt: skip
    """The tables module with ``arch``'s measured dtypes replaced: its main tables, or with
    ``width`` that width's own tables (the main ones untouched). ``hidden``: the H swept (a dry
    run sweeps a smaller one)."""
    module = TableModule.current()
    tuned = sorted({b.dtype for b in buckets}, key=list(TOLERANCE).index)  # fp16, bf16, fp32
    main = module.tables.get(arch, module.tables["default"])
    base = dict(main if width is None else module.width_tables.get(arch, {}).get(width, {}))
    if width is None:
        eager = module.eager_tables.setdefault(arch, {})
    else:
        eager = module.eager_width_tables.setdefault(arch, {}).setdefault(width, {})
    for dtype_name in tuned:
        measured = [b for b in buckets if b.dtype == dtype_name]
        if width is None:
            base[dtype_name] = build_table(measured, base[dtype_name])
            rows = eager_rows(measured)
        else:
            base[dtype_name] = width_table(measured, main[dtype_name])
            rows = width_table(measured, (), eager_rows)
        # rows only where eager won somewhere: none at all is what the runtime reads fastest
        if any(value for _, value in rows):
            eager[dtype_name] = rows
        else:
            eager.pop(dtype_name, None)
    _drop_empty(module.eager_tables)
    _drop_empty(module.eager_width_tables)
    text = (
        f"generated by python -m bench.tune on {env['device']}"
        + (f" ({env['sms']} SMs)" if "sms" in env else "")
        + ", "
        f"{env['date']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"driver {env['driver']}; H = {hidden}, S = {seq}; tuned {', '.join(tuned)}"
    )
    kept = "" if set(tuned) >= set(base) else "; other dtypes kept from the previous table"
    if width is None:
        module.tables[arch] = base
        module.provenance[arch] = text + kept
    else:
        batches = ", ".join(str(m) for m in sorted({b.m for b in buckets}))
        module.width_tables.setdefault(arch, {})[width] = base
        below = "; smaller M take the main table" if min(b.m for b in buckets) > 1 else ""
        module.width_provenance.setdefault(arch, {})[width] = (
            text + f" at M = {batches}{below}{kept}"
        )
    return module


def _drop_empty(tables: dict) -> None:
    # nested dicts left empty (an architecture or width without eager rows) are removed
    for key in list(tables):
        if isinstance(tables[key], dict):
            _drop_empty(tables[key])
            if not tables[key]:
                del tables[key]


def summary_markdown(buckets: list[BucketResult], env: dict, arch: str,
                     hidden: int = HIDDEN) -> str:  # fmt: skip
    out = [f"# Pooler tile sweep: {env['device']} ({arch}), {env['date']}", "",
           f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; H = {hidden}; "
           "GPU time per call "
           "(us, median of CUDA-graph replays, weight cold in L2 where `cold`). "
           f"`backend=\"auto\"` runs eager where it measured {EAGER_MARGIN:.2f}x faster than "
           "the best tile, or no tile was correct. The table's current pick stays unless a tile "
           f"measured {TABLE_MARGIN:.2f}x faster.", "",
           "| dtype | M | eager | current table | picked | picked config | picked / eager | "
           "\"auto\" runs | cold |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for b in buckets:
        by_source = {x.source: x for x in b.measurements}
        eager, current = by_source.get("eager"), by_source.get("current table")
        best = next((x for x in b.measurements if x.label == b.winner and x.config), None)
        ratio = (f"{best.median_us / eager.median_us:.2f}"
                 if best and eager and eager.median_us else "-")  # fmt: skip
        out.append(f"| {b.dtype} | {b.m} | {_us(eager)} | {_us(current)} | {_us(best)} | "
                   f"{best.label if best else 'none correct'} | {ratio} | "
                   f"{'eager' if eager_faster(b) else 'the tile'} | "
                   f"{'yes' if b.weight_l2_cold else 'no'} |")  # fmt: skip
    out += ["", "## Every candidate", "", "| dtype | M | config | source | us | rel err | status |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for b in buckets:
        for x in sorted(b.measurements, key=lambda x: x.median_us or math.inf):
            err = f"{x.rel_err:.1e}" if x.rel_err is not None else "-"
            out.append(f"| {b.dtype} | {b.m} | {x.label} | {x.source} | {_us(x)} | {err} | "
                       f"{x.status} |")  # fmt: skip
    return "\n".join(out) + "\n"


def _us(x: Optional[Measurement]) -> str:
    return f"{x.median_us:.2f}" if x is not None and x.median_us is not None else "-"


def table_destination(table_arg: Optional[str], dry_run: bool) -> Optional[str]:
    """Where the table goes besides --out: --table-out if given, else the runtime's own module,
    but only from a sweep on a GPU."""
    if table_arg is not None:
        return table_arg
    if dry_run:
        return None
    from bertpool_fast.kernels import pooler_tables

    return pooler_tables.__file__


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tune", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=None, help="directory for tune.json, tune.md and a copy "
                        "of the table (default: bench/results/tune-<gpu>-<date>)")  # fmt: skip
    parser.add_argument("--dtypes", default="fp16,bf16", help="comma-separated (fp32 optional)")
    parser.add_argument("--hidden", type=int, default=HIDDEN,
                        help=f"H (= N = K) to sweep at (default {HIDDEN}, the main table's). At "
                        "another H the winners become that width's own table, for square [H, H] "
                        "weights; the main table is kept")  # fmt: skip
    parser.add_argument("--batches", default=None, help="comma-separated M values (default: "
                        + ",".join(map(str, BATCHES)) + ")")  # fmt: skip
    parser.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="past this, remaining M measure only the current table's pick",
    )
    parser.add_argument("--compile-jobs", type=int, default=None,
                        help="worker processes that compile candidates first (GPU default: one "
                        f"per usable CPU, at most {MAX_COMPILE_JOBS}; 0: compile inline)")  # fmt: skip
    parser.add_argument(
        "--table-out",
        "--table",
        dest="table",
        default=None,
        help="write the table module here (default: "
        "the imported kernels/pooler_tables.py; --dry-run: under --out only)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU code-path check: interpreter, 3 candidates, tiny sizes",
    )
    args = parser.parse_args(argv)

    if not harness.gpu_or_dry_run("python -m bench.tune", args.dry_run):
        return 2
    from bertpool_fast.kernels.pooler import POOLER_TABLES, arch_has_pdl, arch_key, pick_config

    budget = harness.Budget(args.budget_s)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in TOLERANCE]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; known: {sorted(TOLERANCE)}")
    batches = harness.batches_arg(args.batches, BATCHES, DRY_RUN["batches"], args.dry_run)
    if args.hidden < 1:
        parser.error(f"--hidden: expected a positive width, got {args.hidden}")
    hidden, seq = (DRY_RUN["hidden"], DRY_RUN["seq"]) if args.dry_run else (args.hidden, SEQ)
    # whose table the winners become: the main table's (H = 768) or a width's own; a dry run
    # sweeps a small H either way and keys the table by the H asked for
    width = None if args.hidden == HIDDEN else args.hidden
    # this GPU's own table, whether the file has one yet or not; the interpreter's is "default"
    arch = arch_key(*torch.cuda.get_device_capability()) if harness.HAS_CUDA else "default"
    if width is not None and arch not in POOLER_TABLES:
        # the runtime reads a width's table only on an architecture with a main table of its own
        parser.error(f"--hidden {width}: this GPU ({arch}) has no table yet; tune H = {HIDDEN} "
                     "first (python -m bench.tune)")  # fmt: skip
    env = harness.environment()
    out_dir = args.out or os.path.join("bench", "results", "tune-" + harness.results_dir_name(env))
    os.makedirs(out_dir, exist_ok=True)

    workers = args.compile_jobs if args.compile_jobs is not None else default_compile_jobs(args)
    left_out = {}
    if workers:
        largest_m: dict = {}  # (dtype name, config fields) -> the largest M it is swept at
        for d in dtypes:
            dtype = harness.DTYPES_BY_NAME[d]
            for m in batches:
                for cfg in [
                    pick_config(m, dtype, False, arch, hidden),
                    *candidates_at(m, dtype, args.dry_run, arch),
                ]:
                    # and its PDL form, which the sweep times if this config is the fastest
                    pdl_too = (cfg._replace(pdl=True),) if arch_has_pdl(arch) else ()
                    for c in (cfg, *pdl_too):
                        largest_m[(d, tuple(c))] = max(m, largest_m.get((d, tuple(c)), 0))
        jobs = sorted((d, cfg, hidden, m) for (d, cfg), m in largest_m.items())
        deadline_s = min(PRECOMPILE_DEADLINE_S, args.budget_s / 2)
        left_out = {job[:2]: why for job, why in precompile(jobs, workers, deadline_s).items()}

    start = time.monotonic()
    buckets = sweep(dtypes, batches, hidden, seq, args.dry_run, budget, arch, left_out)
    module = new_tables(buckets, arch, env, hidden, seq, width)
    source = render_module(module, TABLE_HEADER)
    compile(source, "pooler_tables.py", "exec")  # a table that does not parse is never written
    table_path = table_destination(args.table, args.dry_run)
    for path in filter(None, (table_path, os.path.join(out_dir, "pooler_tables.py"))):
        with open(path, "w") as f:
            f.write(source)
    written = module.tables[arch] if width is None else module.width_tables[arch][width]
    with open(os.path.join(out_dir, "tune.json"), "w") as f:
        json.dump({"env": env, "arch": arch, "dry_run": args.dry_run, "hidden": hidden, "seq": seq,
                   "sweep_s": time.monotonic() - start,
                   "buckets": [asdict(b) for b in buckets],
                   "width": width,
                   "table": {d: [(m, cfg and cfg._asdict()) for m, cfg in rows]
                             for d, rows in written.items()}}, f, indent=1)  # fmt: skip
    summary = summary_markdown(buckets, env, arch, hidden)
    with open(os.path.join(out_dir, "tune.md"), "w") as f:
        f.write(summary)
    which = arch if width is None else f"{arch} at H = {width}"
    print(f"\nswept in {time.monotonic() - start:.1f} s; table for {which} written to "
          f"{table_path or '(not written: --dry-run)'}; results in {out_dir}/\n")  # fmt: skip
    print(summary.split("\n## ")[0])
    if args.dry_run:
        print("dry run: timings are interpreter wall times and mean nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
