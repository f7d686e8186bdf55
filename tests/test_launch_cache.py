"""The launch cache (kernels/launch.py): its key, its fallbacks, and bitwise parity on a GPU.

CPU tests drive ``CachedLaunch`` with a stand-in kernel whose "compiled kernel" records what the
direct launch passes; the key is checked against Triton's own specialization helper.
"""

import itertools
import warnings
from functools import partial

import pytest
import torch
import triton.language as tl
from triton import knobs
from triton.tools.tensor_descriptor import TensorDescriptor

from bertpool_fast.kernels import launch
from bertpool_fast.kernels.launch import COMPILE_OPTIONS, CachedLaunch, _spec


def _stand_in(x_ptr, y_ptr, n, stride, ACT: tl.constexpr, BLOCK: tl.constexpr):
    pass


class FakeCompiled:
    """What ``JITFunction.run`` returns: a launcher (``run``), a function handle, metadata."""

    def __init__(self):
        self.function = 0xF00
        self.packed_metadata = ("packed",)
        self.direct = []

    def run(self, *args):
        self.direct.append(args)


class FakeKernel:
    """``kernel[grid](...)`` that counts plain launches and returns one compiled kernel."""

    pre_run_hooks: list = []

    def __init__(self):
        self.fn = _stand_in
        self.compiled = FakeCompiled()
        self.plain = []

    def __getitem__(self, grid):
        def launch_(*args, num_warps, num_stages, **options):
            self.plain.append((grid, args, num_warps, num_stages, options))
            return self.compiled

        return launch_


@pytest.fixture
def cache():
    c = CachedLaunch(FakeKernel(), enabled=True)
    c.device = 0
    c.current_device = lambda: c.device
    c.current_stream = lambda device: 1000 + device
    return c


def _args(n=768, stride=768, offset=0, dtype=torch.float16):
    x = torch.zeros(64, dtype=dtype)[offset:]
    return (x, torch.zeros(64, dtype=torch.float32), n, stride)


BASE = dict(grid=(24, 2), constexprs=("tanh", 64), num_warps=4, num_stages=3)


def _call(c, args=None, **overrides):
    kw = {**BASE, **overrides}
    return c(kw["grid"], args if args is not None else _args(), kw["constexprs"], kw["num_warps"],
             kw["num_stages"], kw.get("launch_pdl", False))  # fmt: skip


def test_second_call_launches_directly_with_tritons_argument_order(cache):
    args = _args()
    _call(cache, args)
    assert len(cache.kernel.plain) == 1
    _call(cache, args)
    assert len(cache.kernel.plain) == 1, "the second call of a specialization must not reach Triton"
    (direct,) = cache.kernel.compiled.direct
    # the launcher's own signature: grid, stream, function, metadata, launch metadata and both
    # hooks (None: no profiler), then every argument in signature order, constexprs included
    assert direct[:9] == (24, 2, 1, 1000, 0xF00, ("packed",), None, None, None)
    assert direct[9:] == (*args, "tanh", 64)


# Each hazard changes one thing Triton specializes on; every one must miss (reach Triton again).
HAZARDS = {
    "pointer-misaligned": dict(args=_args(offset=1)),
    "pointer-dtype": dict(args=_args(dtype=torch.bfloat16)),
    "int-equal-1": dict(args=_args(n=1)),
    "int-not-16-divisible": dict(args=_args(n=769)),
    "int-i64": dict(args=_args(stride=768 << 32)),
    "int-u64": dict(args=_args(stride=(1 << 63) + 768)),
    "int-became-bool": dict(args=_args(stride=True)),
    "constexpr-value": dict(constexprs=("gelu", 64)),
    "constexpr-type": dict(constexprs=("tanh", 64.0)),
    "num-warps": dict(num_warps=8),
    "num-stages": dict(num_stages=4),
    "launch-pdl": dict(launch_pdl=True),
    "device": dict(device=1),
}


@pytest.mark.parametrize("hazard", HAZARDS, ids=list(HAZARDS))
def test_every_specialization_hazard_misses(cache, hazard):
    _call(cache)
    _call(cache)
    assert len(cache.kernel.plain) == 1
    overrides = dict(HAZARDS[hazard])
    cache.device = overrides.pop("device", 0)
    _call(cache, **overrides)
    assert len(cache.kernel.plain) == 2, f"{hazard} reused a kernel compiled for other arguments"


