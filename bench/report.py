"""Turn a benchmark run's pytest-benchmark JSON into a markdown report and PNG plots.

    python -m bench.report bench/results/<gpu>-<date>/benchmark.json

writes ``report.md``, ``speedup.png`` and ``roofline.png`` beside the JSON. Every output is stamped
with the device, driver and library versions the JSON's machine_info carries. Plots need matplotlib;
without it the report says so and is written anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

CPU_NOTICE = (
    "No CUDA GPU: only the torch-side contestants (eager BertPooler, addmm+tanh, the op's torch "
    "path) were timed, on the CPU. Kernel figures need a GPU: the Triton kernel ran once through "
    "Triton's CPU interpreter to check its output, and torch.compile was not run. "
    "Run `bash bench/run_gpu.sh` on a GPU machine for the real report."
)
# The targets, at H = 768 in fp16 and bf16 (reported, never asserted)
TARGET_H = 768
TARGET_DTYPES = ("fp16", "bf16")
EAGER_RATIO = 0.7  # GPU time at most 0.7x eager BertPooler
AUTOTUNE_RATIO = 1.0  # at most 1.0x torch.compile max-autotune
GEMM_FRACTION = 0.6  # at least 60 % of the measured GEMM rate ...
GEMM_FRACTION_MIN_B = 4096  # ... at B >= 4096
INVARIANCE_MAX_COST = 0.05  # batch_invariant becomes the default if it costs under 5 % everywhere

ORDER = ("triton", "triton_bi", "eager", "compile", "compile_max_autotune", "addmm_tanh",
         "torch_path")  # fmt: skip


def load(path: str) -> tuple[list[dict], dict, Optional[dict]]:
    """Records, environment stamp and calibration from pytest-benchmark's JSON, or from the
    ``BENCH_RECORDS`` JSON-lines file (written case by case) with environment.json and
    calibration.json beside it."""
    if path.endswith(".jsonl"):
        folder = os.path.dirname(os.path.abspath(path))
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        side = {}
        for name in ("environment", "calibration"):
            side_path = os.path.join(folder, f"{name}.json")
            if os.path.exists(side_path):
                with open(side_path) as f:
                    side[name] = json.load(f)
        return records, side.get("environment", {}), side.get("calibration")
    with open(path) as f:
        data = json.load(f)
    records = [b["extra_info"] for b in data.get("benchmarks", []) if b.get("extra_info")]
    machine = data.get("machine_info", {})
    return records, machine.get("bertpool_fast", {}), machine.get("bertpool_fast_calibration")


def stamp(env: dict) -> str:
    keys = ("device", "driver", "cuda", "torch", "triton", "transformers", "commit", "date")
    return ", ".join(f"{k} {env.get(k, '?')}" for k in keys)


def _index(records: list[dict]) -> dict:
    return {(r["dtype"], r["hidden"], r["batch"], r["contestant"]): r for r in records}


def _key(r: dict, contestant: str) -> tuple:
    return (r["dtype"], r["hidden"], r["batch"], contestant)


def _rank(contestant: str) -> int:
    return ORDER.index(contestant) if contestant in ORDER else len(ORDER)


def _records_of(records: list[dict], bench: str) -> list[dict]:
    return [r for r in records if r.get("bench") == bench]


def _time(r: Optional[dict]) -> Optional[float]:
    """The figure a comparison uses: GPU time where there is one, wall time on a CPU."""
    if r is None:
        return None
    return r.get("gpu_us", r.get("wall_us"))


def _fmt(x: Optional[float], spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def summary_table(records: list[dict]) -> str:
    """Compact text table for the terminal, every bench's records: time, speedup over eager
    (the record of contestant "eager" with the same bench, dtype and case fields) and time/floor.
    A record needs "contestant", "wall_us", "time_over_floor"; "bench", "dtype", "hidden", "batch",
    "seq" and "gpu_us" are used where present."""
    case_keys = ("dtype", "hidden", "batch", "seq", "labels")

    def case_of(r):
        return tuple((k, r[k]) for k in case_keys if k in r)

    idx = {(r.get("bench", "?"), case_of(r), r["contestant"]): r for r in records}
    lines = [f"{'case':40} {'contestant':22} {'gpu us':>9} {'wall us':>9} {'x eager':>8} "
             f"{'t/floor':>8}"]  # fmt: skip
    for r in sorted(records, key=lambda r: (str(r.get("bench")), str(case_of(r)),
                                            _rank(r["contestant"]))):  # fmt: skip
        eager = _time(
            next(
                (
                    idx[k]
                    for k in ((r.get("bench", "?"), case_of(r), b) for b in BASELINES)
                    if k in idx
                ),
                None,
            )
        )
        speedup = eager / _time(r) if eager else None
        case = " ".join([r.get("bench", "?")] + [f"{k}={v}" for k, v in case_of(r)])
        lines.append(f"{case:40} {r['contestant']:22} {_fmt(r.get('gpu_us'), '9.2f')} "
                     f"{r['wall_us']:9.2f} {_fmt(speedup, '8.2f')} {r['time_over_floor']:8.2f}")  # fmt: skip
    return "\n".join(lines)


def _cases(records):
    return sorted({(r["dtype"], r["hidden"], r["batch"]) for r in records})


def _contestants(records):
    return sorted({r["contestant"] for r in records}, key=lambda c: (_rank(c), c))


def markdown(records: list[dict], env: dict, cal: Optional[dict],
             interleaved: Optional[list[dict]] = None) -> str:  # fmt: skip
    idx = _index(records)
    contestants = _contestants(records)
    gpu = any("gpu_us" in r for r in records)
    out = [
        f"# bertpool_fast pooler benchmark: {env.get('device', '?')}",
        "",
        f"Stamp: {stamp(env)}.",
        "",
    ]
    if not gpu:
        out += [f"**{CPU_NOTICE}**", ""]
    if cal:
        rates = ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in cal["gemm_rate"].items())
        out += [f"Calibration (measured this run): copy bandwidth {cal['copy_bandwidth'] / 1e9:.0f} "
                f"GB/s (read + write); GEMM rate at {cal['gemm_shape']}^3: {rates}.", ""]  # fmt: skip
    out += [
        "Times in microseconds per call. GPU time: CUDA-graph replays (CUDA events where a "
        "contestant cannot be captured), median; input sets rotated so the weight is evicted from "
        "L2 between uses where `cold` says so. Wall time: a loop of eager calls, synchronized at "
        "the end, median of 15 rounds; it includes Python, dispatch and launch overhead. "
        "floor = max(bytes / bandwidth, flops / GEMM rate), bytes = weight + bias + B*H (gathered "
        "rows) + B*H (output), flops = 2*B*H*H.",
        "",
        "## Per case",
        "",
        "| dtype | H | B | contestant | GPU us | wall us | x eager (GPU) | x eager (wall) | "
        "floor us | time/floor | cold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, hidden, batch in _cases(records):
        eager = idx.get((dtype, hidden, batch, "eager"))
        for c in contestants:
            r = idx.get((dtype, hidden, batch, c))
            if r is None:
                continue
            x_gpu = (
                eager["gpu_us"] / r["gpu_us"]
                if eager and "gpu_us" in r and "gpu_us" in eager
                else None
            )
            x_wall = eager["wall_us"] / r["wall_us"] if eager else None
            out.append(
                f"| {dtype} | {hidden} | {batch} | {c} | {_fmt(r.get('gpu_us'), '.2f')} | "
                f"{r['wall_us']:.2f} | {_fmt(x_gpu, '.2f')} | {_fmt(x_wall, '.2f')} | "
                f"{r['floor_us']:.2f} | {r['time_over_floor']:.2f} | "
                f"{'yes' if r.get('weight_l2_cold') else 'no'} |"
            )
    out += ["", "## Targets (H = 768, fp16 and bf16)", ""]
    out += (
        targets(records, interleaved)
        if gpu
        else ["Not evaluated: the targets are GPU figures.", ""]
    )
    out += ["## batch_invariant=True: cost against the default tiles", ""]
    out += invariance_cost(records) if gpu else ["Not evaluated: needs GPU times.", ""]
    missing = _missing(records)
    if missing:
        out += ["## Not run", "", "Cases absent from this run (skipped for the time budget, or "
                "failed; the pytest log says which):", "", ", ".join(missing), ""]  # fmt: skip
    return "\n".join(out) + "\n"


def _verdict(ok: bool, ratio: float, limit: float, higher_is_better: bool = False) -> str:
    if ok:
        return "met"
    miss = (limit / ratio - 1) if higher_is_better else (ratio / limit - 1)
    return f"MISSED by {miss * 100:.1f}%" if miss < 0.01 else f"MISSED by {miss * 100:.0f}%"


def _ratio_cell(t: dict, other: Optional[dict], limit: float) -> str:
    if other is None:
        return "not run"
    ratio = t["gpu_us"] / other["gpu_us"]
    return f"{ratio:.2f} ({_verdict(ratio <= limit, ratio, limit)})"


def _interleaved_cell(r: dict) -> str:
    ratio, (lo, hi) = r["fused_over_eager"], r["ratio_spread"]
    verdict = _verdict(ratio <= EAGER_RATIO, ratio, EAGER_RATIO)
    return f"{ratio:.2f} ({lo:.2f}-{hi:.2f} in {r['rounds']} rounds; {verdict})"


def interleaved_section(records: list[dict]) -> list[str]:
    """test_pooler_interleaved's rounds (records with "bench": "pooler_interleaved")."""
    if not records:
        return []
    lines = ["## GPU time in interleaved rounds: fused / eager BertPooler (<= 0.7 at H = 768)", "",
             "Each round times eager and the fused kernel, in alternating order, on the same "
             "rotated inputs (CUDA-graph replays, median); the ratio is the median of the rounds' "
             "ratios, the range theirs. "
             "The Targets table uses these where they ran.", "",
             "| dtype | H | B | eager us | fused us | fused / eager (rounds' range) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(records, key=lambda r: (r["dtype"], r["hidden"], r["batch"])):
        lines.append(f"| {r['dtype']} | {r['hidden']} | {r['batch']} | {r['eager_gpu_us']:.2f} | "
                     f"{r['gpu_us']:.2f} | {_interleaved_cell(r)} |")  # fmt: skip
    return lines + ["", ""]


def targets(records: list[dict], interleaved: Optional[list[dict]] = None) -> list[str]:
    """The targets table from test_pooler's cases; the GPU-time ratio to eager from
    test_pooler_interleaved's rounds where they ran (``interleaved``), from two cases elsewhere."""
    idx = _index(records)
    rounds = {(r["dtype"], r["batch"]): r for r in interleaved or () if r["hidden"] == TARGET_H}
    lines = ["| dtype | B | triton/eager GPU (<= 0.7) | triton/max-autotune GPU (<= 1.0) | "
             "fraction of GEMM rate (>= 0.6 at B >= 4096) | triton/eager wall (<= 1.0) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for dtype in TARGET_DTYPES:
        for batch in sorted(
            {r["batch"] for r in records if r["dtype"] == dtype and r["hidden"] == TARGET_H}
            | {b for d, b in rounds if d == dtype}
        ):
            get = lambda c: idx.get((dtype, TARGET_H, batch, c))  # noqa: E731, B023 (used at once)
            t, e, ma = get("triton"), get("eager"), get("compile_max_autotune")
            iv = rounds.get((dtype, batch))
            if t is None or "gpu_us" not in t:
                t = iv  # the rounds' median time stands in for the missing case
            if t is None:
                lines.append(f"| {dtype} | {batch} | not run | | | |")
                continue
            cells = [
                _interleaved_cell(iv) if iv is not None else _ratio_cell(t, e, EAGER_RATIO),
                _ratio_cell(t, ma, AUTOTUNE_RATIO),
            ]
            frac = t["fraction_of_gemm_rate"]
            if batch >= GEMM_FRACTION_MIN_B:
                cells.append(
                    f"{frac:.2f} ({_verdict(frac >= GEMM_FRACTION, frac, GEMM_FRACTION, True)})"
                )
            else:
                cells.append(f"{frac:.2f} (no target)")
            if e is None or t is iv:
                cells.append("not run")
            else:
                ratio = t["wall_us"] / e["wall_us"]
                cells.append(f"{ratio:.2f} ({_verdict(ratio <= 1.0, ratio, 1.0)})")
            lines.append(f"| {dtype} | {batch} | " + " | ".join(cells) + " |")
    return lines + [""]


def per_call_targets(records: list[dict]) -> list[str]:
    """The per-call target from ``bench/test_bench_launch.py::test_per_call_interleaved``: the
    median over rounds of FastBertPooler's time over eager's, each round timing both."""
    recs = [r for r in _records_of(records, "launch_interleaved") if r["contestant"] == "eager"]
    if not recs:
        return []
    lines = ["## Per call: FastBertPooler / eager BertPooler, timed interleaved (<= 0.7)", "",
             "| dtype | B | eager us | ratio (rounds' range) |", "|---|---|---|---|"]  # fmt: skip
    for r in sorted(recs, key=lambda r: (r["dtype"], r["batch"])):
        ratio, (lo, hi) = r["fast_over_eager"], r["ratio_spread"]
        verdict = _verdict(ratio <= EAGER_RATIO, ratio, EAGER_RATIO)
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['wall_us']:.1f} | {ratio:.2f} "
                     f"({lo:.2f}-{hi:.2f}; {verdict}) |")  # fmt: skip
    return lines + ["", ""]


