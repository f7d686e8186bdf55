"""``python -m bench.attribute``: where the fused pooler's GPU time goes at large M, next to cuBLAS.

From M = 2048 up the fused kernel has been slower than cuBLAS ``F.linear`` followed by a separate
tanh. Each line below removes one suspect, so one run splits the gap between them:

  fused, shipped           the table's tile: bias, tanh, first-token rows S * H apart (as in BERT)
  fused, exp-form tanh     the same tile with tanh_exp_to_half, the form tanh_to_half had before
                           its rational one (two MUFU instructions per element where it has one)
  fused, fp32-accurate tanh the same tile with tanh_f32: what tanh_to_half saves on fp16/bf16
  fused, tanh.approx       the SFU's one-instruction tanh (~2^-11 relative error, not shipped):
                           what the epilogue could still gain, and its error in the rel err column
  fused, identity          the same tile without tanh: what the tanh epilogue costs
  fused, identity, no bias the same tile as a plain GEMM: what remains is the main loop
  fused, contiguous rows   the shipped tile on rows H apart: what the strided rows cost
  cuBLAS linear + tanh     what ``BertPooler`` runs (the reference line: ratios are to it)
  cuBLAS linear            ``F.linear`` alone (bias in the GEMM's epilogue)
  cuBLAS mm                the same GEMM without bias
  cuBLAS linear, contig.   whether cuBLAS pays for the stride
  tanh alone               the separate tanh kernel: [M, H] read and written once

plus the tile's TMA twin, when the tile tables know TMA tiles. Every line is timed as the tuner
times (CUDA-graph replays over rotated input sets, the weight cold in L2) after a check against a
float64 reference of the same computation into NaN-filled outputs; the floor is max(bytes / copy
bandwidth, flops / GEMM rate), both measured in the same run. ``--dry-run`` runs the code path on
a CPU through Triton's interpreter (tiny sizes, wall-clock times that mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from bench import harness
from bench.tune import HIDDEN, SEQ, TOLERANCE

BATCHES = (2048, 8192)
DRY_RUN = {"batches": (33,), "hidden": 128, "seq": 3}


@dataclass
class Line:
    dtype: str
    m: int
    name: str
    config: str
    rel_err: Optional[float] = None
    status: str = "ok"
    median_us: Optional[float] = None
    min_us: Optional[float] = None
    floor_us: Optional[float] = None
    to_eager: Optional[float] = None


class Sets:
    """Rotated input sets at one M: strided first-token rows (as ``tune.Inputs``), their
    contiguous copies, and a [M, H] pre-activation for the tanh-alone line."""

    def __init__(self, m: int, hidden: int, seq: int, dtype: torch.dtype, device: str, n: int):
        buf = torch.randn(m, seq, hidden, device=device).to(dtype)
        self.rows, self.contig, self.w, self.b, self.z = [], [], [], [], []
        for i in range(n):
            x = buf[:, i % seq]
            self.rows.append(x)
            self.contig.append(x.contiguous())
            self.w.append((torch.randn(hidden, hidden, device=device) * hidden**-0.5).to(dtype))
            self.b.append((torch.randn(hidden, device=device) * 0.1).to(dtype))
            self.z.append(torch.randn(m, hidden, device=device).to(dtype))


def lines_for(m: int, dtype: torch.dtype, arch: str, sets: Sets) -> list[tuple]:
    """(name, config label, call(i, out), reference(i) in float64, bytes, flops) per line."""
    import torch.nn.functional as F

    from bertpool_fast.kernels.pooler import pick_config, pooler_fwd
    from bertpool_fast.kernels.tiles import TileConfig, config_label

    h = sets.w[0].shape[0]
    cfg = pick_config(m, dtype, False, arch, h)  # the runtime's pick for this square weight
    e = dtype.itemsize
    gemm_flops = 2 * m * h * h
    gemm_bytes = e * (h * h + 2 * m * h)  # weight, rows, output
    bias_bytes = e * h

    def ref(i, bias=True, act=True, rows=None):
        x = (sets.rows if rows is None else rows)[i].double()
        z = x @ sets.w[i].double().t()
        if bias:
            z = z + sets.b[i].double()
        return torch.tanh(z) if act else z

    def fused(config, act, bias, rows):
        def call(i, out):
            b = sets.b[i] if bias else None
            return pooler_fwd(rows[i], sets.w[i], b, act, out=out, config=config)

        return call

    label = config_label(cfg)
    out = [
        ("fused, shipped", label, fused(cfg, "tanh", True, sets.rows), lambda i: ref(i),
         gemm_bytes + bias_bytes, gemm_flops),
        ("fused, exp-form tanh", label, fused(cfg, "tanh_exp_to_half", True, sets.rows),
         lambda i: ref(i), gemm_bytes + bias_bytes, gemm_flops),
        ("fused, fp32-accurate tanh", label, fused(cfg, "tanh_f32", True, sets.rows),
         lambda i: ref(i), gemm_bytes + bias_bytes, gemm_flops),
        ("fused, tanh.approx", label, fused(cfg, "tanh_mufu", True, sets.rows),
         lambda i: ref(i), gemm_bytes + bias_bytes, gemm_flops),
        ("fused, identity", label, fused(cfg, "identity", True, sets.rows),
         lambda i: ref(i, act=False), gemm_bytes + bias_bytes, gemm_flops),
        ("fused, identity, no bias", label, fused(cfg, "identity", False, sets.rows),
         lambda i: ref(i, bias=False, act=False), gemm_bytes, gemm_flops),
        ("fused, contiguous rows", label, fused(cfg, "tanh", True, sets.contig),
         lambda i: ref(i, rows=sets.contig), gemm_bytes + bias_bytes, gemm_flops),
    ]  # fmt: skip
    if "tma" in TileConfig._fields and not cfg.tma and cfg.split_k == 1 and not cfg.swap_ab:
        twin = cfg._replace(tma=True, persistent=False)
        out.append(("fused, TMA twin", config_label(twin), fused(twin, "tanh", True, sets.rows),
                    lambda i: ref(i), gemm_bytes + bias_bytes, gemm_flops))  # fmt: skip

    def linear_tanh(i, o):
        return torch.tanh(F.linear(sets.rows[i], sets.w[i], sets.b[i]), out=o)

    def linear(i, o, rows=sets.rows):
        z = F.linear(rows[i], sets.w[i], sets.b[i])
        return z if o is None else o.copy_(z)

    def mm(i, o):
        return torch.mm(sets.rows[i], sets.w[i].t(), out=o)

    def tanh(i, o):
        return torch.tanh(sets.z[i], out=o)

    out += [
        ("cuBLAS linear + tanh", "eager", linear_tanh, lambda i: ref(i),
         gemm_bytes + bias_bytes + 2 * e * m * h, gemm_flops),
        ("cuBLAS linear", "eager", linear, lambda i: ref(i, act=False),
         gemm_bytes + bias_bytes, gemm_flops),
        ("cuBLAS mm", "eager", mm, lambda i: ref(i, bias=False, act=False), gemm_bytes,
         gemm_flops),
        ("cuBLAS linear, contiguous rows", "eager",
         lambda i, o: linear(i, o, rows=sets.contig),
         lambda i: ref(i, act=False, rows=sets.contig), gemm_bytes + bias_bytes, gemm_flops),
        ("tanh alone", "eager", tanh, lambda i: torch.tanh(sets.z[i].double()), 2 * e * m * h, 0),
    ]  # fmt: skip
    return out


def check(call: Callable, reference: Callable, like: torch.Tensor, dtype_name: str):
    """(rel_err, status): two calls into NaN-filled outputs against the float64 reference."""
    expected = reference(0)
    worst = 0.0
    for _ in range(2):
        out = torch.full(expected.shape, float("nan"), dtype=like.dtype, device=like.device)
        call(0, out)
        harness.sync()
        if torch.isnan(out).any():
            return math.inf, "WRONG: NaN left in the output (unwritten elements)"
        worst = max(worst, harness.rel_err(out, expected))
    if worst > TOLERANCE[dtype_name]:
        return worst, f"WRONG: rel err {worst:.2e} > {TOLERANCE[dtype_name]:.1e}"
    return worst, "ok"


def measure(dtypes: list[str], batches, hidden: int, seq: int, dry_run: bool, arch: str,
            cal: harness.Calibration) -> list[Line]:  # fmt: skip
    device = "cuda" if harness.HAS_CUDA else "cpu"
    results: list[Line] = []
    for dtype_name in dtypes:
        dtype = harness.DTYPES_BY_NAME[dtype_name]
        for m in batches:
            nbytes, _ = harness.pooler_traffic(m, hidden, hidden, dtype.itemsize)
            # per set: the contiguous rows, the pre-activation and the weight (the [M, S, H]
            # buffer is shared: set i reads token i % S)
            per_set = (2 * m * hidden + hidden * hidden) * dtype.itemsize
            n = 1 if dry_run else harness.rotation_count(nbytes, per_set)
            sets = Sets(m, hidden, seq, dtype, device, n)
            rows = []
            with torch.inference_mode():
                for name, label, call, reference, line_bytes, flops in lines_for(
                    m, dtype, arch, sets
                ):
                    line = Line(dtype_name, m, name, label)
                    rows.append(line)
                    try:
                        line.rel_err, line.status = check(call, reference, sets.rows[0],
                                                          dtype_name)  # fmt: skip
                        if line.status == "ok":
                            timing = _time(call, n, dry_run)
                            line.median_us, line.min_us = timing.median_us, timing.min_us
                            floor = max(line_bytes / cal.copy_bandwidth,
                                        flops / cal.gemm_rate[dtype_name])  # fmt: skip
                            line.floor_us = floor * 1e6
                    except Exception as exc:  # noqa: BLE001 - one failing line is reported
                        line.status = f"FAILED: {type(exc).__name__}: {exc}"[:300]
                    if line.status != "ok":
                        print(f"!! {dtype_name} M={m} {name}: {line.status}", file=sys.stderr)
            eager = next(r for r in rows if r.name == "cuBLAS linear + tanh")
            for r in rows:
                if r.median_us and eager.median_us:
                    r.to_eager = r.median_us / eager.median_us
            results += rows
    return results


def _time(call, n: int, dry_run: bool) -> harness.Timing:
    if dry_run or not harness.HAS_CUDA:
        return harness.wall_time(lambda i: call(i, None), n, iters=2, rounds=2)
    return harness.gpu_time(lambda i: call(i, None), n, reps=15, min_calls=32)


def markdown(lines: list[Line], env: dict, arch: str, cal: harness.Calibration) -> str:
    out = [f"# Large-M attribution: {env['device']} ({arch}), {env['date']}", "",
           f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, commit "
           f"{env.get('commit', '?')}. GPU time per call (us, median of CUDA-graph replays, weight "
           f"cold in L2); floor = max(bytes / {cal.copy_bandwidth / 1e9:.0f} GB/s, flops / GEMM "
           "rate): " + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in cal.gemm_rate.items())
           + ".", "",
           "| dtype | M | line | config | us | / linear+tanh | / floor | rel err | status |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in lines:
        us = f"{x.median_us:.2f}" if x.median_us is not None else "-"
        ratio = f"{x.to_eager:.2f}" if x.to_eager is not None else "-"
        over = f"{x.median_us / x.floor_us:.2f}" if x.median_us and x.floor_us else "-"
        err = f"{x.rel_err:.1e}" if x.rel_err is not None and math.isfinite(x.rel_err) else "-"
        out.append(f"| {x.dtype} | {x.m} | {x.name} | {x.config} | {us} | {ratio} | {over} | "
                   f"{err} | {x.status} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.attribute", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=None, help="directory for attribute.json / .md "
                        "(default: bench/results/attribute-<gpu>-<date>)")  # fmt: skip
    parser.add_argument("--dtypes", default="fp16", help="comma-separated: fp16, bf16")
    parser.add_argument("--batches", default=None, help="comma-separated M values (default: "
                        + ",".join(map(str, BATCHES)) + ")")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU code-path check through the interpreter, tiny sizes")  # fmt: skip
    args = parser.parse_args(argv)
    if not harness.gpu_or_dry_run("python -m bench.attribute", args.dry_run):
        return 2
    from bertpool_fast.kernels.pooler import arch_key

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in ("fp16", "bf16")]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; known: fp16, bf16")
    batches = harness.batches_arg(args.batches, BATCHES, DRY_RUN["batches"], args.dry_run)
    hidden, seq = (DRY_RUN["hidden"], DRY_RUN["seq"]) if args.dry_run else (HIDDEN, SEQ)
    env = harness.environment()
    arch = arch_key(*torch.cuda.get_device_capability()) if harness.HAS_CUDA else "default"
    out_dir = args.out or os.path.join(
        "bench", "results", "attribute-" + harness.results_dir_name(env)
    )
    os.makedirs(out_dir, exist_ok=True)
    cal = harness.calibrate([harness.DTYPES_BY_NAME[d] for d in dtypes], smoke=args.dry_run)
    lines = measure(dtypes, batches, hidden, seq, args.dry_run, arch, cal)
    with open(os.path.join(out_dir, "attribute.json"), "w") as f:
        json.dump({"env": env, "arch": arch, "dry_run": args.dry_run, "hidden": hidden,
                   "seq": seq, "calibration": asdict(cal),
                   "lines": [asdict(x) for x in lines]}, f, indent=1)  # fmt: skip
    text = markdown(lines, env, arch, cal)
    with open(os.path.join(out_dir, "attribute.md"), "w") as f:
        f.write(text)
    print(text)
    if args.dry_run:
        print("dry run: timings are interpreter wall times and mean nothing")
    return 0 if all(x.status == "ok" for x in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
