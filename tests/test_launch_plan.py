"""Prepared pooler launches (``kernels.pooler_plan.PoolerPlan``, used by ``ops.pooler_inference``).

After the first inference call of a weight at a batch size, later calls run a plan: a few
comparisons instead of the table lookup and the launch cache's key. A plan must run only for a
call whose kernel arguments are the planned ones (the rows' address and row stride aside, within
the same Triton specialization), and must never keep a weight alive.

CPU tests drive it with a stand-in compiled kernel that computes the pooler with torch from the
arguments it is handed (so a wrong stride or pointer gives a wrong number, not just a wrong log);
a GPU test checks the real launch bitwise against the plain path.
"""

from __future__ import annotations

import gc
import inspect

import pytest
import torch
import triton.language as tl
from triton import knobs
from triton.tools.tensor_descriptor import TensorDescriptor

from bertpool_fast import fused_pooler, ops
from bertpool_fast.kernels import descriptor_launch, pooler, pooler_plan
from bertpool_fast.kernels.launch import COMPILE_OPTIONS, CachedLaunch
from bertpool_fast.kernels.tiles import TileConfig
from bertpool_fast.reference import pooler_reference
from conftest import HAS_CUDA, randn


def _stand_in(x_ptr, w_ptr, b_ptr, out_ptr, ws_ptr, ticket_ptr, M, N, K, stride_xm, stride_xk,
              stride_wn, stride_wk, stride_b, stride_om, HAS_BIAS: tl.constexpr,
              ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
              INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, SWAP_AB: tl.constexpr,
              PDL: tl.constexpr):  # fmt: skip
    pass


def _stand_in_persistent(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_wn,
                         stride_wk, stride_b, stride_om, HAS_BIAS: tl.constexpr,
                         ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PDL: tl.constexpr):  # fmt: skip
    pass


def _stand_in_tma(x_desc, w_desc, b_ptr, out_ptr, M, N, K, stride_b, stride_om,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                  INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                  PERSISTENT: tl.constexpr, N_PARTS: tl.constexpr, X_IN_REGISTERS: tl.constexpr,
                  PDL: tl.constexpr):  # fmt: skip
    pass


def _stand_in_stream_k(x_desc, w_desc, b_ptr, out_ptr, ws_ptr, ticket_ptr, M, N, K, stride_b,
                       stride_om, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                       INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BIAS_EARLY: tl.constexpr, PDL: tl.constexpr):  # fmt: skip
    pass


def _from_descriptors(args: tuple) -> tuple:
    """The TMA kernel's arguments as the plain kernel's: each descriptor's base, row stride and
    column stride, after checking its block shape against the constexprs."""
    x_desc, w_desc, b, out, m, n, k, sb, som, has_bias, activation, interp, bm, bn, bk = args[:15]
    assert list(x_desc.block_shape) == [bm, bk] and list(w_desc.block_shape) == [bn, bk]
    assert list(x_desc.shape) == [m, k] and list(w_desc.shape) == [n, k]
    sxm, sxk = x_desc.strides
    swn, swk = w_desc.strides
    return (x_desc.base, w_desc.base, b, out, None, None, m, n, k, sxm, sxk, swn, swk, sb, som,
            has_bias, activation, "ieee", interp, bm, bn, bk)  # fmt: skip