def invariance_cost(records: list[dict]) -> list[str]:
    idx = _index(records)
    costs = []
    lines = [
        "| dtype | H | B | default GPU us | batch_invariant GPU us | cost |",
        "|---|---|---|---|---|---|",
    ]
    for dtype, hidden, batch in _cases(records):
        t, bi = (
            idx.get((dtype, hidden, batch, "triton")),
            idx.get((dtype, hidden, batch, "triton_bi")),
        )
        if t is None or bi is None or "gpu_us" not in t or "gpu_us" not in bi:
            continue
        cost = bi["gpu_us"] / t["gpu_us"] - 1
        costs.append(cost)
        lines.append(f"| {dtype} | {hidden} | {batch} | {t['gpu_us']:.2f} | {bi['gpu_us']:.2f} | "
                     f"{cost * 100:+.1f}% |")  # fmt: skip
    if not costs:
        return ["No case ran both contestants.", ""]
    worst = max(costs)
    verdict = (
        f"Worst cost {worst * 100:+.1f}% is under {INVARIANCE_MAX_COST * 100:.0f}% at every "
        "benchmarked case: by the rule above batch_invariant=True should become the default."
        if worst < INVARIANCE_MAX_COST
        else f"Worst cost {worst * 100:+.1f}% is over {INVARIANCE_MAX_COST * 100:.0f}%: "
        "batch_invariant stays an option (default False)."
    )
    return [verdict, ""] + lines + [""]


