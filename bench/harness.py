"""Timing, roofline and provenance helpers shared by every benchmark in bench/.

A benchmark supplies ``call(i)``, which runs the op once on input set ``i`` of ``n_inputs`` (input
sets are rotated so the weight is not in L2 when a timing claims a cold weight), and gets back:

  * ``gpu_time(call, n)``  - GPU time per call: CUDA-graph replays of a run of calls, timed with
    CUDA events, median over many replays; launch overhead is gone, back-to-back kernels remain.
    Falls back to CUDA events around single calls where a contestant cannot be captured.
  * ``wall_time(call, n)`` - per-call wall time the way inference code calls the op: a loop of
    eager calls, synchronized once at the end, so Python, dispatch and launch costs are included.
  * on a CPU, ``wall_time`` is the only timing (there is no GPU time to take).

``calibrate`` measures the device's copy bandwidth and GEMM rate once per run; ``roofline_floor``
turns bytes and flops into the time no kernel can beat on that device.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

HAS_CUDA = torch.cuda.is_available()
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


def sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


@dataclass
class Timing:
    median_us: float
    min_us: float
    reps: int  # how many per-call figures the median is over
    method: str  # "cuda_graph", "cuda_events", "wall_loop"
    calls_per_rep: int = 1

    def as_dict(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_{k}": v for k, v in asdict(self).items()}


def _stats(per_call_us: list[float], method: str, calls_per_rep: int) -> Timing:
    return Timing(statistics.median(per_call_us), min(per_call_us), len(per_call_us), method,
                  calls_per_rep)  # fmt: skip


def gpu_time(
    call: Callable[[int], Any], n_inputs: int, *, reps: int = 60, min_calls: int = 32
) -> Timing:
    """GPU time per call of ``call``, from CUDA-graph replays (median over ``reps`` replays).

    One graph holds ``k * n_inputs >= min_calls`` calls cycling through the input sets, so each
    call's inputs were last touched ``n_inputs - 1`` calls earlier; a replay's time / calls is one
    per-call figure.
    """
    if not HAS_CUDA:
        raise RuntimeError("gpu_time needs a CUDA device; use wall_time on a CPU")
    calls = n_inputs * max(1, math.ceil(min_calls / n_inputs))
    for i in range(n_inputs):  # compile, autotune and allocate before capture
        call(i)
    sync()
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(n_inputs):
                call(i)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for j in range(calls):
                call(j % n_inputs)
        graph.replay()
        sync()
    except Exception:  # noqa: BLE001 - a contestant that cannot be captured is timed with events
        sync()
        return _event_time(call, n_inputs, reps=max(reps, calls))
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for r in range(reps):
        start[r].record()
        graph.replay()
        end[r].record()
    sync()
    per_call = [s.elapsed_time(e) * 1e3 / calls for s, e in zip(start, end)]
    return _stats(per_call, "cuda_graph", calls)


def _event_time(call: Callable[[int], Any], n_inputs: int, *, reps: int) -> Timing:
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for r in range(reps):
        start[r].record()
        call(r % n_inputs)
        end[r].record()
    sync()
    return _stats([s.elapsed_time(e) * 1e3 for s, e in zip(start, end)], "cuda_events", 1)


def wall_loop(call: Callable[[int], Any], n_inputs: int, iters: int) -> Callable[[], None]:
    """A callable running ``iters`` eager calls and one synchronize: what pytest-benchmark times."""

    def run() -> None:
        for j in range(iters):
            call(j % n_inputs)
        sync()

    return run


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64: each contestant is checked before timing."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def benchmark_wall_us(benchmark, call: Callable[[int], Any], n_inputs: int, iters: int,
                      enabled: bool) -> Optional[float]:  # fmt: skip
    """Per-call wall time in us, timed by pytest-benchmark over ``wall_loop`` (15 rounds, median).

    Under ``--benchmark-disable`` (CI) it makes one untimed call, so the code path still runs, and
    returns None: the caller records nothing.
    """
    if not enabled:
        benchmark(call, 0)
        return None
    benchmark.pedantic(wall_loop(call, n_inputs, iters), rounds=15, warmup_rounds=2)
    return benchmark.stats.stats.median * 1e6 / iters


def wall_time(call: Callable[[int], Any], n_inputs: int, *, iters: int = 100,
              rounds: int = 15) -> Timing:  # fmt: skip
    """Per-call wall time: ``rounds`` loops of ``iters`` eager calls, each synchronized at its end."""
    loop = wall_loop(call, n_inputs, iters)
    loop()  # warm up
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        loop()
        per_call.append((time.perf_counter() - t0) * 1e6 / iters)
    return _stats(per_call, "wall_loop", iters)


def l2_bytes() -> int:
    if HAS_CUDA:
        size = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)
        if size:
            return int(size)
        return 50 * 2**20  # H100's L2, should the property be missing
    return 32 * 2**20  # a CPU's last-level cache, order of magnitude


def rotation_count(bytes_per_call: int, allocated_per_set: int, *, cache_bytes: Optional[int] = None,
                   memory_cap: int = 16 * 2**30, max_sets: int = 256) -> int:  # fmt: skip
    """Input sets to rotate so that the sets touched between two uses of one set fill the cache
    three times over; capped by memory (``allocated_per_set`` may exceed the bytes touched: a
    [B, S, H] tensor of which only row 0 is read)."""
    cache = l2_bytes() if cache_bytes is None else cache_bytes
    want = math.ceil(3 * cache / max(bytes_per_call, 1)) + 1
    fit = max(1, memory_cap // max(allocated_per_set, 1))
    return max(1, min(want, fit, max_sets))


def l2_cold(bytes_per_call: int, n_inputs: int) -> bool:
    """Whether a rotation of ``n_inputs`` sets really evicts a set before its reuse."""
    return bytes_per_call * (n_inputs - 1) >= 2 * l2_bytes()


@dataclass
class Calibration:
    device: str
    copy_bandwidth: float  # bytes/s, read + write counted
    gemm_rate: dict[str, float] = field(default_factory=dict)  # dtype name -> flop/s
    gemm_shape: int = 0
    measured: bool = True  # False: a tiny smoke run whose figures mean nothing


def measure_copy_bandwidth(nbytes: int, device: str) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = wall_time(lambda _i: dst.copy_(src), 1, iters=5, rounds=7)
    return 2 * src.numel() * 4 / (timing.median_us * 1e-6)


def measure_gemm_rate(dtype: torch.dtype, n: int, device: str) -> float:
    """Dense GEMM rate at n x n x n under torch's current precision settings (what eager gets)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = wall_time(lambda _i: torch.mm(a, b, out=out), 1, iters=5, rounds=7)
    return 2 * n**3 / (timing.median_us * 1e-6)


