"""Per-call cost of a launch: the fused pooler's Python path against eager, and the launch cache.

Three parts, one run:
* wall time per call (a Python loop, one synchronize) of ``FastBertPooler``, ``fused_pooler``,
  eager ``BertPooler``, ``addmm`` + ``tanh``, and an empty Triton kernel launched through
  ``kernel[grid](...)`` and through ``CachedLaunch``: B in {1, 32, 512, 8192}, fp16 / bf16, H = 768.
  Per-call wall time is what a user's inference loop pays; at these sizes it is host-bound.
* host-only time of ``pooler_fwd`` up to the driver's launch, with the compiled kernel's launcher
  replaced by a no-op stand-in and Triton's driver by a stand-in that names an sm_90 target: Triton's
  own ``JITFunction.run`` against the cache. It needs no GPU, so it is measured on CPU machines too
  (label such figures "CPU host-time"); it also checks that both paths hand the launcher the very
  same arguments.
* the same per-call wall time of ``FastBertPooler`` against eager ``BertPooler`` timed interleaved
  (rounds of A then B, then B then A, ...), reported as the median of the per-round ratios: on a
  busy host the separate cases above drift apart by more than the difference they measure;
* BERT-base forward (random weights, S = 128, B = 8), eager against patched, timed interleaved
  (A, B, A, B, ...) so order effects cancel; reported as a ratio, expected ~1.00.

On a CPU with the benchmark disabled (CI) every case runs once, untimed, on a tiny subset, and
checks its output. On a GPU the whole file takes well under a minute.
"""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch
import triton
import triton.language as tl

from bench import harness
from bench.conftest import benchmark_enabled

H = 768
SEQ = 128
CONTESTANTS = ("fast_bert_pooler", "fused_pooler", "eager", "addmm_tanh", "empty_jit",
               "empty_cached")  # fmt: skip
AGREEMENT = {"fp16": 4e-3, "bf16": 3e-2, "fp32": 1e-4}


def _grid() -> list[tuple[str, int, int, str]]:
    if not harness.HAS_CUDA:
        # the interpreter runs the kernels: a small H and two batches check every code path
        return [("bf16", 64, b, c) for b in (1, 8) for c in CONTESTANTS]
    return [(d, H, b, c) for d in ("fp16", "bf16") for b in (1, 32, 512, 8192) for c in CONTESTANTS]


GRID = _grid()


@triton.jit
def empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
    pass


def _bert_pooler(hidden: int, w: torch.Tensor, b: torch.Tensor):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertPooler

    pooler = BertPooler(BertConfig(hidden_size=hidden)).to(device=w.device, dtype=w.dtype).eval()
    pooler.dense.weight = torch.nn.Parameter(w, requires_grad=False)
    pooler.dense.bias = torch.nn.Parameter(b, requires_grad=False)
    return pooler