def test_launch_pdl_reaches_triton_only_when_set(cache):
    # Triton's compile option, so a kernel compiled for programmatic dependent launch carries it
    # in its metadata (the launcher reads it there); a launch without it passes no option at all,
    # so kernels and Triton releases that never heard of it compile as before
    _call(cache)
    _call(cache, launch_pdl=True)
    _call(cache, launch_pdl=True)
    fused = {"enable_fp_fusion": True}  # every launch's (COMPILE_OPTIONS, below)
    assert [p[4] for p in cache.kernel.plain] == [fused, {"launch_pdl": True, **fused}]
    assert len(cache.kernel.compiled.direct) == 1
    disabled = CachedLaunch(cache.kernel, enabled=False)  # the interpreter's path: plain each time
    _call(disabled, launch_pdl=True)
    assert cache.kernel.plain[-1][4] == {"launch_pdl": True, **fused}


def test_every_launch_asks_for_fused_multiply_adds(cache):
    # explicitly, whatever Triton's default: 3.10 announces it turns to no fusion
    assert COMPILE_OPTIONS == {"enable_fp_fusion": True}
    _call(cache)
    _call(CachedLaunch(cache.kernel, enabled=False))
    assert [p[4] for p in cache.kernel.plain] == [COMPILE_OPTIONS, COMPILE_OPTIONS]


def test_grid_is_not_part_of_the_key(cache):
    _call(cache)
    _call(cache, grid=(7,))
    assert len(cache.kernel.plain) == 1
    assert cache.kernel.compiled.direct[0][:3] == (7, 1, 1)


def _triton_spec(a):
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    # is_const=False, specialize=True, align=True: how every parameter of our kernels is declared
    return native_specialize_impl(BaseBackend, a, False, True, True)


def _descriptors():
    """Host-side tensor descriptors differing in everything a descriptor holds: base dtype and
    address, sizes, strides, block shape, padding."""
    out = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        hidden = torch.zeros(8, 3, 128, dtype=dtype)
        for block in ([64, 64], [128, 64], [64, 32], [256, 64], [128]):
            if len(block) == 1:
                out.append(TensorDescriptor(hidden.view(-1), [hidden.numel()], [1], block))
                continue
            for rows, base in ((8, hidden), (5, hidden[3:]), (8, hidden[:, 0, 64:])):
                out.append(TensorDescriptor(base, [rows, 64], [384, 1], block))
            out.append(TensorDescriptor(hidden, [8, 128], [384, 1], block, padding="nan"))
    return out


def _samples():
    ints = [0, 1, 2, 15, 16, 17, 768, -16, -1, 2**31 - 16, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
            -(2**31) - 16, 2**40, 2**40 + 3, 2**63 - 16, 2**63, 2**63 + 16, 2**64 - 1]  # fmt: skip
    tensors = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.uint8, torch.bool):
        base = torch.zeros(64, dtype=dtype)
        tensors += [base[offset:] for offset in (0, 1, 2, 8, 16)]
    return ints + tensors + [True, False, 0.5, 1.0, None] + _descriptors()


def test_key_determines_tritons_specialization():
    # equal keys must mean equal Triton specializations (the key may split finer, never coarser)
    samples = _samples()
    for a, b in itertools.combinations(samples, 2):
        if _spec(a) == _spec(b) and type(a) is type(b):
            assert _triton_spec(a) == _triton_spec(b), (a, b)
    # and the kind of a value is part of the key: 1 and True, 0 and False, 1 and 1.0
    for a, b in ((1, True), (0, False), (1, 1.0), (16, 16.0)):
        assert _spec(a) != _spec(b) or _triton_spec(a) == _triton_spec(b)


def test_descriptor_key_is_tritons_descriptor_type():
    # A descriptor compiles to "tensordesc<fp16[128, 64]>": its base's dtype and its block shape,
    # nothing else. Equal keys <=> equal types: every block shape and dtype gets its own key, and
    # sizes, strides, base address and padding (launch-time values) none.
    descriptors = _descriptors()
    for a, b in itertools.combinations(descriptors, 2):
        assert (_spec(a) == _spec(b)) == (_triton_spec(a) == _triton_spec(b)), (a, b)
    keys = {_spec(d) for d in descriptors}
    assert len(keys) == 3 * 5  # dtypes x block shapes
    assert all(_spec(d) != _spec(t) for d in descriptors for t in _samples()[: -len(descriptors)])