def _missing(records: list[dict]) -> list[str]:
    present = {(r["dtype"], r["hidden"], r["batch"], r["contestant"]) for r in records}
    batches = sorted({r["batch"] for r in records})
    gpu = any("gpu_us" in r for r in records)
    if not gpu:
        return []
    missing = []
    for dtype, hidden in sorted({(r["dtype"], r["hidden"]) for r in records}):
        for c in _contestants(records):
            if c == "compile_max_autotune" and (hidden != TARGET_H or dtype not in TARGET_DTYPES):
                continue  # outside the default grid (BENCH_FULL=1 runs it)
            missing += [f"{dtype}/H{hidden}/B{b}/{c}" for b in batches
                        if (dtype, hidden, b, c) not in present]  # fmt: skip
    return missing


def plots(records: list[dict], env: dict, out_dir: str) -> list[str]:
    """speedup.png and roofline.png; returns the paths written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    idx = _index(records)
    hiddens = sorted({r["hidden"] for r in records})
    written = []
    for name, ylabel, value in (
        ("speedup.png", "speedup over eager BertPooler (GPU time)",
         lambda r, e: _time(e) / _time(r) if e else None),
        ("roofline.png", "fraction of roofline (floor / time)", lambda r, e: 1 / r["time_over_floor"]),
    ):  # fmt: skip
        fig, axes = plt.subplots(1, len(hiddens), figsize=(6 * len(hiddens), 4.5), squeeze=False)
        for ax, hidden in zip(axes[0], hiddens):
            for dtype in sorted({r["dtype"] for r in records}):
                for c in _contestants(records):
                    if name == "speedup.png" and c == "eager":
                        continue
                    pts = []
                    for batch in sorted({r["batch"] for r in records}):
                        r = idx.get((dtype, hidden, batch, c))
                        if r is not None:
                            v = value(r, idx.get((dtype, hidden, batch, "eager")))
                            if v is not None:
                                pts.append((batch, v))
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=f"{c} {dtype}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch B")
            ax.set_title(f"H = {hidden}")
            ax.grid(True, alpha=0.3)
            if name == "speedup.png":
                ax.axhline(1 / EAGER_RATIO, color="grey", linestyle="--", linewidth=0.8)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=6, ncol=2)
        fig.suptitle(stamp(env), fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def backward_markdown(records: list[dict]) -> list[str]:
    """The forward + backward section (records with "bench": "backward")."""
    if not records:
        return []
    idx = _index(records)
    out = [
        "## Forward + backward (training)", "",
        "One forward, then `torch.autograd.grad` w.r.t. hidden_states, weight and bias with a fixed "
        "upstream gradient (no `.grad` accumulation), the same for every contestant; gradients "
        "checked against eager autograd first. floor = max(bytes / bandwidth, flops / GEMM "
        "rate) over forward + backward: forward bytes = W + bias + B*H (X rows) + B*H (y); "
        "backward bytes = W + B*H (X rows) + 2*B*H (dY, y) read, B*H (dX rows) + W + bias "
        "written; flops = 2*B*H*H + 4*B*H*H. floor+fill also counts the zeros of the dense "
        "[B, S, H] gradient outside row 0, which autograd makes every contestant write.", "",
    ]  # fmt: skip
    if not any("gpu_us" in r for r in records):
        out += ["**No CUDA GPU: only eager and the op's torch path were timed; the Triton backward "
                "ran once through the interpreter to check its gradients. Kernel figures need a "
                "GPU.**", ""]  # fmt: skip
    out += [
        "| dtype | H | B | contestant | GPU us | wall us | x eager (GPU) | x eager (wall) | "
        "floor us | floor+fill us | time/floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for dtype, hidden, batch in _cases(records):
        eager = idx.get((dtype, hidden, batch, "eager"))
        for c in _contestants(records):
            r = idx.get((dtype, hidden, batch, c))
            if r is None:
                continue
            both_gpu = eager and "gpu_us" in r and "gpu_us" in eager
            x_gpu = eager["gpu_us"] / r["gpu_us"] if both_gpu else None
            x_wall = eager["wall_us"] / r["wall_us"] if eager else None
            out.append(
                f"| {dtype} | {hidden} | {batch} | {c} | {_fmt(r.get('gpu_us'), '.2f')} | "
                f"{r['wall_us']:.2f} | {_fmt(x_gpu, '.2f')} | {_fmt(x_wall, '.2f')} | "
                f"{r['floor_us']:.2f} | {r['floor_fill_us']:.2f} | {r['time_over_floor']:.2f} |"
            )
    return out + [""]


# Benches with their own section above; any other bench (heads, masked_pool, ...) gets one generic
# table. "x eager" divides by the first baseline contestant present for the same case.
OWN_SECTIONS = ("pooler_fwd", "backward", "pooler_interleaved")
BASELINES = ("eager", "eager_st")


def other_benches_markdown(records: list[dict]) -> list[str]:
    out = []
    for bench in sorted(
        {r["bench"] for r in records if r.get("bench") not in (None,) + OWN_SECTIONS}
    ):
        recs = _records_of(records, bench)
        keys = [
            k for k in ("dtype", "hidden", "seq", "labels", "batch") if any(k in r for r in recs)
        ]
        case = lambda r: tuple(r.get(k) for k in keys)  # noqa: E731, B023 (used at once)
        idx = {(case(r), r["contestant"]): r for r in recs}
        out += [f"## {bench}", "", "| " + " | ".join(keys) + " | contestant | GPU us | wall us | "
                "x eager | floor us | time/floor |", "|---" * (len(keys) + 6) + "|"]  # fmt: skip
        for r in sorted(recs, key=lambda r: (case(r), _rank(r["contestant"]))):
            base = next((idx[(case(r), b)] for b in BASELINES if (case(r), b) in idx), None)
            x = _time(base) / _time(r) if base else None
            out.append("| " + " | ".join(str(v) for v in case(r)) + f" | {r['contestant']} | "
                       f"{_fmt(r.get('gpu_us'), '.2f')} | {r['wall_us']:.2f} | {_fmt(x, '.2f')} | "
                       f"{r['floor_us']:.2f} | {r['time_over_floor']:.2f} |")  # fmt: skip
        out.append("")
    return out


def write_report(json_path: str, out_dir: Optional[str] = None) -> list[str]:
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out_dir, exist_ok=True)
    all_records, env, cal = load(json_path)
    records = _records_of(all_records, "pooler_fwd")
    interleaved = _records_of(all_records, "pooler_interleaved")
    backward = _records_of(all_records, "backward")
    others = other_benches_markdown(all_records)
    if not records and not interleaved and not backward and not others:
        raise ValueError(
            f"{json_path} holds no timed benchmark (was it run with --benchmark-disable?)"
        )
    written = plots(records, env, out_dir) if records else []
    header = f"# bertpool_fast benchmark: {env.get('device', '?')}\n\nStamp: {stamp(env)}.\n\n"
    text = markdown(records, env, cal, interleaved) if records else header
    text += "\n".join(interleaved_section(interleaved))
    text += "\n".join(per_call_targets(all_records))
    text += "\n".join(backward_markdown(backward))
    text += "\n".join(others)
    if records and not written:
        text += (
            "\nPlots not written: matplotlib is not installed (`pip install matplotlib`, then "
            f"`python -m bench.report {json_path}`).\n"
        )
    elif written:
        text += (
            "\n"
            + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in written)
            + "\n"
        )
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    return [path] + written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "json", help="pytest-benchmark JSON (--benchmark-json), or the BENCH_RECORDS .jsonl file"
    )
    parser.add_argument("--out", help="folder for report.md and plots (default: beside the JSON)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.json, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not any(p.endswith(".png") for p in written):
        print("matplotlib is not installed: no plots (the markdown report is complete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
