"""Every shipped tile of the forward pooler, run against a float64 reference over the K, N and M
shapes that exercise its pipeline: 1, 2, 3, num_stages and num_stages + 1 K iterations, with and
without a K tail, plus K = 768; N and M with and without tails; bias on and off; each activation.

On a GPU (``@pytest.mark.gpu``) the whole sweep runs; the interpreter cannot show a compiler's
mistake, so under it (CPU CI) only a subset runs, to keep the test logic itself exercised. The
configurations come from the kernel module's own tables (``inspection_cases()``), never a copy.

The first test is the focused regression of the fp32 wrong result seen on an H100 with Triton 3.6
(B = 17, K = 72, N = 40, hidden_states [17, 2, 72]): the retired 4-stage tile is run beside the
shipped one over K = 40..160; see NOTES.md, "fp32 wrong result".
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from bertpool_fast.kernels import (
    classifier_head,
    masked_pool,
    pooler,
    pooler_bwd,
    pooler_candidates,
)
from bertpool_fast.kernels.activations import ACTIVATIONS
from bertpool_fast.kernels.runtime import triton_version
from bertpool_fast.kernels.tiles import TileConfig
from conftest import HAS_CUDA, KERNEL_DEVICE, assert_close_rel, gemm_error_bound, poisoned, randn

DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def shipped_pooler_configs() -> list[tuple[torch.dtype, TileConfig, str]]:
    """(dtype, config, name) of every forward configuration shipped (every architecture's table
    and the batch-invariant one), from the module itself. Tuning candidates are not shipped:
    python -m bench.tune checks each on the GPU before it can enter a table."""
    seen, out = set(), []
    for case in pooler_candidates.inspection_cases():
        if case.tags.get("table") == "candidate":
            continue
        cfg = case.tags["config"]  # the TileConfig itself (split-K, swap-AB, persistent kept)
        for dtype in (
            (torch.float16, torch.bfloat16) if case.dtype != torch.float32 else (torch.float32,)
        ):
            if (dtype, cfg) not in seen:
                seen.add((dtype, cfg))
                out.append((dtype, cfg, f"{DTYPE_IDS[dtype]}-{'x'.join(map(str, cfg[:5]))}"
                            + (f"-k{cfg.split_k}" if cfg.split_k > 1 else "")
                            + ("-swap" if cfg.swap_ab else "")
                            + ("-persistent" if cfg.persistent else "")))  # fmt: skip
    return out


def k_values(cfg: TileConfig) -> list[int]:
    """K for 1, 2, 3, num_stages and num_stages + 1 iterations, each full and with a tail, + 768."""
    iters = sorted({1, 2, 3, cfg.num_stages, cfg.num_stages + 1})
    ks = {768}
    for i in iters:
        ks.add(i * cfg.block_k)  # no tail
        ks.add((i - 1) * cfg.block_k + 8)  # tail of 8 (K % 16 == 8: the 3.6 miscompile's shape)
    return sorted(ks)


def run_case(dtype, cfg, m, n, k, seq, bias_on, activation):
    hidden = randn(m, seq, k, dtype=dtype)
    weight = randn(n, k, dtype=dtype, scale=k**-0.5)
    bias = randn(n, dtype=dtype, scale=0.5) if bias_on else None
    out = poisoned((m, n), dtype, hidden.device)
    pooler.pooler_fwd(hidden, weight, bias, activation, out=out, config=cfg)
    x = hidden[:, 0]
    from bertpool_fast.reference import pooler_reference

    ref = pooler_reference(
        x.double(), weight.double(), None if bias is None else bias.double(), activation
    )
    assert_close_rel(out, ref, dtype, bound=gemm_error_bound(x, weight, bias, activation))


# --- the focused regression: old (4-stage) vs shipped fp32 M <= 64 tile -----------------------

RETIRED_FP32_TILE = TileConfig(32, 64, 32, 4, 4)


def _fp32_mid_tile() -> TileConfig:
    return pooler.pick_config(17, torch.float32)


# The miscompile needs the K loop as it was when the H100 hit it: K offsets from a constant 0.
# pooler_fwd_kernel now starts its K loop at k_lo = program_id(2) * k_run (split-K), even with
# SPLIT_K = 1, and Triton 3.6 compiles the retired tile clean there (no packed shift), so through
# pooler_fwd the retired tile passes. This kernel is the pre-split-K pooler: the same pooled_tile
# K loop (shared with the classifier head and the persistent kernel) and epilogue, nothing else.
@triton.jit(do_not_specialize=["M"])
def _k_from_zero_pooler_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, stride_b,
    stride_om, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    o_m = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N
    acc = pooler.pooled_tile(x_ptr, w_ptr, b_ptr, o_m, o_n, m_m, m_n, K, stride_xm, stride_xk,
                             stride_wn, stride_wk, stride_b, HAS_BIAS, ACTIVATION, DOT_PRECISION,
                             False, BLOCK_M, BLOCK_N, BLOCK_K)  # fmt: skip
    pooler.store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, False)


def run_k_from_zero_case(cfg, m, n, k, seq):
    """run_case's fp32 tanh case (bias on) through _k_from_zero_pooler_kernel."""
    from bertpool_fast.reference import pooler_reference

    hidden = randn(m, seq, k)
    weight, bias = randn(n, k, scale=k**-0.5), randn(n, scale=0.5)
    out = poisoned((m, n), torch.float32, hidden.device)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    _k_from_zero_pooler_kernel[grid](
        hidden, weight, bias, out, m, n, k, hidden.stride(0), hidden.stride(2), weight.stride(0),
        weight.stride(1), bias.stride(0), out.stride(0), HAS_BIAS=True, ACTIVATION="tanh",
        DOT_PRECISION=pooler.fp32_dot_precision(), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    x = hidden[:, 0]
    ref = pooler_reference(x.double(), weight.double(), bias.double(), "tanh")
    assert_close_rel(out, ref, torch.float32, bound=gemm_error_bound(x, weight, bias, "tanh"))


# Triton releases whose bundled LLVM packs the K offsets into the overflowing shift (3.6, the
# GPU machines'; 3.9 compiles the same kernels clean; 3.7 and 3.8 are taken as 3.9).
MISCOMPILES_FP32_K_OFFSETS = triton_version() < (3, 7)


def _retired_fp32_case(k: int):
    # strict: the retired tile must fail exactly where its build carries the pattern (compiled
    # here for sm_90: K % 16 == 8) and pass elsewhere, or the test's account of the bug is wrong
    fails = MISCOMPILES_FP32_K_OFFSETS and k % 16 == 8
    marks = pytest.mark.xfail(reason="Triton 3.6 miscompiles this tile in a K loop from 0 when "
                              "K % 16 == 8", strict=True) if fails else ()  # fmt: skip
    return pytest.param("retired", k, marks=marks, id=f"retired-{k}")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "which,k",
    [_retired_fp32_case(k) for k in range(40, 161, 8)]
    + [pytest.param("shipped", k, id=f"shipped-{k}") for k in range(40, 161, 8)],
)
def test_fp32_mid_tile_regression(which, k):
    # S = 2 makes the row stride 2K: a multiple of 16 whenever K is a multiple of 8, the
    # specialization that produced the miscompiled binary.
    if which == "retired":
        run_k_from_zero_case(RETIRED_FP32_TILE, 17, 40, k, 2)
    else:
        run_k_from_zero_case(_fp32_mid_tile(), 17, 40, k, 2)
        run_case(torch.float32, _fp32_mid_tile(), 17, 40, k, 2, True, "tanh")


