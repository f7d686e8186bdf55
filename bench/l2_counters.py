"""``python -m bench.l2_counters``: the large-M tiles' traffic from L2 into the SMs, read from
Nsight Compute's counters.

NOTES.md ("What bounds the large-M tiles") inferred from timings that the 64x128 TMA tile at
M = 4096-8192 reads its operands from L2 at a ceiling of about 9 TB/s, and that the 128x128 tile
runs below it; the seventh run's counters refuted it (28-30% of the path's peak). What they read: the bytes read from L2 into the SMs
(``l1tex__m_xbar2l1tex_read_bytes``, TMA copies included) against the model's (BLOCK_M + BLOCK_N)
x K x 2 per output tile, and as a share of that path's peak. Two steps (``bench/run_gpu.sh`` runs
both; a GPU whose counters cannot be read leaves a message and no table):

  ncu --profile-from-start off ... python -m bench.l2_counters --launch
      each case launched once to compile and warm it, then once more between
      cudaProfilerStart and cudaProfilerStop: only those launches are profiled, in CASES order;
  python -m bench.l2_counters --summarize ncu.csv --out DIR
      l2_counters.md from the report's raw page (``ncu --import ... --csv --page raw
      --print-units base``).

``--launch --dry-run`` runs the launch step's code on a CPU through Triton's interpreter (tiny
sizes, no profiler).
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
from typing import Optional

import torch

from bench import harness
from bench.attribute import check
from bench.tune import HIDDEN, SEQ

TMA_64x128 = dict(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=3, tma=True)
TMA_128x128 = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, tma=True)
# (name, M, TileConfig fields or None for cuBLAS's mm): the table's large-M tiles at the two
# ends of its last bucket, each with the other's tile, and cuBLAS's GEMM beside them
CASES = (
    ("fused 64x128x64 w4 s3 tma", 4096, TMA_64x128),
    ("fused 128x128x64 w8 s3 tma", 4096, TMA_128x128),
    ("fused 64x128x64 w4 s3 tma", 8192, TMA_64x128),
    ("fused 128x128x64 w8 s3 tma", 8192, TMA_128x128),
    ("cuBLAS mm", 4096, None),
    ("cuBLAS mm", 8192, None),
)
DRY_RUN = {"m": 40, "hidden": 128, "seq": 3}

# What ncu collects. The first four are what the table needs; the rest place it (the L2 path's
# peak in bytes per second, L2's and the SMs' own throughput, DRAM's). A profiler that refuses a
# name fails the whole collection, so run_gpu.sh retries with the first four alone.
BASIC_METRICS = (
    "gpu__time_duration.sum",
    "l1tex__m_xbar2l1tex_read_bytes.sum",
    "l1tex__m_xbar2l1tex_read_bytes.sum.pct_of_peak_sustained_elapsed",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed",
)
METRICS = BASIC_METRICS + (
    "l1tex__m_xbar2l1tex_read_bytes.sum.peak_sustained",
    "lts__cycles_elapsed.avg.per_second",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
)


def model_bytes(m: int, fields: Optional[dict], hidden: int = HIDDEN) -> Optional[int]:
    """What the tile model says a grid reads from L2: X and W rows once per output tile."""
    if fields is None:
        return None
    tiles = -(-m // fields["block_m"]) * -(-hidden // fields["block_n"])
    return tiles * (fields["block_m"] + fields["block_n"]) * hidden * 2


def launch(dry_run: bool) -> int:
    """Each case launched twice, the second time inside the profiled range."""
    from bertpool_fast.kernels.pooler import pooler_fwd
    from bertpool_fast.kernels.tiles import TileConfig

    device = "cuda" if harness.HAS_CUDA else "cpu"
    hidden, seq = (DRY_RUN["hidden"], DRY_RUN["seq"]) if dry_run else (HIDDEN, SEQ)
    dtype = torch.float16
    calls, ran = [], []
    for name, m, fields in CASES:
        m = DRY_RUN["m"] if dry_run else m
        # first-token rows S * H apart, as in BERT (and as the tune and the benchmark read them)
        rows = torch.randn(m, seq, hidden, device=device).to(dtype)[:, 0]
        w = (torch.randn(hidden, hidden, device=device) * hidden**-0.5).to(dtype)
        b = (torch.randn(hidden, device=device) * 0.1).to(dtype)
        out = torch.empty((m, hidden), dtype=dtype, device=device)
        if fields is None:
            expected = rows.double() @ w.double().t()
            run = functools.partial(torch.mm, rows, w.t())
        else:
            expected = torch.tanh(rows.double() @ w.double().t() + b.double())
            run = functools.partial(pooler_fwd, rows, w, b, "tanh",
                                    config=TileConfig(**fields))  # fmt: skip
        # compiles, and checks as the attribution does (two calls into NaN-filled outputs): a
        # wrong kernel is not worth profiling
        _, status = check(lambda _i, o, run=run: run(out=o), lambda _i, e=expected: e, out, "fp16")
        if status != "ok":
            print(f"error: {name} at M = {m}: {status}", file=sys.stderr)
            return 1
        call = functools.partial(run, out=out)
        calls.append(call)
        ran.append(f"{name} M={m}")
    harness.sync()
    if not dry_run:
        torch.cuda.profiler.start()
    for call in calls:
        call()
    harness.sync()
    if not dry_run:
        torch.cuda.profiler.stop()
    print(f"launched {len(calls)} cases: " + "; ".join(ran))
    return 0


def read_raw_csv(path: str) -> list[dict]:
    """The kernel rows of ``ncu --csv --page raw --print-units base``: a header row naming the
    columns ("Kernel Name" among them), an optional units row, then one row per profiled launch.
    Lines before the header (the profiler's own messages) are skipped."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if '"Kernel Name"' in line), None)
    if start is None:
        return []
    rows = list(csv.reader(lines[start:]))
    header, body = rows[0], rows[1:]
    if body and not body[0][header.index("Kernel Name")]:
        body = body[1:]  # the units row
    return [dict(zip(header, row)) for row in body if len(row) == len(header)]


def _number(row: dict, name: str) -> Optional[float]:
    text = row.get(name, "").replace(",", "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def summarize(rows: list[dict], hidden: int = HIDDEN) -> str:
    """l2_counters.md's text: one line per case, in CASES order."""
    out = ["# L2-to-SM traffic of the large-M tiles (Nsight Compute counters, fp16, H = "
           f"{hidden})", "",
           "Bytes read from L2 into the SMs (`l1tex__m_xbar2l1tex_read_bytes`, TMA copies "
           "included) over the kernel's time, against the tile model's (BLOCK_M + BLOCK_N) x K "
           "x 2 bytes per output tile; `% of peak` is the counter's own share of that path's "
           "peak. ncu flushes the caches before each profiled launch.", "",
           "| case | M | kernel | us | L2 to SM, MB | model, MB | TB/s | % of peak | peak TB/s "
           "| L2 % | SM % | DRAM % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    if len(rows) != len(CASES):
        out += ["", f"The report holds {len(rows)} profiled launches, not the {len(CASES)} cases: "
                "the lines below pair them in order and may be misplaced."]  # fmt: skip

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    for (name, m, fields), row in zip(CASES, rows):
        ns = _number(row, "gpu__time_duration.sum")
        read = _number(row, "l1tex__m_xbar2l1tex_read_bytes.sum")
        per_cycle = _number(row, "l1tex__m_xbar2l1tex_read_bytes.sum.peak_sustained")
        hz = _number(row, "lts__cycles_elapsed.avg.per_second")
        rate = read / ns * 1e-3 if read is not None and ns else None  # bytes/ns = GB/s -> TB/s
        peak = per_cycle * hz * 1e-12 if per_cycle is not None and hz is not None else None
        modelled = model_bytes(m, fields, hidden)
        kernel = row.get("Kernel Name", "?")[:40]
        out.append(
            f"| {name} | {m} | {kernel} | {cell(ns and ns * 1e-3, '.2f')} | "
            f"{cell(read and read * 1e-6, '.1f')} | {cell(modelled and modelled * 1e-6, '.1f')} | "
            f"{cell(rate, '.2f')} | "
            f"{cell(_number(row, BASIC_METRICS[2]), '.1f')} | {cell(peak, '.2f')} | "
            f"{cell(_number(row, BASIC_METRICS[3]), '.1f')} | "
            f"{cell(_number(row, METRICS[6]), '.1f')} | {cell(_number(row, METRICS[7]), '.1f')} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.l2_counters",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    step = parser.add_mutually_exclusive_group(required=True)
    step.add_argument("--launch", action="store_true", help="the cases, for ncu to profile")
    step.add_argument("--summarize", metavar="CSV", help="ncu's raw page as CSV")
    step.add_argument("--metrics", choices=("all", "basic"),
                      help="print the metric list for ncu's --metrics")  # fmt: skip
    parser.add_argument("--out", default=".", help="directory for l2_counters.md (--summarize)")
    parser.add_argument("--dry-run", action="store_true",
                        help="--launch on a CPU through the interpreter, tiny sizes")  # fmt: skip
    args = parser.parse_args(argv)
    if args.metrics:
        print(",".join(METRICS if args.metrics == "all" else BASIC_METRICS))
        return 0
    if args.summarize:
        rows = read_raw_csv(args.summarize)
        if not rows:
            print(f"error: no profiled kernel rows in {args.summarize}", file=sys.stderr)
            return 1
        text = summarize(rows)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "l2_counters.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    if not harness.gpu_or_dry_run("python -m bench.l2_counters --launch", args.dry_run):
        return 2
    with torch.inference_mode():
        return launch(args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