def _compute(args: tuple) -> None:
    """What the kernel computes, from the arguments as launched (tensors, descriptors, ints,
    constexprs); the persistent kernel's arguments are the plain kernel's without the split-K
    scratch, the TMA kernel's hold descriptors in place of the X and W pointers and strides, and
    the stream-K kernel's have its scratch after the output."""
    if len(args) == 19:
        # stream-K: 11 runtime arguments (scratch after the output), 8 constexprs
        ws, tickets, (m, n), (bm, bn) = args[4], args[5], args[6:8], args[14:16]
        # two fp32 partial tiles for one program at least, an int32 ticket per tile, left at 0
        assert ws.dtype == torch.float32 and ws.numel() >= 2 * bm * bn
        assert tickets.dtype == torch.int32 and tickets.numel() >= -(-m // bm) * -(-n // bn)
        assert not tickets.any()
        args = (*args[:4], *args[6:-2], False, False, 1, False, args[-1])  # as the TMA kernel's
    if len(args) == 20:  # the TMA signature: 9 runtime arguments, 11 constexprs
        args = _from_descriptors(args)
    if len(args) == 21:  # the persistent signature: 13 runtime arguments, 8 constexprs
        args = (*args[:4], None, None, *args[4:])
    x, w, b, out, ws, tickets, m, n, k, sxm, sxk, swn, swk, sb, som = args[:15]
    has_bias, activation = args[15], args[16]
    if len(args) == 25 and args[22] > 1:  # SPLIT_K: fp32 partials for every split, int32 tickets
        assert ws.dtype == torch.float32 and ws.numel() >= args[22] * m * n
        assert tickets.dtype == torch.int32
    rows = torch.as_strided(x, (m, k), (sxm, sxk), x.storage_offset())
    weight = torch.as_strided(w, (n, k), (swn, swk), w.storage_offset())
    bias = torch.as_strided(b, (n,), (sb,), b.storage_offset()) if has_bias else None
    result = pooler_reference(rows.float(), weight.float(), None if bias is None else bias.float(),
                              activation)  # fmt: skip
    torch.as_strided(out, (m, n), (som, 1), out.storage_offset()).copy_(result)


class ComputingCompiled:
    function = 0xF00
    packed_metadata = ("packed",)

    def __init__(self):
        self.direct = 0

    def run(self, *launch_args):
        self.direct += 1
        self.last_constexpr = launch_args[-1]  # never a tensor: a kept one would stay alive
        _compute(launch_args[9:])


class ComputingKernel:
    pre_run_hooks: list = []

    def __init__(self, fn=_stand_in):
        self.fn = fn
        self.compiled = ComputingCompiled()
        self.plain = 0

    def __getitem__(self, grid):
        def launch_(*args, num_warps, num_stages, **options):
            self.plain += 1
            self.options, self.last_constexpr = options, args[-1]
            _compute(args)
            return self.compiled

        return launch_


def _computing_cache(fn=_stand_in) -> CachedLaunch:
    cache = CachedLaunch(ComputingKernel(fn), enabled=True)
    cache.device = -1  # CPU tensors' get_device()
    cache.current_device = lambda: cache.device
    cache.current_stream = lambda device: 7
    return cache


def _poisoned_empty(real_empty):
    """torch.empty whose floating-point tensors start as NaN: an output a launch did not write
    (or wrote through a stale pointer) can never equal the expected values."""

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    return empty


@pytest.fixture
def stand_in(monkeypatch):
    """pooler's launchers replaced by enabled caches around ComputingKernel, CPU tensors; fresh
    floating-point outputs NaN-filled."""
    monkeypatch.setattr(torch, "empty", _poisoned_empty(torch.empty))
    cache = _computing_cache()
    monkeypatch.setattr(pooler, "launch_pooler_fwd", cache)
    cache.persistent = _computing_cache(_stand_in_persistent)
    monkeypatch.setattr(pooler, "launch_pooler_fwd_persistent", cache.persistent)
    cache.tma = _computing_cache(_stand_in_tma)
    monkeypatch.setattr(pooler, "launch_pooler_fwd_tma", cache.tma)
    cache.stream_k = _computing_cache(_stand_in_stream_k)
    monkeypatch.setattr(pooler, "launch_pooler_fwd_stream_k", cache.stream_k)
    monkeypatch.setattr(ops, "_PLANS", {})
    calls = []
    real = pooler.pooler_fwd

    def counting_pooler_fwd(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "pooler_fwd", counting_pooler_fwd)
    cache.full_path_calls = calls
    return cache


def _inputs(b=5, s=3, h=48, n=40, dtype=torch.float16):
    hidden = randn(b, s, h, dtype=dtype, device="cpu")
    weight = randn(n, h, dtype=dtype, device="cpu", scale=h**-0.5)
    bias = randn(n, dtype=dtype, device="cpu", scale=0.5)
    return hidden, weight, bias


def _expected(hidden, weight, bias, activation="tanh"):
    b = None if bias is None else bias.float()
    return pooler_reference(hidden[:, 0].float(), weight.float(), b, activation).to(hidden.dtype)


def _run(stand_in, hidden, weight, bias, activation="tanh"):
    """One pooler_inference call; returns (output, whether the plan ran it)."""
    direct, full = stand_in.kernel.compiled.direct, len(stand_in.full_path_calls)
    out = ops.pooler_inference(hidden, weight, bias, activation)
    planned = len(stand_in.full_path_calls) == full and stand_in.kernel.compiled.direct > direct
    torch.testing.assert_close(out, _expected(hidden, weight, bias, activation), rtol=0, atol=0)
    return out, planned


def test_the_second_call_runs_the_plan(stand_in):
    hidden, weight, bias = _inputs()
    _, planned = _run(stand_in, hidden, weight, bias)
    assert not planned and stand_in.kernel.plain == 1  # compiled (here: stand-in) on first use
    _, planned = _run(stand_in, hidden, weight, bias)
    assert planned
    fresh = randn(*hidden.shape, dtype=hidden.dtype, device="cpu")
    _, planned = _run(stand_in, fresh, weight, bias)  # new rows at another address
    assert planned


def test_a_new_sequence_length_keeps_the_plan_with_its_row_stride(stand_in):
    # S changes the row stride (an int argument): still the same specialization (divisible by 16
    # or not, as planned), so the plan runs, and must pass the new stride
    hidden, weight, bias = _inputs(s=2, h=48)
    _run(stand_in, hidden, weight, bias)
    longer = randn(5, 7, 48, dtype=hidden.dtype, device="cpu")  # 7 * 48: divisible by 16 too
    _, planned = _run(stand_in, longer, weight, bias)
    assert planned


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_backend_triton_runs_the_plan_as_auto_does(stand_in, dtype):
    # fused_pooler(..., backend="triton") pays what "auto" pays per call (float32 too, which it
    # runs on the kernel everywhere); batch_invariant=True keeps the full path (its own table)
    hidden, weight, bias = _inputs(dtype=dtype)
    kernel = stand_in.kernel
    for s, planned_expected in ((3, False), (3, True), (6, True)):
        hidden = randn(5, s, hidden.shape[-1], dtype=dtype, device="cpu")
        direct, full = kernel.compiled.direct, len(stand_in.full_path_calls)
        out = fused_pooler(hidden, weight, bias, backend="triton")
        planned = len(stand_in.full_path_calls) == full and kernel.compiled.direct == direct + 1
        assert planned is planned_expected
        torch.testing.assert_close(out, _expected(hidden, weight, bias), rtol=0, atol=0)
    full = len(stand_in.full_path_calls)
    fused_pooler(hidden, weight, bias, backend="triton", batch_invariant=True)
    assert len(stand_in.full_path_calls) == full + 1


def _mutations(hidden, weight, bias):
    h = hidden.shape[-1]
    flat = randn(hidden.numel() + 8, dtype=hidden.dtype, device="cpu")
    yield "activation", dict(activation="relu")
    yield "no bias", dict(bias=None)
    yield "another bias", dict(bias=bias.clone())
    yield "another batch size", dict(hidden=hidden[:3].clone())
    yield "misaligned rows", dict(hidden=flat[1 : 1 + hidden.numel()].view(hidden.shape))
    yield "row stride no longer divisible by 16", dict(hidden=randn(5, 3, h + 1, dtype=hidden.dtype,
                                                                  device="cpu")[..., :h])  # fmt: skip
    yield "strided columns", dict(hidden=randn(5, 3, 2 * h, dtype=hidden.dtype,
                                              device="cpu")[..., ::2])  # fmt: skip
    yield "another dtype", dict(hidden=hidden.float(), weight=weight.float(), bias=bias.float())


@pytest.mark.parametrize(
    "config",
    [
        TileConfig(16, 32, 64, 4, 3, split_k=4),
        TileConfig(16, 64, 64, 4, 2, split_k=6, swap_ab=True),
        TileConfig(64, 64, 64, 4, 4, persistent=True),
        TileConfig(64, 64, 64, 4, 3, tma=True),
        TileConfig(64, 64, 64, 4, 3, tma=True, warp_specialize=True),
        TileConfig(64, 64, 64, 4, 3, tma=True, persistent=True),
        TileConfig(64, 64, 64, 4, 3, tma=True, stream_k=True),
        TileConfig(64, 32, 64, 4, 3, tma=True, n_parts=3),
        TileConfig(64, 32, 64, 4, 3, tma=True, n_parts=3, x_in_registers=True),
    ],
    ids=(
        "split-k swap-ab persistent tma tma-ws tma-persistent tma-stream-k tma-3-parts "
        "tma-3-parts-xreg"
    ).split(),  # fmt: skip
)
def test_every_launch_shape_runs_planned(stand_in, monkeypatch, config):
    # the table's tile decides the launch's arguments: split-K scratch, the persistent kernel's
    # shorter signature and one-program-per-SM grid, the TMA kernel's descriptors (remade per
    # call around the rows' address and row stride); a plan must hand each the right ones
    monkeypatch.setattr(pooler, "pick_config", lambda m, dtype, bi, arch, width=None: config)
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    kernel = stand_in.kernel
    if config.stream_k:
        kernel = stand_in.stream_k.kernel
    elif config.persistent or config.tma:
        kernel = stand_in.tma.kernel if config.tma else stand_in.persistent.kernel
    _, planned = _run(stand_in, hidden, weight, bias)
    assert not planned and kernel.plain == 1
    for s in (3, 5):
        hidden = randn(5, s, 200, dtype=hidden.dtype, device="cpu")
        before = kernel.compiled.direct
        out = ops.pooler_inference(hidden, weight, bias, "tanh")
        assert kernel.compiled.direct == before + 1 and len(stand_in.full_path_calls) == 1
        torch.testing.assert_close(out, _expected(hidden, weight, bias), rtol=0, atol=0)
    plan = ops._PLANS[id(weight)][1][5]
    tiles = -(-88 // (config.block_n * config.n_parts)) * -(-5 // config.block_m)
    if config.persistent:  # a 1-D grid: a program per SM (the interpreter's few), at most per tile
        assert plan.grid == (min(tiles, pooler.INTERPRETER_PROGRAMS),)
    elif config.stream_k:  # the same, at most a program per K chunk
        chunks = tiles * -(-200 // config.block_k)
        assert plan.grid == (min(chunks, pooler.INTERPRETER_PROGRAMS),)
        assert plan.stream_k_scratch == pooler.stream_k_scratch_sizes(config, plan.grid[0], 5, 88)
    else:
        assert plan.grid[0] * plan.grid[1] == tiles


def test_a_pdl_tile_is_compiled_for_it_launched_with_it_and_planned(stand_in, monkeypatch):
    # TileConfig.pdl: Triton's launch_pdl option on the first (compiling) launch and the kernel's
    # PDL constexpr (its gdc_wait) on every launch; the plan must find that compiled entry, so
    # the second call runs planned. The interpreter turns it off (no gdc_wait there): pretend
    # this is a GPU launch path.
    monkeypatch.setattr(pooler, "_INTERPRETED", False)
    config = TileConfig(16, 32, 64, 4, 3, pdl=True)
    monkeypatch.setattr(pooler, "pick_config", lambda m, dtype, bi, arch, width=None: config)
    hidden, weight, bias = _inputs()
    kernel = stand_in.kernel
    _, planned = _run(stand_in, hidden, weight, bias)
    assert not planned and kernel.plain == 1
    assert kernel.options == {"launch_pdl": True, **COMPILE_OPTIONS}  # PDL
    assert kernel.last_constexpr is True
    _, planned = _run(stand_in, randn(*hidden.shape, dtype=hidden.dtype, device="cpu"), weight,
                      bias)  # fmt: skip
    assert planned and kernel.compiled.last_constexpr is True
    monkeypatch.setattr(pooler, "_INTERPRETED", True)
    monkeypatch.setattr(ops, "_PLANS", {})
    _run(stand_in, hidden, weight, bias)
    assert kernel.plain == 2 and kernel.options == COMPILE_OPTIONS
    assert kernel.last_constexpr is False


def test_a_tma_plan_refuses_rows_a_descriptor_cannot_hold(stand_in, monkeypatch):
    # planned with a row stride of 600 elements (not divisible by 16: Triton's specialization
    # would allow 612 too), but a descriptor's strides are multiples of 16 bytes: 612 * 2 is not
    monkeypatch.setattr(pooler, "pick_config", lambda m, dtype, bi, arch, width=None: TileConfig(
        64, 64, 64, 4, 3, tma=True))  # fmt: skip
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    _run(stand_in, hidden, weight, bias)
    odd = randn(5, 3, 204, dtype=hidden.dtype, device="cpu")[..., :200]
    assert ops._PLANS[id(weight)][1][5].run(odd, weight, bias) is None
    tma_launches = stand_in.tma.kernel.compiled.direct + stand_in.tma.kernel.plain
    _, planned = _run(stand_in, odd, weight, bias)  # the full path: the same tile, by pointers
    assert not planned
    assert stand_in.tma.kernel.compiled.direct + stand_in.tma.kernel.plain == tma_launches


class PyCUtensorMap:
    """Stands in for the encoded map Triton's launcher makes (the type name is what counts)."""

    def __init__(self, desc):
        self.base, self.block_shape = desc.base, list(desc.block_shape)


class TritonShapedLauncher:
    """A compiled kernel's launcher laid out as Triton's (``CudaLauncher``): ``launch`` is an
    expanding wrapper whose free variable ``launcher`` is the raw launcher; the wrapper turns each
    descriptor into (map, sizes, strides), counted in ``encodes``. ``nested``: triton 3.9's form
    (the kernel's arguments as one list, last), else 3.6's (flat, after 13 base arguments). The
    raw launcher rebuilds the descriptors from what it is handed and computes the pooler."""

    global_scratch_size = profile_scratch_size = 0

    def __init__(self, nested: bool):
        self.nested, self.encodes, self.raw_calls, self.streams = nested, 0, 0, []
        self.direct_calls = 0  # raw launches not made by the wrapper (kept or recorded maps)
        self.fail = self.through_triton = False
        self.launch = self._wrap(self._raw)

    def _encode(self, a):
        if not isinstance(a, TensorDescriptor):
            return [a]
        self.encodes += 1
        return [PyCUtensorMap(a), *a.shape, *a.strides]

    def _wrap(self, launcher):
        encode = self._encode
        if self.nested:

            def inner(*args):
                return launcher(*args[:-1], [v for a in args[-1] for v in encode(a)])

        else:

            def inner(*args):
                return launcher(*args[:13], *[v for a in args[13:] for v in encode(a)])

        return inner

    def __call__(self, gx, gy, gz, stream, function, *args):
        self.through_triton = True
        try:
            if self.nested:
                meta, rest = args[:4], args[4:]
                self.launch(gx, gy, gz, stream, function, False, False, *meta, None, None,
                            "annotations", "signature", rest)  # fmt: skip
            else:
                self.launch(gx, gy, gz, stream, function, False, False, None, None, *args)
        finally:
            self.through_triton = False

    def _raw(self, *final):
        if self.fail and not self.through_triton:  # fail: the raw launcher refuses direct calls
            raise TypeError("object must be of type PyCUtensorMap")
        self.raw_calls += 1
        self.direct_calls += not self.through_triton
        self.streams.append(final[3])
        args = list(final[-1] if self.nested else final[13:])
        rebuilt = []
        while args:
            a = args.pop(0)
            if isinstance(a, PyCUtensorMap):  # (map, 2 sizes, 2 strides) back into a descriptor
                shape, strides = args[:2], args[2:4]
                del args[:4]
                a = TensorDescriptor(a.base, shape, strides, a.block_shape)
            rebuilt.append(a)
        _compute(tuple(rebuilt))


class TritonShapedCompiled:
    function = 0xF00
    packed_metadata = ("packed",)

    def __init__(self, nested: bool):
        self.run = TritonShapedLauncher(nested)


@pytest.fixture(
    params=[(False, False), (True, False), (False, True)],
    ids=["flat-launcher", "nested-launcher", "stream-k"],
)
def tma_stand_in(stand_in, monkeypatch, request):
    """The stand-in pooler launchers, with a TMA kernel's launcher shaped as Triton's and the
    table choosing a TMA tile: the plain one, or the stream-K one (whose scratch follows the
    output), which ``stand_in.tma`` then names."""
    nested, stream_k = request.param
    config = TileConfig(64, 64, 64, 4, 3, tma=True, stream_k=stream_k)
    monkeypatch.setattr(pooler, "pick_config", lambda m, dtype, bi, arch, width=None: config)
    monkeypatch.setattr(descriptor_launch, "_failed", False)
    if stream_k:
        stand_in.tma = stand_in.stream_k
    stand_in.tma.kernel.compiled = TritonShapedCompiled(nested)
    return stand_in


def _call(stand_in, hidden, weight, bias):
    out = ops.pooler_inference(hidden, weight, bias, "tanh")
    torch.testing.assert_close(out, _expected(hidden, weight, bias), rtol=0, atol=0)


def _launched(stand_in, rows, weight, bias) -> str:
    """Call the pooler on rows; say how its TMA launch went: "full" (the full path), "triton"
    (Triton's wrapper encoded the descriptors and launched), "recorded" (encoded through the
    wrapper, launched directly), "kept" (nothing encoded: kept maps launched directly)."""
    launcher = stand_in.tma.kernel.compiled.run
    before = (
        stand_in.tma.kernel.plain,
        launcher.encodes,
        launcher.raw_calls,
        launcher.direct_calls,
    )
    _call(stand_in, rows, weight, bias)
    plain, encodes, raw, direct = (
        after - b
        for after, b in zip(
            (
                stand_in.tma.kernel.plain,
                launcher.encodes,
                launcher.raw_calls,
                launcher.direct_calls,
            ),
            before,
        )
    )
    kinds = {(1, 0, 0, 0): "full", (0, 2, 1, 0): "triton", (0, 2, 1, 1): "recorded",
             (0, 0, 1, 1): "kept"}  # fmt: skip
    return kinds.get((plain, encodes, raw, direct), f"unexpected {(plain, encodes, raw, direct)}")


def test_tma_plans_reuse_encoded_descriptors(tma_stand_in):
    launcher = tma_stand_in.tma.kernel.compiled.run
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)

    def calls(*rows):
        return [_launched(tma_stand_in, r, weight, bias) for r in rows]

    # the plan is made on the full path and counts its rows as seen: the next call records
    assert calls(hidden, hidden, hidden) == ["full", "recorded", "kept"]
    assert ops._PLANS[id(weight)][1][5].encoded is not None
    tma_stand_in.tma.current_stream = lambda device: 11  # another current stream is passed on
    assert calls(hidden) == ["kept"] and launcher.streams[-3:] == [7, 7, 11]
    # rows at a new address, or with a new row stride (same plan): Triton's launch when seen
    # first, so rows that are new on every call never pay for recording; recorded when seen again
    fresh = randn(*hidden.shape, dtype=hidden.dtype, device="cpu")
    longer = randn(5, 5, 200, dtype=hidden.dtype, device="cpu")
    assert calls(fresh, fresh, longer, longer) == ["triton", "recorded", "triton", "recorded"]
    # a model loop's alternating buffers: all kept
    assert calls(hidden, fresh, longer, hidden) == ["kept"] * 4
    # two more kept addresses: four are kept, the first kept (hidden) is dropped
    more = [randn(5, 3, 200, dtype=hidden.dtype, device="cpu") for _ in range(2)]
    assert calls(more[0], more[0], more[1], more[1]) == ["triton", "recorded"] * 2
    assert calls(fresh, longer, *more) == ["kept"] * 4
    # hidden was dropped from the kept maps, and from the rows seen once long ago
    assert calls(hidden, hidden, hidden) == ["triton", "recorded", "kept"]
    # new rows on every call: Triton's launch each time, never recorded, nothing kept for them
    assert (
        calls(*[randn(5, 3, 200, dtype=hidden.dtype, device="cpu") for _ in range(5)])
        == ["triton"] * 5
    )
    assert len(tma_stand_in.full_path_calls) == 1


def test_kept_maps_follow_the_planned_weight(tma_stand_in):
    # the weight's map is reused only while the plan's weight checks pass; another weight tensor
    # (another address) takes the full path and gets its own plan and maps
    launcher = tma_stand_in.tma.kernel.compiled.run
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    for _ in range(3):
        _call(tma_stand_in, hidden, weight, bias)
    other = randn(*weight.shape, dtype=weight.dtype, device="cpu", scale=200**-0.5)
    for _ in range(3):
        _call(tma_stand_in, hidden, other, bias)
    # first weight: the full path (the stand-in's compile), a planned call that encodes both,
    # one that encodes nothing; the other: the full path (the launch cache's direct launch
    # encodes both), then the same two
    assert len(tma_stand_in.full_path_calls) == 2 and launcher.encodes == 6
    weight.data = other.data.clone()  # the same tensor object, new storage: full path again
    _call(tma_stand_in, hidden, weight, bias)
    assert len(tma_stand_in.full_path_calls) == 3


def test_a_failing_encoded_launch_falls_back_for_good(tma_stand_in):
    launcher = tma_stand_in.tma.kernel.compiled.run
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    _call(tma_stand_in, hidden, weight, bias)
    _call(tma_stand_in, hidden, weight, bias)
    launcher.fail = True
    with pytest.warns(RuntimeWarning, match="encoded tensor descriptors failed"):
        _call(tma_stand_in, hidden, weight, bias)  # nothing launched: the full path ran it
    assert len(tma_stand_in.full_path_calls) == 2
    assert descriptor_launch._failed
    ops._PLANS.clear()
    _call(tma_stand_in, hidden, weight, bias)
    assert ops._PLANS[id(weight)][1][5].encoded is None  # new plans keep the descriptor path


def test_a_recording_unlike_triton_s_is_not_reused(tma_stand_in, monkeypatch):
    # a wrapper that passes descriptors on unencoded (as Triton does for a kernel compiled
    # without TMA metadata): each planned call launches what Triton's wrapper made, keeps nothing
    launcher = tma_stand_in.tma.kernel.compiled.run
    monkeypatch.setattr(launcher, "_encode", lambda a: [a])
    launcher.launch = launcher._wrap(launcher._raw)
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    for _ in range(3):
        _call(tma_stand_in, hidden, weight, bias)
    assert launcher.raw_calls == 2 and ops._PLANS[id(weight)][1][5].kept_maps == ()


def test_the_installed_triton_s_own_wrapper_is_recorded_and_replayed(monkeypatch):
    # the installed Triton's expanding wrapper (its code, closure and argument handling), with
    # only the encoding itself replaced (it needs a GPU driver): recording must find each
    # descriptor's expansion, and a replay must hand the raw launcher what Triton's wrapper did
    nvidia = pytest.importorskip("triton.backends.nvidia.driver")
    monkeypatch.setattr(nvidia, "make_tensordesc_arg", lambda arg, meta, *_: [
        PyCUtensorMap(arg), *arg.shape, *arg.strides])  # fmt: skip
    signature = {"x_desc": "tensordesc<fp16[64, 64]>", "w_desc": "tensordesc<fp16[64, 64]>",
                 "b_ptr": "*fp16", "M": "i32", "ACT": "constexpr"}  # fmt: skip
    meta = [{"swizzle": 3, "elem_size": 2, "elem_type": 6, "block_size": [64, 64],
             "fp4_padded": False}] * 2  # fmt: skip
    raw_calls = []
    launcher = TritonShapedLauncher(nested=_triton_launcher_is_nested())
    launcher.launch = nvidia.wrap_handle_tensordesc(lambda *a: raw_calls.append(a), signature, meta)
    cache = _computing_cache(_stand_in_tma)
    compiled = TritonShapedCompiled(launcher.nested)
    compiled.run = launcher
    entry = (launcher, compiled.function, compiled.packed_metadata, compiled)
    encoded = descriptor_launch.EncodedDescriptorLaunch.of(cache, entry, 2)
    assert encoded is not None
    x = randn(100, 64, dtype=torch.float16, device="cpu")
    w = randn(80, 64, dtype=torch.float16, device="cpu")
    b = w[0]
    args = (TensorDescriptor(x, [100, 64], [64, 1], [64, 64]),
            TensorDescriptor(w, [80, 64], [64, 1], [64, 64]), b, 100)  # fmt: skip
    recorded = encoded.record(-1, (2, 2, 1), args, ("tanh",))
    assert len(recorded) == 10  # (map, 2 sizes, 2 strides) per descriptor
    assert recorded[0].base is x and list(recorded[1:5]) == [100, 64, 64, 1]
    assert recorded[5].base is w and list(recorded[6:]) == [80, 64, 64, 1]
    assert encoded.launch(-1, (2, 2, 1), recorded, (b, 100, "tanh"))
    assert len(raw_calls) == 2 and _same(raw_calls[0], raw_calls[1])


def _triton_launcher_is_nested() -> bool:
    from triton.backends.nvidia.driver import CudaLauncher

    return "kernel_metadata" in inspect.signature(CudaLauncher.__call__).parameters


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a is b or (not isinstance(a, torch.Tensor) and a == b)


def test_hooks_keep_encoded_launches_to_triton(tma_stand_in, monkeypatch):
    hidden, weight, bias = _inputs(b=5, s=3, h=200, n=88)
    for _ in range(3):
        _call(tma_stand_in, hidden, weight, bias)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *a: None)
    plain = tma_stand_in.tma.kernel.plain
    _call(tma_stand_in, hidden, weight, bias)
    assert tma_stand_in.tma.kernel.plain == plain + 1


@pytest.mark.parametrize("what", [name for name, _ in _mutations(*_inputs())])
def test_a_call_unlike_the_planned_one_takes_the_full_path(stand_in, what):
    hidden, weight, bias = _inputs()
    _run(stand_in, hidden, weight, bias)
    _run(stand_in, hidden, weight, bias)
    call = dict(hidden=hidden, weight=weight, bias=bias, activation="tanh")
    call.update(dict(_mutations(hidden, weight, bias))[what])
    _, planned = _run(stand_in, **call)
    assert not planned, what


def test_a_weight_changed_under_the_same_tensor_takes_the_full_path(stand_in):
    hidden, weight, bias = _inputs()
    _run(stand_in, hidden, weight, bias)
    weight.data = weight.data.clone() * 2  # same Parameter-like object, new storage and values
    _, planned = _run(stand_in, hidden, weight, bias)
    assert not planned
    weight.data = weight.data.t().contiguous().t()  # same values, transposed strides
    _, planned = _run(stand_in, hidden, weight, bias)
    assert not planned
    _, planned = _run(stand_in, hidden, weight, bias)  # and the new layout gets its own plan
    assert planned


def test_grad_autocast_and_hooks_take_the_full_path(stand_in, monkeypatch):
    hidden, weight, bias = _inputs(dtype=torch.float32)
    _run(stand_in, hidden, weight, bias)
    weight.requires_grad_(True)
    out, planned = _run(stand_in, hidden, weight, bias)
    assert out.requires_grad and not planned  # the custom op, for autograd
    with torch.no_grad():
        _, planned = _run(stand_in, hidden, weight, bias)
        assert planned  # gradients off: the plan again
        full = len(stand_in.full_path_calls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ops.pooler_inference(hidden, weight, bias, "tanh")
        # autocast cast the inputs, as eager nn.Linear would: not the planned fp32 call
        assert out.dtype == torch.bfloat16 and len(stand_in.full_path_calls) == full + 1
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *a: None)
        plain = stand_in.kernel.plain
        _, planned = _run(stand_in, hidden, weight, bias)
        assert not planned and stand_in.kernel.plain == plain + 1  # Triton's launch, for the hook


def test_another_current_device_takes_the_full_path(stand_in):
    hidden, weight, bias = _inputs()
    _run(stand_in, hidden, weight, bias)
    stand_in.device = 3  # as if another CUDA device were current
    assert ops._PLANS[id(weight)][1][5].run(hidden, weight, bias) is None


def test_plans_never_keep_a_weight_alive(stand_in):
    hidden, weight, bias = _inputs()
    _run(stand_in, hidden, weight, bias)
    _run(stand_in, hidden[:2], weight, bias)
    assert list(ops._PLANS[id(weight)][1]) == [5, 2]
    del weight
    gc.collect()
    assert ops._PLANS == {}


def test_plans_per_weight_are_bounded(stand_in, monkeypatch):
    monkeypatch.setattr(ops, "_PLANS_PER_WEIGHT", 3)
    hidden, weight, bias = _inputs(b=6)
    for m in (1, 2, 3, 4, 5):
        _run(stand_in, hidden[:m], weight, bias)
    assert list(ops._PLANS[id(weight)][1]) == [3, 4, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="real launches need a CUDA GPU")
# float32 on a GPU is left to cuBLAS by the inference path (validation.GEMM_AUTO_GPU_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_planned_launches_are_bitwise_the_plain_path(dtype):
    # the table's tiles at M = 1, 64, 3000 (a TMA tile on sm_90 fp16/bf16); sequence lengths that
    # change the row stride; each output, and the next two calls' on the same rows, against
    # pooler_fwd with the launch caches off (Triton's own launch)
    ops._PLANS.clear()
    h = 768
    weight = randn(h, h, dtype=dtype, scale=h**-0.5)
    bias = randn(h, dtype=dtype, scale=0.5)
    for m in (1, 64, 3000):
        for s in (4, 9, 4):
            hidden = randn(m, s, h, dtype=dtype)
            # the same rows three times: a TMA plan's Triton launch (or the full path), its
            # recording of the encoded descriptors, then the kept ones
            outs = [ops.pooler_inference(hidden, weight, bias, "tanh") for _ in range(3)]
            launchers = (pooler.launch_pooler_fwd, pooler.launch_pooler_fwd_persistent,
                         pooler.launch_pooler_fwd_tma, pooler.launch_pooler_fwd_stream_k)  # fmt: skip
            for launcher in launchers:
                launcher.enabled = False
            try:
                plain = pooler.pooler_fwd(hidden, weight, bias, "tanh")
            finally:
                for launcher in launchers:
                    launcher.enabled = True
            for out in outs:
                torch.testing.assert_close(out, plain, rtol=0, atol=0)
        plan = ops._PLANS[id(weight)][1].get(m)
        assert plan is not None, "the plan was never made"
        if plan.tma_blocks is not None:  # triton 3.6 and 3.9 launchers are of a known shape
            assert plan.encoded is not None and plan.kept_maps, "maps were never kept"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="real launches need a CUDA GPU")