def test_shipped_mid_tile_is_not_the_retired_one():
    assert _fp32_mid_tile() != RETIRED_FP32_TILE


# The classifier head's fp32 split rows as shipped before, compiled with the same fault under 3.6.
RETIRED_HEAD_TILES = (
    classifier_head.HeadConfig(16, 64, 32, 4, 4, True),
    classifier_head.HeadConfig(32, 64, 32, 8, 4, True),
)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [72, 200, 768 + 8])
@pytest.mark.parametrize("tile", range(len(RETIRED_HEAD_TILES)))
@pytest.mark.parametrize(
    "which",
    [
        pytest.param(
            "retired",
            marks=pytest.mark.xfail(
                MISCOMPILES_FP32_K_OFFSETS,
                strict=True,
                reason="Triton 3.6 miscompiles it (every run: XFAIL)",
            ),
        ),  # fmt: skip
        "shipped",
    ],
)
def test_fp32_head_regression(which, tile, k):
    from bertpool_fast.reference import classifier_head_reference

    retired = RETIRED_HEAD_TILES[tile]
    cfg = retired if which == "retired" else classifier_head.pick_head_config(retired.block_m,
                                                                               torch.float32)  # fmt: skip
    m, n, labels = retired.block_m, 40, 3
    x = randn(m, 2, k)  # row stride 2K: a multiple of 16, K is not
    w1, w2 = randn(n, k, scale=k**-0.5), randn(labels, n, scale=n**-0.5)
    b1, b2 = randn(n), randn(labels)
    out = classifier_head.classifier_head_fwd(x, w1, b1, w2, b2, "tanh", config=cfg)
    d = [t.double() for t in (x[:, 0], w1, b1, w2, b2)]
    assert_close_rel(out, classifier_head_reference(*d, "tanh").float().double(), torch.float32)