def test_descriptor_is_passed_to_the_launcher_as_it_is(cache):
    # the compiled launcher (wrap_handle_tensordesc) expands descriptors itself, on every launch
    x = torch.zeros(8, 3, 128, dtype=torch.float16)
    args = [(TensorDescriptor(x, [8, 128], [384, 1], [64, 64]), x, 768, 384) for _ in range(2)]
    _call(cache, args[0])
    _call(cache, args[1])  # another descriptor of the same type: a hit
    assert len(cache.kernel.plain) == 1
    (direct,) = cache.kernel.compiled.direct
    assert direct[9] is args[1][0] and direct[10] is x
    other = (TensorDescriptor(x, [8, 128], [384, 1], [128, 64]), x, 768, 384)
    _call(cache, other)  # another block shape: compiled apart
    assert len(cache.kernel.plain) == 2


def test_generated_key_agrees_with_spec():
    # the per-kernel key inlines _spec's common cases; it must give the very same values
    key = launch._make_key(1, 2)
    for a in _samples():
        expected = (0, 4, 3, False, ("tanh", 64), str, int, _spec(a))
        assert key(0, 4, 3, False, ("tanh", 64), (a,)) == expected, a


GLOBAL_EPS = 1e-6


def test_changed_kernel_global_takes_the_plain_path(cache, monkeypatch):
    # Triton raises when a global the kernel read at compile time has changed; the cache must not
    # quietly launch the kernel compiled with the old value
    cache.kernel.used_global_vals = {("GLOBAL_EPS", id(globals())): (GLOBAL_EPS, globals())}
    _call(cache)
    _call(cache)
    assert len(cache.kernel.plain) == 1
    monkeypatch.setitem(globals(), "GLOBAL_EPS", 1e-3)
    _call(cache)
    assert len(cache.kernel.plain) == 2


def test_the_compiled_kernel_is_kept_alive(cache):
    # its module is unloaded when it is collected: the entry must hold it, not only its handles
    _call(cache)
    (entry,) = cache.entries.values()
    assert cache.kernel.compiled in entry


def test_unsupported_argument_kind_takes_the_plain_path(cache):
    args = (*_args()[:3], (1, 2))  # a tuple argument: not a kind the key knows
    _call(cache, args)
    _call(cache, args)
    assert len(cache.kernel.plain) == 2
    assert cache.kernel.compiled.direct == []


def test_raising_launcher_disables_the_cache_and_falls_back(cache):
    _call(cache)

    def broken(*args):
        raise RuntimeError("launcher signature changed")

    cache.kernel.compiled.run = broken
    cache.entries.clear()
    _call(cache)  # a miss: caches `broken`
    with pytest.warns(RuntimeWarning, match="direct launch of _stand_in failed"):
        _call(cache)  # the user's call still completes, through Triton
    assert len(cache.kernel.plain) == 3
    assert not cache.enabled and not cache.entries
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _call(cache)  # disabled for good, silently
    assert len(cache.kernel.plain) == 4


def test_launch_hooks_leave_the_launch_to_triton(cache):
    _call(cache)

    def hook(metadata):
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        _call(cache)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(cache.kernel.plain) == 2
    _call(cache)
    assert len(cache.kernel.plain) == 2


def test_compiled_kernel_without_handles_is_not_cached(cache):
    cache.kernel.compiled = object()  # e.g. a future Triton returning something else
    _call(cache)
    _call(cache)
    assert len(cache.kernel.plain) == 2 and not cache.entries


def test_cdiv_matches_tritons():
    import triton

    for a in (0, 1, 15, 16, 17, 768, 8193):
        for b in (1, 16, 64, 128):
            assert launch.cdiv(a, b) == triton.cdiv(a, b)


def test_constexprs_must_come_last():
    def bad(x_ptr, BLOCK: tl.constexpr, n):
        pass

    kernel = FakeKernel()
    kernel.fn = bad
    with pytest.raises(ValueError, match="constexpr parameters must come after"):
        CachedLaunch(kernel)


def test_installed_triton_launcher_protocol_is_known():
    # a triton upgrade that changes JITFunction.run / the CUDA launcher turns the cache off;
    # this test makes that visible instead of silently slower
    assert launch._launcher_protocol_ok()