def test_a_float32_plan_of_backend_triton_is_not_taken_by_auto(monkeypatch):
    # plans are per weight: after backend="triton" planned a float32 call, "auto" must still
    # leave float32 on a GPU to cuBLAS (bitwise the torch backend, no planned launch)
    ops._PLANS.clear()
    h = 768
    hidden = randn(19, 4, h, dtype=torch.float32)
    weight = randn(h, h, dtype=torch.float32, scale=h**-0.5)
    bias = randn(h, dtype=torch.float32, scale=0.5)
    with torch.inference_mode():
        kernel = [fused_pooler(hidden, weight, bias, backend="triton") for _ in range(3)]
        assert ops._PLANS[id(weight)][1].get(19) is not None, "the plan was never made"
        runs = []
        real_run = pooler_plan.PoolerPlan.run
        monkeypatch.setattr(pooler_plan.PoolerPlan, "run",
                            lambda plan, *a: runs.append(1) or real_run(plan, *a))  # fmt: skip
        auto = fused_pooler(hidden, weight, bias)
        torch_path = fused_pooler(hidden, weight, bias, backend="torch")
        again = fused_pooler(hidden, weight, bias, backend="triton")
    assert runs == [1], "auto ran the float32 plan, or backend='triton' did not"
    torch.testing.assert_close(auto, torch_path, rtol=0, atol=0)
    for out in (*kernel[1:], again):  # planned launches: bitwise the first, full-path one
        torch.testing.assert_close(out, kernel[0], rtol=0, atol=0)