# --- the sweep --------------------------------------------------------------------------------


# Compiles, not launches, set the sweep's cost (~1 s each on the GPU host): the K value is not
# part of Triton's specialization, so every K iteration count of one shape reuses one binary,
# while "divisible by 16" of K, N and the strides picks a new one. Two shapes per configuration
# give the two specializations that matter: "aligned" (M, N, K multiples of the tile, bias on)
# and "tails" (M, N, K each past a multiple, K % 16 == 8, bias off). Activations are epilogues
# independent of the tile: each runs on one configuration per dtype (the tails shape).
def sweep_cases(full: bool):
    """(id, (dtype, cfg, shape, activation)) for each case; a subset under the interpreter."""
    cases = []
    first_of_dtype = set()
    for dtype, cfg, name in shipped_pooler_configs():
        shapes = ("aligned", "tails") if full else ("tails",)
        for shape in shapes:
            cases.append((f"{name}-{shape}", (dtype, cfg, shape, "tanh")))
        if dtype not in first_of_dtype:
            first_of_dtype.add(dtype)
            for act in ACTIVATIONS if full else ():
                if act != "tanh":
                    cases.append((f"{name}-tails-{act}", (dtype, cfg, "tails", act)))
    return cases


def run_sweep_case(dtype, cfg, shape, activation, full):
    tails = shape == "tails"
    m = cfg.block_m + 3 if tails else cfg.block_m
    n = cfg.block_n + 8 if tails else cfg.block_n
    ks = k_values(cfg) if full else [cfg.block_k * 2 + 8]
    for k in ks:
        if (k % 16 == 8) != tails and k != 768:
            continue
        run_case(dtype, cfg, m, n, k, 2, not tails, activation)


GPU_CASES = sweep_cases(full=True)
CPU_CASES = sweep_cases(full=False)


@pytest.mark.gpu
@pytest.mark.parametrize("args", [a for _, a in GPU_CASES], ids=[i for i, _ in GPU_CASES])
def test_sweep_pooler_fwd_gpu(args):
    run_sweep_case(*args, full=True)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU runs the full sweep instead")
@pytest.mark.parametrize("args", [a for _, a in CPU_CASES], ids=[i for i, _ in CPU_CASES])
def test_sweep_pooler_fwd_interpreter(args):
    assert KERNEL_DEVICE == "cpu"
    run_sweep_case(*args, full=False)


def test_sweep_covers_every_shipped_config():
    shipped = [*pooler.POOLER_TABLES.values(), pooler.BATCH_INVARIANT_CONFIGS]
    tables = {(d, cfg) for t in shipped for d, rows in t.items() for _, cfg in rows}
    tables |= {(d, cfg) for _, _, d, cfg in pooler.width_table_configs()}
    covered = {(d, cfg) for d, cfg, _ in shipped_pooler_configs()}
    # a half-precision config is swept in both fp16 and bf16, so the sweep may cover more
    assert tables <= covered, tables - covered


# --- backward kernels: dX reduces over N in block_n steps, dW/db over M in block_m steps -------


def shipped_bwd_configs() -> list[tuple[str, torch.dtype, TileConfig]]:
    out = []
    for kind, table in (("dx", pooler_bwd.DX_CONFIGS), ("dw", pooler_bwd.DW_CONFIGS)):
        for dtype, rows in table.items():
            for cfg in dict.fromkeys(cfg for _, cfg in rows):  # unique, in table order
                out.append((kind, dtype, cfg))
    return out