def test_every_launcher_goes_through_a_cache():
    from bertpool_fast.kernels import classifier_head, masked_pool, pooler, pooler_bwd

    caches = [pooler.launch_pooler_fwd, pooler.launch_pooler_fwd_persistent,
              pooler.launch_pooler_fwd_tma, pooler.launch_pooler_fwd_stream_k,
              classifier_head._launch_head_fwd,
              classifier_head._launch_head_split, classifier_head._launch_head_reduce,
              masked_pool._launch_masked_pool, masked_pool._launch_l2_normalize_kernel,
              pooler_bwd._launch_dx, pooler_bwd._launch_dw]  # fmt: skip
    kernels = {c.kernel.fn.__name__ for c in caches}
    assert kernels == {"pooler_fwd_kernel", "pooler_fwd_persistent_kernel",
                       "pooler_fwd_tma_kernel", "pooler_fwd_stream_k_kernel",
                       "classifier_head_fwd_kernel",
                       "classifier_head_split_kernel", "classifier_head_reduce_kernel",
                       "masked_pool_fwd_kernel", "l2_normalize_kernel",
                       "pooler_bwd_dx_kernel", "pooler_bwd_dw_kernel"}  # fmt: skip
    if launch.interpreter_enabled():
        assert not any(c.enabled for c in caches), "the interpreter must take the plain path"


# ---- GPU: the cached path gives the very bits kernel[grid](...) gives ----------------------------


def _devices():
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def _both_paths(cache, fn):
    """fn() through the cache (miss, then hit), then through Triton alone; all three outputs."""
    cache.entries.clear()
    first = fn()
    hits_before = len(cache.entries)
    second = fn()
    assert len(cache.entries) == hits_before >= 1, "the second call must hit the cache"
    cache.enabled = False
    try:
        plain = fn()
    finally:
        cache.enabled = True
    return first, second, plain


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launches need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("batch", [1, 17, 512])
@pytest.mark.parametrize("layout", ["contiguous", "offset-view", "strided-weight"])
def test_cached_pooler_is_bitwise_tritons(dtype, batch, layout):
    from bertpool_fast.kernels import pooler

    assert pooler.launch_pooler_fwd.enabled, "the cache is off on this GPU: protocol check failed"
    for device in _devices():
        g = torch.Generator(device=device).manual_seed(batch)
        h = 768
        hidden = torch.randn(batch * 8 * h + 3, device=device, dtype=dtype, generator=g)
        weight = torch.randn(h, h, device=device, dtype=dtype, generator=g) / h**0.5
        bias = torch.randn(h, device=device, dtype=dtype, generator=g)
        if layout == "offset-view":
            # data_ptr() % 16 != 0: the kernel compiled for aligned rows must not be reused
            x = hidden[1 : 1 + batch * 8 * h].view(batch, 8, h)
        else:
            x = hidden[: batch * 8 * h].view(batch, 8, h)
        if layout == "strided-weight":
            weight = torch.randn(h, 2 * h, device=device, dtype=dtype, generator=g)[:, ::2]
        # the cache of the launcher this call takes: the table's tile may be a TMA one, whose
        # launches have their own cache (a layout no descriptor can describe takes pointers)
        config = pooler.pick_config(batch, dtype, False, pooler.device_arch(device))
        out = torch.empty(batch, h, device=device, dtype=dtype)
        cache = pooler.launch_args(x, weight, bias, "tanh", out, config, device)[0]
        first, second, plain = _both_paths(
            cache, partial(pooler.pooler_fwd, x, weight, bias, "tanh")
        )
        torch.testing.assert_close(first, plain, rtol=0, atol=0)
        torch.testing.assert_close(second, plain, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launches need a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 300])
def test_cached_head_and_pool_are_bitwise_tritons(batch):
    from bertpool_fast.kernels import classifier_head, masked_pool

    for device in _devices():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, 16, 768, device=device, dtype=torch.float16, generator=g)
        w1 = torch.randn(768, 768, device=device, dtype=torch.float16, generator=g) / 28
        w2 = torch.randn(3, 768, device=device, dtype=torch.float16, generator=g) / 28
        mask = torch.rand(batch, 16, device=device, generator=g) > 0.3
        split = batch <= classifier_head.SPLIT_MAX_M
        head = classifier_head._launch_head_split if split else classifier_head._launch_head_fwd
        runs = [
            (head, partial(classifier_head.classifier_head_fwd, x, w1, None, w2, None, "tanh")),
            (masked_pool._launch_masked_pool, partial(masked_pool.masked_pool_fwd, x, mask, "mean", False)),
            (masked_pool._launch_l2_normalize_kernel, partial(masked_pool.l2_normalize_fwd, x[:, 0, 1:])),
        ]  # fmt: skip
        for cache, fn in runs:
            first, second, plain = _both_paths(cache, fn)
            torch.testing.assert_close(first, plain, rtol=0, atol=0)
            torch.testing.assert_close(second, plain, rtol=0, atol=0)