def calibrate(dtypes, *, smoke: bool = False) -> Calibration:
    """Copy bandwidth and GEMM rate of this device; ``smoke`` uses tiny sizes (code path only)."""
    device = "cuda" if HAS_CUDA else "cpu"
    if smoke:
        copy_bytes, n = 2**20, 64
    elif HAS_CUDA:
        copy_bytes, n = 2**30, 8192  # 1 GiB: far past L2; 8192^3: past every GEMM's ramp-up
    else:
        copy_bytes, n = 256 * 2**20, 384  # CPU fp16/bf16 GEMMs are slow; a rate, not a record
    rates = {DTYPE_NAMES[d]: measure_gemm_rate(d, n, device) for d in dtypes}
    return Calibration(device_name(), measure_copy_bandwidth(copy_bytes, device), rates, n,
                       measured=not smoke)  # fmt: skip


def roofline_floor_s(nbytes: float, flops: float, cal: Calibration, dtype_name: str) -> float:
    return max(nbytes / cal.copy_bandwidth, flops / cal.gemm_rate[dtype_name])


def pooler_traffic(batch: int, h_in: int, h_out: int, elem: int, bias: bool = True):
    """(bytes, flops) of one pooler call: the weight, the bias, the B gathered input rows (only
    row 0 of each sequence is read) and the output; 2 B H_in H_out flops."""
    nbytes = elem * (h_out * h_in + (h_out if bias else 0) + batch * h_in + batch * h_out)
    return nbytes, 2 * batch * h_in * h_out


def device_name() -> str:
    if HAS_CUDA:
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}"


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        return (
            out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def _git_commit() -> str:
    """The checkout's commit; a copy without .git says so (BERTPOOL_COMMIT names it there)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        return out.stdout.strip() if out.returncode == 0 else "unknown (not a git checkout)"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def environment() -> dict[str, str]:
    """What every result is stamped with."""
    import triton

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    info = {
        "device": device_name(),
        "driver": _driver_version() if HAS_CUDA else "n/a (CPU)",
        "cuda": torch.version.cuda or "n/a",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    info["commit"] = os.environ.get("BERTPOOL_COMMIT") or _git_commit()
    if HAS_CUDA:
        props = torch.cuda.get_device_properties(0)
        info["sm"] = f"{props.major}.{props.minor}"
        info["sms"] = str(props.multi_processor_count)
    return info


def results_dir_name(env: Optional[dict[str, str]] = None) -> str:
    """``<gpu>-<date>``, e.g. ``NVIDIA-H100-80GB-HBM3-2025-06-01``."""
    env = env or environment()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-")
    return f"{slug}-{env['date'][:10]}"


class Budget:
    """Seconds a benchmark session may spend; cases past it are skipped, and say so."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds
        self.start = time.monotonic()

    @classmethod
    def from_env(cls, var: str = "BENCH_BUDGET_S") -> Budget:
        value = os.environ.get(var)
        return cls(float(value) if value else None)

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.monotonic() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


def gpu_or_dry_run(prog: str, dry_run: bool) -> bool:
    """For a command that times kernels: False, having said why, on a CPU without ``--dry-run``.
    A dry run on a CPU switches Triton's interpreter on, before bertpool_fast imports triton."""
    if not HAS_CUDA and not dry_run:
        print(f"error: {prog} times kernels on a GPU; on a CPU use --dry-run", file=sys.stderr)
        return False
    if dry_run and not HAS_CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    return True


def batches_arg(text: Optional[str], default: tuple, dry_run_default: tuple, dry_run: bool):
    """The batch sizes of a ``--batches`` option: its comma-separated M values, or a default."""
    if text:
        return tuple(int(b) for b in text.split(","))
    return dry_run_default if dry_run else default