def run_bwd_case(kind, dtype, cfg, iters, tails, activation):
    # the reduction length runs `iters` steps of the tile, its last one partial when `tails`
    step = cfg.block_n if kind == "dx" else cfg.block_m
    red = iters * step - (step // 2 if tails else 0)
    m, n = (cfg.block_m + 3, red) if kind == "dx" else (red, cfg.block_n + 8)
    k = cfg.block_k + 8 if tails else cfg.block_k
    x = randn(m, k, dtype=dtype)
    weight = randn(n, k, dtype=dtype, scale=k**-0.5)
    y = torch.tanh(randn(m, n)).to(dtype) if activation == "tanh" else randn(m, n, dtype=dtype)
    grad = randn(m, n, dtype=dtype)
    dz = grad.double() * (1 - y.double() ** 2) if activation == "tanh" else grad.double()
    if activation == "relu":
        dz = torch.where(y.double() > 0, dz, 0.0)
    if kind == "dx":
        out = poisoned((m, k), dtype, x.device)
        pooler_bwd.pooler_bwd_dx(grad, y, weight, activation, out=out, config=cfg)
        assert_close_rel(out, dz @ weight.double(), dtype)
    else:
        dw, db = pooler_bwd.pooler_bwd_dw(grad, y, x, activation, True, True, n, config=cfg)
        assert_close_rel(dw, dz.T @ x.double(), dtype)
        assert_close_rel(db, dz.sum(0), dtype)


def bwd_cases(full: bool):
    cases, first = [], set()
    for kind, dtype, cfg in shipped_bwd_configs():
        name = f"{kind}-{DTYPE_IDS[dtype]}-{'x'.join(map(str, cfg))}"
        for tails in (False, True) if full else (True,):
            cases.append((f"{name}-{'tails' if tails else 'aligned'}", (kind, dtype, cfg, tails,
                                                                         "tanh")))  # fmt: skip
        if full and (kind, dtype) not in first:
            first.add((kind, dtype))
            for act in ("relu", "identity"):
                cases.append((f"{name}-tails-{act}", (kind, dtype, cfg, True, act)))
    return cases


def run_bwd_sweep_case(kind, dtype, cfg, tails, activation, full):
    for iters in sorted({1, 2, 3, cfg.num_stages, cfg.num_stages + 1}) if full else [3]:
        run_bwd_case(kind, dtype, cfg, iters, tails, activation)


GPU_BWD_CASES = bwd_cases(full=True)
CPU_BWD_CASES = bwd_cases(full=False)


@pytest.mark.gpu
@pytest.mark.parametrize("args", [a for _, a in GPU_BWD_CASES], ids=[i for i, _ in GPU_BWD_CASES])
def test_sweep_pooler_bwd_gpu(args):
    run_bwd_sweep_case(*args, full=True)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU runs the full sweep instead")
@pytest.mark.parametrize("args", [a for _, a in CPU_BWD_CASES], ids=[i for i, _ in CPU_BWD_CASES])
def test_sweep_pooler_bwd_interpreter(args):
    run_bwd_sweep_case(*args, full=False)


# --- classifier head: both paths (split-N rows and fused rows of the table) ----------------------


def shipped_head_configs():
    return [(dtype, cfg) for dtype, rows in classifier_head.HEAD_CONFIGS.items()
            for cfg in dict.fromkeys(cfg for _, cfg in rows)]  # fmt: skip


def run_head_case(dtype, cfg, tails, activation, full):
    from bertpool_fast.reference import classifier_head_reference

    m = cfg.block_m + 3 if tails else cfg.block_m
    labels = 3 if tails else 16
    iters = sorted({1, 2, 3, cfg.num_stages, cfg.num_stages + 1}) if full else [3]
    for i in iters:
        k = i * cfg.block_k - (cfg.block_k // 2 if tails else 0)
        n = i * cfg.block_n - (cfg.block_n // 2 if tails else 0)
        x = randn(m, 2, k, dtype=dtype)
        w1, w2 = (
            randn(n, k, dtype=dtype, scale=k**-0.5),
            randn(labels, n, dtype=dtype, scale=n**-0.5),
        )
        b1, b2 = randn(n, dtype=dtype), randn(labels, dtype=dtype)
        out = poisoned((m, labels), dtype, x.device)
        classifier_head.classifier_head_fwd(x, w1, b1, w2, b2, activation, out=out, config=cfg)
        d = [t.double() for t in (x[:, 0], w1, b1, w2, b2)]
        # the pooled rows are rounded to the input dtype in between, as the kernel and eager do
        eye = torch.eye(n, dtype=torch.float64, device=x.device)
        pooled = classifier_head_reference(d[0], d[1], d[2], eye,
                                           None, activation).to(dtype).double()  # fmt: skip
        assert_close_rel(out, pooled @ d[3].T + d[4], dtype)


def head_cases(full: bool):
    cases, first = [], set()
    for dtype, cfg in shipped_head_configs():
        name = f"{DTYPE_IDS[dtype]}-{'x'.join(map(str, cfg[:5]))}-{'split' if cfg.split_n else 'fused'}"
        for tails in (False, True) if full else (True,):
            cases.append((f"{name}-{'tails' if tails else 'aligned'}", (dtype, cfg, tails, "tanh")))
        if full and dtype not in first:
            first.add(dtype)
            cases += [
                (f"{name}-tails-{a}", (dtype, cfg, True, a)) for a in ACTIVATIONS if a != "tanh"
            ]
    return cases


GPU_HEAD_CASES = head_cases(full=True)
CPU_HEAD_CASES = head_cases(full=False)


@pytest.mark.gpu
@pytest.mark.parametrize("args", [a for _, a in GPU_HEAD_CASES], ids=[i for i, _ in GPU_HEAD_CASES])
def test_sweep_classifier_head_gpu(args):
    run_head_case(*args, full=True)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU runs the full sweep instead")
@pytest.mark.parametrize("args", [a for _, a in CPU_HEAD_CASES], ids=[i for i, _ in CPU_HEAD_CASES])
def test_sweep_classifier_head_interpreter(args):
    run_head_case(*args, full=False)


# --- masked pooling: the H-split table and the whole-row configs --------------------------------


def shipped_pool_configs(h: int):
    """The H-split table's configs, and the whole-row config the launcher would build for h."""
    return [cfg for _, cfg in masked_pool.POOL_CONFIGS] + [masked_pool.row_config(h)]


def run_pool_case(dtype, cfg, mode, normalize, full):
    from bertpool_fast.embedding_ops import masked_pool_reference

    h = 3 * cfg.block_h // 2 + 8 if cfg.block_h < 1024 else 40
    steps = sorted({1, 2, 3, 4}) if full else [3]
    for i in steps:
        s = i * cfg.block_s - cfg.block_s // 2 if cfg.block_s > 1 else i
        b = 3
        x = randn(b, s, h, dtype=dtype)
        mask = (torch.rand(b, s, device=x.device) > 0.3).long()
        mask[:, 0] = 1
        out = poisoned((b, h), dtype, x.device)
        masked_pool.masked_pool_fwd(x, mask, mode, normalize, out=out, config=cfg)
        assert_close_rel(out, masked_pool_reference(x.double(), mask, mode, normalize), dtype)


def pool_cases(full: bool):
    # MODE is a constexpr, so each mode is a compile: every mode runs on one configuration per
    # dtype; the others run mean (normalised: in-kernel on whole-row configs, a second launch on
    # H-split ones) and max (its own reduction), which between them cover both code paths.
    cases = []
    for dtype in DTYPE_IDS:
        for j, cfg in enumerate(dict.fromkeys(shipped_pool_configs(40))):
            runs = [("mean", True), ("max", False)] if full else [("mean", True)]
            if full and j == 0:
                runs += [(mode, False) for mode in masked_pool.POOL_MODES if mode != "max"]
            for mode, normalize in runs:
                name = f"{DTYPE_IDS[dtype]}-{'x'.join(map(str, cfg))}-{mode}-{normalize}"
                cases.append((name, (dtype, cfg, mode, normalize)))
    return cases


GPU_POOL_CASES = pool_cases(full=True)
CPU_POOL_CASES = pool_cases(full=False)


@pytest.mark.gpu
@pytest.mark.parametrize("args", [a for _, a in GPU_POOL_CASES], ids=[i for i, _ in GPU_POOL_CASES])
def test_sweep_masked_pool_gpu(args):
    run_pool_case(*args, full=True)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU runs the full sweep instead")
@pytest.mark.parametrize("args", [a for _, a in CPU_POOL_CASES], ids=[i for i, _ in CPU_POOL_CASES])
def test_sweep_masked_pool_interpreter(args):
    run_pool_case(*args, full=False)
