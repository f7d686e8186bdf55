"""Fused pooler backward: the gradients of ``y = act(x_cls @ weight.T + bias)`` in two launches.

With dY the incoming gradient and y the saved output, dZ = act'(z) * dY (for tanh: dY * (1 - y^2)):
  * ``pooler_bwd_dx_kernel``: dX = dZ @ W                 [M, K], reduction over N
  * ``pooler_bwd_dw_kernel``: dW = dZ^T @ X, db = sum_m dZ [N, K] and [N], reduction over M
dZ is never materialised: each kernel loads (dY, y) tiles and applies ``activation_grad`` in
registers just before the dot. dW and db come from the same pass over dZ. Both kernels reduce in a
fixed order with no atomics, so two runs on the same inputs are bitwise equal.

dZ is rounded to the operand dtype before the dot, as eager autograd does (``tanh_backward``
returns dZ in the input dtype, then ``mm`` runs on it); accumulation is fp32 and the result is cast
once at the store. X is read through its strides (the first-token rows of [B, S, H] in place) and dX
is written through its strides, so it can land directly in row 0 of a [B, S, H] gradient.

Only activations whose derivative is a function of y run here (tanh, relu, identity). For the GELUs
the caller computes dZ itself (it needs z) and launches these kernels with ACTIVATION="identity" on
that dZ: the GEMMs still run here, only the [M, N] elementwise step does not.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .activations import activation_grad
from .launch import CachedLaunch, cdiv
from .pooler import fp32_dot_precision
from .precision import round_to
from .runtime import device_of, interpreter_enabled
from .tiles import TileConfig, pick_tile

# Activations whose derivative the kernels compute from y alone.
BWD_ACTIVATIONS = ("tanh", "relu", "identity")


# Field meanings in the backward (TileConfig's names are the forward's):
#   block_m: batch rows per tile (dX: output rows; dW: reduction step)
#   block_n: output-feature columns per tile (dX: reduction step; dW: output rows)
#   block_k: input-feature columns per tile (output columns in both kernels)


# dX = dZ @ W: output [M, K] in (block_m x block_k) tiles, reduction over N in block_n steps.
# The whole weight is read once per M tile, as in the forward, so at small batch the tiles mirror
# the forward's: one M tile, the K columns spread over K / 32 programs (24 for H = 768). fp32 takes
# half the reduction depth for the same bytes per pipeline stage. dY and y pass through registers
# (dZ is formed there) on top of the accumulator, so the larger tiles take 8 warps and at most 3
# stages: the rows below are those `python -m bertpool_fast inspect` compiles with no spills on
# sm_80 and sm_90, with Triton 3.6 and 3.9 (3.6 spilled 8-16 B on sm_80 with the earlier 32-row
# half tile at 4 warps and 4 stages, and with the fp32 64x32x64 tile).
_DX_HALF = (
    (16, TileConfig(16, 64, 32, 4, 4)),
    (64, TileConfig(32, 64, 64, 8, 3)),
    (256, TileConfig(64, 64, 64, 8, 3)),
    (None, TileConfig(128, 32, 64, 8, 3)),
)
_DX_FP32 = (
    (16, TileConfig(16, 32, 32, 4, 3)),
    (64, TileConfig(32, 32, 64, 4, 4)),
    (None, TileConfig(64, 32, 32, 8, 3)),  # a 128-row fp32 tile spills on sm_80
)
# dW = dZ^T @ X: output [N, K] in (block_n x block_k) tiles whatever the batch, each program
# reducing over all M rows itself (no split-M, no atomics: deterministic). 64 x 64 tiles give 144
# programs for H = 768, enough to fill an H100's 132 SMs; the batch only sets the reduction step.
# At M <= 16 the loop runs once, so there is nothing to pipeline.
_DW_HALF = (
    (16, TileConfig(16, 64, 64, 4, 2)),
    (64, TileConfig(32, 64, 64, 4, 3)),
    (None, TileConfig(64, 64, 64, 8, 3)),
)
_DW_FP32 = (
    (16, TileConfig(16, 64, 64, 4, 2)),
    (64, TileConfig(32, 64, 64, 8, 3)),
    (None, TileConfig(32, 64, 64, 8, 3)),
)
DX_CONFIGS = {torch.float16: _DX_HALF, torch.bfloat16: _DX_HALF, torch.float32: _DX_FP32}
DW_CONFIGS = {torch.float16: _DW_HALF, torch.bfloat16: _DW_HALF, torch.float32: _DW_FP32}


@functools.cache
def pick_dx_config(m: int, dtype: torch.dtype) -> TileConfig:
    return pick_tile(DX_CONFIGS[dtype], m)


@functools.cache
def pick_dw_config(m: int, dtype: torch.dtype) -> TileConfig:
    return pick_tile(DW_CONFIGS[dtype], m)


@triton.jit
def load_dy_y(p_dy, p_y, mask, ACTIVATION: tl.constexpr):
    """A tile of dY and of the saved output y, what activation_grad takes (identity never reads
    y). Masked lanes load dY = 0, hence dZ = 0 for every activation: they add nothing."""
    b_dy = tl.load(p_dy, mask=mask, other=0.0)
    if ACTIVATION == "identity":
        return b_dy, b_dy  # y never read by activation_grad
    return b_dy, tl.load(p_y, mask=mask, other=0.0)


@triton.jit
def pooler_bwd_dx_kernel(
    dy_ptr,  # [M, N] incoming gradient (or dZ itself with ACTIVATION="identity")
    y_ptr,  # [M, N] saved forward output (unused for identity)
    w_ptr,  # [N, K] nn.Linear weight, any strides
    dx_ptr,  # [M, K] gradient of the first-token rows, any strides
    M,
    N,
    K,
    stride_dym,
    stride_dyn,
    stride_ym,
    stride_yn,
    stride_wn,
    stride_wk,
    stride_dxm,
    stride_dxk,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # K tiles vary fastest: programs running together share the same (dY, y) rows.
    i_k = tl.program_id(0)
    i_m = tl.program_id(1)
    # int64: dX rows are S * H elements apart when written into a [B, S, H] gradient
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_k = i_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_n = tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_k = o_k < K

    p_dy = dy_ptr + o_m[:, None] * stride_dym + o_n[None, :] * stride_dyn
    p_y = y_ptr + o_m[:, None] * stride_ym + o_n[None, :] * stride_yn
    p_w = w_ptr + o_n[:, None] * stride_wn + o_k[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        m_n = (n0 + o_n) < N
        m_mn = m_m[:, None] & m_n[None, :]
        b_dy, b_y = load_dy_y(p_dy, p_y, m_mn, ACTIVATION)
        b_w = tl.load(p_w, mask=m_n[:, None] & m_k[None, :], other=0.0)
        # dZ rounded to the operand dtype, as eager's tanh_backward output is
        b_dz = activation_grad(b_dy, b_y, ACTIVATION)
        b_dz = round_to(b_dz, w_ptr.dtype.element_ty, INTERPRETED_BF16)
        if INTERPRETED_BF16:
            # CPU interpreter with bf16 only (its tl.dot mishandles bf16, and its fp32 -> bf16
            # conversion truncates, see round_to); bf16 products are exact in fp32
            b_dz = b_dz.to(tl.float32)
            b_w = b_w.to(tl.float32)
        acc = tl.dot(b_dz, b_w, acc, input_precision=DOT_PRECISION)
        p_dy += BLOCK_N * stride_dyn
        p_y += BLOCK_N * stride_yn
        p_w += BLOCK_N * stride_wn

    p_dx = dx_ptr + o_m[:, None] * stride_dxm + o_k[None, :] * stride_dxk
    b_dx = round_to(acc, dx_ptr.dtype.element_ty, INTERPRETED_BF16)
    tl.store(p_dx, b_dx, mask=m_m[:, None] & m_k[None, :])


@triton.jit
def pooler_bwd_dw_kernel(
    dy_ptr,  # [M, N] incoming gradient (or dZ itself with ACTIVATION="identity")
    y_ptr,  # [M, N] saved forward output (unused for identity)
    x_ptr,  # [M, K] first-token rows, any strides (unused without HAS_DW)
    dw_ptr,  # [N, K] weight gradient, any strides (unused without HAS_DW)
    db_ptr,  # [N] bias gradient (unused without HAS_DB)
    M,
    N,
    K,
    stride_dym,
    stride_dyn,
    stride_ym,
    stride_yn,
    stride_xm,
    stride_xk,
    stride_dwn,
    stride_dwk,
    stride_db,
    ACTIVATION: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_DB: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_k = tl.program_id(1)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = i_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_m = tl.arange(0, BLOCK_M)
    m_n = o_n < N
    m_k = o_k < K

    # dZ is read transposed, [BLOCK_N, BLOCK_M], straight through the strides: no tl.trans
    p_dy = dy_ptr + o_n[:, None] * stride_dyn + o_m[None, :] * stride_dym
    p_y = y_ptr + o_n[:, None] * stride_yn + o_m[None, :] * stride_ym
    # int64: x's row stride is S * H, so BLOCK_M rows of it pass 2^31 elements for long sequences
    p_x = x_ptr + o_m.to(tl.int64)[:, None] * stride_xm + o_k[None, :] * stride_xk
    step_x = tl.full((), BLOCK_M, tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        m_m = (m0 + o_m) < M
        m_nm = m_n[:, None] & m_m[None, :]
        b_dy, b_y = load_dy_y(p_dy, p_y, m_nm, ACTIVATION)
        b_dz = activation_grad(b_dy, b_y, ACTIVATION)
        if HAS_DB:
            # from the fp32 dZ, before it is rounded for the dot; every K tile computes it (a row
            # sum of a register tile, cheaper than a branch in the loop), only K tile 0 stores it
            acc_b += tl.sum(b_dz, axis=1)
        if HAS_DW:
            b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)
            b_dzc = round_to(b_dz, x_ptr.dtype.element_ty, INTERPRETED_BF16)
            if INTERPRETED_BF16:
                b_dzc = b_dzc.to(tl.float32)
                b_x = b_x.to(tl.float32)
            acc = tl.dot(b_dzc, b_x, acc, input_precision=DOT_PRECISION)
        p_dy += BLOCK_M * stride_dym
        p_y += BLOCK_M * stride_ym
        p_x += step_x

    if HAS_DW:
        p_dw = dw_ptr + o_n[:, None] * stride_dwn + o_k[None, :] * stride_dwk
        b_dw = round_to(acc, dw_ptr.dtype.element_ty, INTERPRETED_BF16)
        tl.store(p_dw, b_dw, mask=m_n[:, None] & m_k[None, :])
    if HAS_DB:
        if i_k == 0:
            b_db = round_to(acc_b, db_ptr.dtype.element_ty, INTERPRETED_BF16)
            tl.store(db_ptr + o_n * stride_db, b_db, mask=m_n)


def _launch_flags(dtype: torch.dtype) -> tuple[str, bool]:
    """(DOT_PRECISION, INTERPRETED_BF16) for both backward kernels."""
    return (
        fp32_dot_precision() if dtype == torch.float32 else "ieee",
        interpreter_enabled() and dtype == torch.bfloat16,
    )


_launch_dx = CachedLaunch(pooler_bwd_dx_kernel)
_launch_dw = CachedLaunch(pooler_bwd_dw_kernel)


def pooler_bwd_dx(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    activation: str,
    out: torch.Tensor,
    config: Optional[TileConfig] = None,
) -> torch.Tensor:
    """Write dX = act'(z) * grad_out @ weight into ``out`` ([M, K], any strides) and return it.

    grad_out, y: [M, N] (grad_out may be fp32 dZ with activation="identity"); weight: [N, K].
    config overrides the table's pick (tests).
    """
    _check_bwd_activation(activation)
    m, n = grad_out.shape
    k = weight.shape[1]
    if m == 0 or k == 0:
        return out
    # n == 0 needs no special case: the N loop runs zero times and dX is zero
    cfg = config if config is not None else pick_dx_config(m, weight.dtype)
    grid = (cdiv(k, cfg.block_k), cdiv(m, cfg.block_m))
    with device_of(weight):
        _launch_dx(
            grid,
            (grad_out, y, weight, out, m, n, k, grad_out.stride(0), grad_out.stride(1),
             y.stride(0), y.stride(1), weight.stride(0), weight.stride(1),
             out.stride(0), out.stride(1)),
            # ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M, BLOCK_N, BLOCK_K
            (activation, *_launch_flags(weight.dtype), cfg.block_m, cfg.block_n, cfg.block_k),
            cfg.num_warps,
            cfg.num_stages,
        )  # fmt: skip
    return out


def pooler_bwd_dw(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    x_cls: torch.Tensor,
    activation: str,
    need_weight: bool,
    need_bias: bool,
    n: int,
    out_weight: Optional[torch.Tensor] = None,
    out_bias: Optional[torch.Tensor] = None,
    config: Optional[TileConfig] = None,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """dW = dZ^T @ x_cls ([N, K]) and db = dZ.sum(0) ([N]) in one pass; each None when not needed.

    grad_out, y: [M, N]; x_cls: [M, K], any strides. Outputs are in x_cls's dtype, written into
    ``out_weight`` / ``out_bias`` (any strides) when given. config overrides the table's pick.
    """
    _check_bwd_activation(activation)
    m, k = x_cls.shape
    dtype, device = x_cls.dtype, x_cls.device
    dw = db = None
    if need_weight:
        dw = out_weight
        if dw is None:
            dw = torch.empty((n, k), dtype=dtype, device=device)
    if need_bias:
        db = out_bias
        if db is None:
            db = torch.empty((n,), dtype=dtype, device=device)
    if not (need_weight or need_bias) or n == 0:
        return dw, db
    if m == 0:
        # an empty batch contributes nothing; the kernel would store its zero accumulators too,
        # but zero-size launches are best not made at all
        return (dw.zero_() if dw is not None else None), (db.zero_() if db is not None else None)
    cfg = config if config is not None else pick_dw_config(m, dtype)
    # without dW only one K tile is needed, the one that stores db
    k_tiles = cdiv(k, cfg.block_k) if need_weight else 1
    grid = (cdiv(n, cfg.block_n), max(k_tiles, 1))
    with device_of(grad_out):
        _launch_dw(
            grid,
            (
                grad_out,
                y,
                x_cls,
                dw if dw is not None else x_cls,  # any valid pointer; never touched without HAS_DW
                db if db is not None else x_cls,  # likewise without HAS_DB
                m,
                n,
                k,
                grad_out.stride(0),
                grad_out.stride(1),
                y.stride(0),
                y.stride(1),
                x_cls.stride(0),
                x_cls.stride(1),
                dw.stride(0) if dw is not None else 0,
                dw.stride(1) if dw is not None else 0,
                db.stride(0) if db is not None else 0,
            ),
            # ACTIVATION, HAS_DW, HAS_DB, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M, BLOCK_N, BLOCK_K
            (activation, need_weight, need_bias, *_launch_flags(dtype),
             cfg.block_m, cfg.block_n, cfg.block_k),
            cfg.num_warps,
            cfg.num_stages,
        )  # fmt: skip
    return dw, db


def _check_bwd_activation(activation: str) -> None:
    if activation not in BWD_ACTIVATIONS:
        raise ValueError(
            f"the backward kernels compute act'(z) from y for {BWD_ACTIVATIONS} only, got "
            f"{activation!r}: pass dZ with activation='identity' instead"
        )


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the two backward kernels, as compile-ahead cases."""
    from .inspection import TRITON_DTYPE, KernelCase

    def bucket(table, i):
        max_m = table[i][0]
        return f"M<={max_m}" if max_m is not None else f"M>{table[i - 1][0]}"

    cases = []
    for dtype in DX_CONFIGS:
        t = TRITON_DTYPE[dtype]
        flags = {"ACTIVATION": "tanh", "DOT_PRECISION": "ieee", "INTERPRETED_BF16": False}
        for i, (_, cfg) in enumerate(DX_CONFIGS[dtype]):
            cases.append(
                KernelCase(
                    name=f"pooler_bwd_dx {t} {bucket(DX_CONFIGS[dtype], i)}",
                    kernel=pooler_bwd_dx_kernel,
                    signature={
                        "dy_ptr": f"*{t}",
                        "y_ptr": f"*{t}",
                        "w_ptr": f"*{t}",
                        "dx_ptr": f"*{t}",
                        "M": "i32",
                        "N": "i32",
                        "K": "i32",
                        "stride_dym": "i32",
                        "stride_dyn": "i32",
                        "stride_ym": "i32",
                        "stride_yn": "i32",
                        "stride_wn": "i32",
                        "stride_wk": "i32",
                        "stride_dxm": "i64",
                        "stride_dxk": "i32",
                    },
                    constexprs={
                        **flags,
                        "BLOCK_M": cfg.block_m,
                        "BLOCK_N": cfg.block_n,
                        "BLOCK_K": cfg.block_k,
                    },
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    dtype=dtype,
                    expects_tensor_cores=dtype != torch.float32,
                )
            )
        for i, (_, cfg) in enumerate(DW_CONFIGS[dtype]):
            cases.append(
                KernelCase(
                    name=f"pooler_bwd_dw {t} {bucket(DW_CONFIGS[dtype], i)}",
                    kernel=pooler_bwd_dw_kernel,
                    signature={
                        "dy_ptr": f"*{t}",
                        "y_ptr": f"*{t}",
                        "x_ptr": f"*{t}",
                        "dw_ptr": f"*{t}",
                        "db_ptr": f"*{t}",
                        "M": "i32",
                        "N": "i32",
                        "K": "i32",
                        "stride_dym": "i32",
                        "stride_dyn": "i32",
                        "stride_ym": "i32",
                        "stride_yn": "i32",
                        "stride_xm": "i64",
                        "stride_xk": "i32",
                        "stride_dwn": "i32",
                        "stride_dwk": "i32",
                        "stride_db": "i32",
                    },
                    constexprs={
                        **flags,
                        "HAS_DW": True,
                        "HAS_DB": True,
                        "BLOCK_M": cfg.block_m,
                        "BLOCK_N": cfg.block_n,
                        "BLOCK_K": cfg.block_k,
                    },
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    dtype=dtype,
                    expects_tensor_cores=dtype != torch.float32,
                )
            )
    return cases