def make_call(contestant: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """``call(i)`` as inference code would make it; ``i`` is unused (one input set)."""
    from bertpool_fast import FastBertPooler, fused_pooler
    from bertpool_fast.kernels.launch import CachedLaunch

    if contestant == "eager":
        pooler = _bert_pooler(h.shape[-1], w, b)
        return lambda i: pooler(h)
    if contestant == "fast_bert_pooler":
        fast = FastBertPooler.from_pooler(_bert_pooler(h.shape[-1], w, b))
        return lambda i: fast(h)
    if contestant == "fused_pooler":
        return lambda i: fused_pooler(h, w, b)  # as users call it: backend "auto"
    if contestant == "addmm_tanh":
        return lambda i: torch.tanh(torch.addmm(b, h[:, 0], w.t()))
    if contestant == "empty_jit":
        return lambda i: empty_kernel[(1,)](h, 16, 64, num_warps=4, num_stages=3)
    if contestant == "empty_cached":
        cached = CachedLaunch(empty_kernel)
        args, constexprs = (h, 16), (64,)
        return lambda i: cached((1,), args, constexprs, 4, 3)
    raise ValueError(f"unknown contestant {contestant!r}; known: {CONTESTANTS}")


@pytest.mark.parametrize("dtype_name,hidden,batch,contestant", GRID,
                         ids=[f"{d}-H{h}-B{b}-{c}" for d, h, b, c in GRID])  # fmt: skip
def test_launch_per_call(benchmark, request, calibration, bench_results, dtype_name, hidden, batch,
                         contestant):  # fmt: skip
    enabled = benchmark_enabled(request.config)
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    h = torch.randn(batch, SEQ, hidden, device=device).to(dtype)
    w = (torch.randn(hidden, hidden, device=device) * hidden**-0.5).to(dtype)
    b = (torch.randn(hidden, device=device) * 0.1).to(dtype)
    with torch.inference_mode():
        call = make_call(contestant, h, w, b)
        out = call(0)
        harness.sync()
        if not contestant.startswith("empty"):
            expected = torch.tanh(torch.nn.functional.linear(h[:, 0], w, b))
            err = harness.rel_err(out, expected)
            assert out.shape == expected.shape and out.dtype == dtype
            assert err <= AGREEMENT[dtype_name], f"{contestant} disagrees with eager: {err:.2e}"
        if not harness.HAS_CUDA and contestant not in ("eager", "addmm_tanh"):
            pytest.skip("kernel launch figures need a GPU: the interpreter ran this case once")
        wall_us = harness.benchmark_wall_us(benchmark, call, 1, 200, enabled)
    if wall_us is None:
        return
    # the pooler's roofline floor; the empty kernel does no work, so it has none
    nbytes, flops = harness.pooler_traffic(batch, hidden, hidden, dtype.itemsize)
    floor_us = harness.roofline_floor_s(nbytes, flops, calibration, dtype_name) * 1e6
    if contestant.startswith("empty"):
        floor_us = float("nan")
    record = {"bench": "launch", "dtype": dtype_name, "hidden": hidden, "batch": batch,
              "contestant": contestant, "wall_us": wall_us, "floor_us": floor_us,
              "time_over_floor": wall_us / floor_us}  # fmt: skip
    benchmark.extra_info.update(record)
    benchmark.group = f"launch {dtype_name} B={batch}"
    bench_results.append(record)


# ---- host-only: Python per call up to the driver's launch, no GPU needed --------------------------


class _StandInCompiled:
    """A compiled kernel whose launcher records its arguments and launches nothing."""

    function = 0x1
    packed_metadata = ()

    def __init__(self):
        self.last = None

    def run(self, *args):
        self.last = args

    def launch_metadata(self, grid, stream, *args):
        return None


class _StandInDriver:
    """Enough of Triton's active driver for ``JITFunction.run`` to bind, key and 'launch'."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def host_time_us(iters: int) -> dict[str, float]:
    """Minimum µs per call (fp16, B = 8, H = 768, CPU tensors), the compiled launcher a no-op.

    "jit": ``pooler_fwd`` launching through ``JITFunction.run`` (Triton's bind, specialize, key,
    metadata), as before the cache; "cached": ``pooler_fwd`` through ``CachedLaunch`` on a hit;
    "inference": ``ops.pooler_inference`` (what ``fused_pooler`` and ``FastBertPooler`` call) with
    no plan, i.e. its checks, then ``pooler_fwd`` through the cache; "planned": the same call
    running its ``PoolerPlan``. The stand-in stream/device reads cost about what torch's C calls
    do. The cached and planned launches must hand the launcher the arguments Triton's does.
    """
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from bertpool_fast import ops
    from bertpool_fast.kernels import pooler
    from bertpool_fast.kernels.launch import CachedLaunch

    jit = JITFunction(pooler.pooler_fwd_kernel.fn)
    compiled = _StandInCompiled()

    def stand_in_compile(key, *args, **kwargs):
        jit.device_caches[0][0][key] = compiled
        return compiled

    jit._do_compile = stand_in_compile
    x = torch.randn(8, SEQ, H).half()
    w = torch.randn(H, H).half()
    bias = torch.randn(H).half()
    out = torch.empty(8, H, dtype=torch.float16)
    saved_driver, saved_launch = driver._active, pooler.launch_pooler_fwd
    saved = ops._PLANS, ops._CPU_KERNEL, ops._remember_plan
    driver.set_active(_StandInDriver())
    launched, caches = {}, {}
    rounds: dict[str, list[float]] = {
        name: [] for name in ("jit", "cached", "inference", "planned")
    }
    remember = ops._remember_plan
    calls = {
        "jit": lambda: pooler.pooler_fwd(x, w, bias, "tanh", out=out),
        "cached": lambda: pooler.pooler_fwd(x, w, bias, "tanh", out=out),
        "inference": lambda: ops.pooler_inference(x, w, bias, "tanh"),
        "planned": lambda: ops.pooler_inference(x, w, bias, "tanh"),
    }
    try:
        ops._CPU_KERNEL = True  # CPU tensors take the inference path here, GPU machine or not
        for name in calls:
            cache = CachedLaunch(jit, enabled=name != "jit")
            cache.current_device = lambda: -1  # what get_device() says of CPU tensors
            cache.current_stream = lambda device: 0
            caches[name] = cache
            pooler.launch_pooler_fwd = cache
            ops._PLANS = {}
            ops._remember_plan = remember if name == "planned" else _no_plan
            for _ in range(3):  # miss, then hits
                calls[name]()
            launched[name] = compiled.last
        assert caches["cached"].entries, "the host figure must time cache hits"
        assert ops._PLANS, "the planned figure must time a plan"
        ops._remember_plan = _no_plan  # the plan is made: "inference" must not make one
        plans = ops._PLANS
        # interleaved rounds, minimum per path: this is host time, and other processes only add
        for _ in range(9):
            for name, cache in caches.items():
                pooler.launch_pooler_fwd = cache
                ops._PLANS = plans if name == "planned" else {}
                call = calls[name]
                t0 = time.perf_counter()
                for _ in range(iters):
                    call()
                rounds[name].append((time.perf_counter() - t0) * 1e6 / iters)
    finally:
        driver._active = saved_driver
        pooler.launch_pooler_fwd = saved_launch
        ops._PLANS, ops._CPU_KERNEL, ops._remember_plan = saved
    results = {name: min(r) for name, r in rounds.items()}
    # the launchers computed their grids with triton.cdiv before (two calls for the pooler)
    t0 = time.perf_counter()
    for _ in range(iters):
        triton.cdiv(768, 32), triton.cdiv(8, 16)
    results["two_triton_cdiv"] = (time.perf_counter() - t0) * 1e6 / iters
    # grid, stream, function, packed metadata, then the kernel's arguments in signature order;
    # Triton passes its launch metadata and hook chains where the cache passes None (no hooks).
    # The inference paths allocate their own output: compared by everything but its address.
    jit_args = launched["jit"]
    for name in ("cached", "planned"):
        args = launched[name]
        assert jit_args[:6] == args[:6] and args[6:9] == (None, None, None), name
        assert len(jit_args) == len(args), name
        for a, c in zip(jit_args[9:], args[9:]):
            if isinstance(a, torch.Tensor):
                assert (a is c) if a is not out else (a.shape, a.dtype) == (c.shape, c.dtype)
            else:
                assert a == c, (name, a, c)
    return results


def _no_plan(*args) -> None:
    pass


def test_host_time_per_call(request, bench_results):
    enabled = benchmark_enabled(request.config)
    figures = host_time_us(2000 if enabled else 5)
    if not enabled:
        return
    label = "GPU machine host-time" if harness.HAS_CUDA else "CPU host-time"
    nan = float("nan")
    for contestant in ("jit", "cached", "inference", "planned"):
        # the summary table's fields; "wall_us" is host time here, no GPU work is launched
        bench_results.append({"bench": "launch_host", "label": label, "contestant": contestant,
                              "wall_us": figures[contestant], "floor_us": nan,
                              "time_over_floor": nan,
                              "two_triton_cdiv_us": figures["two_triton_cdiv"]})  # fmt: skip
    print(f"\n{label}: pooler_fwd up to the launch: {figures['jit']:.2f} us via kernel[grid], "
          f"{figures['cached']:.2f} us via the launch cache; pooler_inference: "
          f"{figures['inference']:.2f} us without a plan, {figures['planned']:.2f} us with one; "
          f"the two triton.cdiv calls the launcher made before cost "
          f"{figures['two_triton_cdiv']:.2f} us")  # fmt: skip


INTERLEAVED = [(d, b) for d in ("fp16", "bf16") for b in (1, 32, 512, 8192)]


def _interleaved(calls: dict, iters: int = 200, rounds: int = 24) -> dict[str, list[float]]:
    """Wall us per call of each of ``calls``, per round: in order, then reversed, then in order, ...
    Each call gets its index modulo 2 (a contestant may alternate between two inputs)."""
    per_call: dict[str, list[float]] = {name: [] for name in calls}
    for name in calls:  # warm-up: compile, plans, allocator
        harness.wall_loop(calls[name], 2, iters)()
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in order:
            run = harness.wall_loop(calls[name], 2, iters)
            t0 = time.perf_counter()
            run()
            per_call[name].append((time.perf_counter() - t0) * 1e6 / iters)
    return per_call


@pytest.mark.parametrize("dtype_name,batch", INTERLEAVED if harness.HAS_CUDA else [("bf16", 2)],
                         ids=lambda v: str(v))  # fmt: skip
def test_per_call_interleaved(request, bench_results, dtype_name, batch):
    enabled = benchmark_enabled(request.config) and harness.HAS_CUDA
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    hidden = H if harness.HAS_CUDA else 64
    h = torch.randn(batch, SEQ, hidden, device=device).to(dtype)
    w = (torch.randn(hidden, hidden, device=device) * hidden**-0.5).to(dtype)
    b = (torch.randn(hidden, device=device) * 0.1).to(dtype)
    with torch.inference_mode():
        calls = {"eager": make_call("eager", h, w, b),
                 "fast_bert_pooler": make_call("fast_bert_pooler", h, w, b)}  # fmt: skip
        expected = calls["eager"](0)
        got = calls["fast_bert_pooler"](0)
        assert harness.rel_err(got, expected) <= AGREEMENT[dtype_name]
        if not enabled:
            return
        per_call = _interleaved(calls)
    ratios = [f / e for f, e in zip(per_call["fast_bert_pooler"], per_call["eager"])]
    ratio = statistics.median(ratios)
    nan = float("nan")
    for contestant, times in per_call.items():
        bench_results.append({"bench": "launch_interleaved", "dtype": dtype_name, "hidden": H,
                              "batch": batch, "contestant": contestant,
                              "wall_us": statistics.median(times), "floor_us": nan,
                              "time_over_floor": nan, "fast_over_eager": ratio,
                              "ratio_spread": [min(ratios), max(ratios)]})  # fmt: skip
    print(f"\nper call, interleaved, {dtype_name} B={batch}: FastBertPooler / eager BertPooler = "
          f"{ratio:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
          f"{statistics.median(per_call['fast_bert_pooler']):.1f} vs "
          f"{statistics.median(per_call['eager']):.1f} us")  # fmt: skip


@pytest.mark.parametrize("batch", [64, 8192] if harness.HAS_CUDA else [2], ids=lambda v: f"B{v}")
def test_tma_launch_cost(request, bench_results, batch):
    """What a TMA tile's host-side descriptors cost per call: the same 64x128x64 tile launched
    through descriptors and through pointers, unplanned (``pooler_fwd`` with the config) and
    planned (``PoolerPlan.run``: the same rows, and rows alternating between two buffers, reuse
    the kept encoded descriptors; rows at a new address each call encode them), fp16, timed
    interleaved. At B = 64 the launches are host-bound, so the differences are the descriptors'
    host cost."""
    from bertpool_fast.kernels import pooler, pooler_plan
    from bertpool_fast.kernels.tiles import TileConfig

    enabled = benchmark_enabled(request.config) and harness.HAS_CUDA
    device = "cuda" if harness.HAS_CUDA else "cpu"
    hidden = H if harness.HAS_CUDA else 64
    h = torch.randn(batch, SEQ, hidden, device=device).half()
    w = (torch.randn(hidden, hidden, device=device) * hidden**-0.5).half()
    b = (torch.randn(hidden, device=device) * 0.1).half()
    tiles = {
        "tma": TileConfig(64, 128, 64, 4, 4, tma=True),
        "pointers": TileConfig(64, 128, 64, 4, 4),
    }
    expected = torch.tanh(torch.nn.functional.linear(h[:, 0], w, b))
    figures = {}
    with torch.inference_mode():
        for name, cfg in tiles.items():
            out = pooler.pooler_fwd(h, w, b, "tanh", config=cfg)
            assert harness.rel_err(out, expected) <= AGREEMENT["fp16"], name
        if not enabled:
            return
        unplanned = _interleaved({name: (lambda i, c=cfg: pooler.pooler_fwd(h, w, b, "tanh", config=c))
                                  for name, cfg in tiles.items()})  # fmt: skip
        for name, times in unplanned.items():
            figures[f"{name}, unplanned"] = statistics.median(times)
        plans = {}
        real_pick = pooler.pick_config
        for name, cfg in tiles.items():  # each tile's launch is cached by the calls above
            pooler.pick_config = lambda m, dtype, bi, arch, width=None, c=cfg: c
            try:
                plans[name] = pooler_plan.plan_pooler_fwd(h, w, b, "tanh")
            finally:
                pooler.pick_config = real_pick
            assert plans[name] is not None and plans[name].run(h, w, b) is not None, name
        assert plans["tma"].tma_blocks is not None and plans["pointers"].tma_blocks is None
        # the TMA plan keeps the encoded maps of the last few row addresses: rows alternating
        # between two buffers reuse them; rows at one more address than it keeps, in turn, are
        # encoded on every call (views of one buffer, rows apart: the same layout and alignment)
        h2 = h.clone()
        spread = torch.randn(batch + pooler_plan.KEPT_ROWS, SEQ, hidden, device=device).half()
        views = [spread[j : j + batch] for j in range(pooler_plan.KEPT_ROWS + 1)]
        turn = iter(range(1 << 62))
        tma_plan = plans["tma"]
        contestants = {
            f"{name}, planned": (lambda i, p=p: p.run(h, w, b)) for name, p in plans.items()
        }
        contestants["tma, planned, rows alternating"] = lambda i: tma_plan.run(
            h2 if i % 2 else h, w, b
        )
        contestants["tma, planned, rows at a new address"] = lambda i: tma_plan.run(
            views[next(turn) % len(views)], w, b
        )
        for name, times in _interleaved(contestants).items():
            figures[name] = statistics.median(times)
        kept = plans["tma"].encoded is not None and bool(plans["tma"].kept_maps)
        print(f"\nTMA plan keeps encoded descriptors: {kept}")
    nan = float("nan")
    for contestant, us in figures.items():
        bench_results.append({"bench": "launch_tma", "dtype": "fp16", "hidden": hidden, "batch": batch,
                              "contestant": contestant, "wall_us": us, "floor_us": nan,
                              "time_over_floor": nan})  # fmt: skip
    print(f"\nTMA launch cost, fp16 B={batch}, us per call: "
          + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))  # fmt: skip


# ---- end to end: BERT-base forward, eager against patched, interleaved ----------------------------


def _bert(device: str, dtype: torch.dtype):
    from transformers import BertConfig, BertModel

    if harness.HAS_CUDA:
        config = BertConfig()  # bert-base: 12 layers, H = 768
    else:
        config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128)  # fmt: skip
    torch.manual_seed(0)
    return BertModel(config).to(device=device, dtype=dtype).eval()


def test_bert_base_end_to_end(request, bench_results):
    from bertpool_fast import patch

    enabled = benchmark_enabled(request.config) and harness.HAS_CUDA
    device = "cuda" if harness.HAS_CUDA else "cpu"
    dtype = torch.float16 if harness.HAS_CUDA else torch.float32
    eager = _bert(device, dtype)
    patched = copy.deepcopy(eager)
    assert patch(patched) == 1
    batch = 8 if harness.HAS_CUDA else 2
    ids = torch.randint(0, eager.config.vocab_size, (batch, SEQ), device=device)
    with torch.inference_mode():
        a, b = eager(ids).pooler_output, patched(ids).pooler_output
        assert harness.rel_err(b, a) <= AGREEMENT["fp16" if harness.HAS_CUDA else "fp32"]
        if not enabled:
            return
        times = {"eager": [], "patched": []}
        for _ in range(3):  # warm-up, both
            eager(ids), patched(ids)
        harness.sync()
        for _ in range(20):
            for name, model in (("eager", eager), ("patched", patched)):
                t0 = time.perf_counter()
                for _ in range(5):
                    model(ids)
                harness.sync()
                times[name].append((time.perf_counter() - t0) * 1e6 / 5)
    eager_us, patched_us = statistics.median(times["eager"]), statistics.median(times["patched"])
    nan = float("nan")
    for contestant, us in (("eager", eager_us), ("patched", patched_us)):
        bench_results.append({"bench": "launch_e2e", "model": "bert-base random", "dtype": "fp16",
                              "batch": batch, "seq": SEQ, "contestant": contestant, "wall_us": us,
                              "floor_us": nan, "time_over_floor": nan,
                              "patched_over_eager": patched_us / eager_us})  # fmt: skip
    print(f"\nBERT-base forward B={batch} S={SEQ}: patched / eager = {patched_us / eager_us:.3f}")
