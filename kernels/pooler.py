"""Fused pooler forward: ``out = act(hidden_states[:, 0] @ weight.T + bias)`` in one launch.

The kernel takes the first-token rows as a strided [M, K] view of ``hidden_states`` (row stride =
``hidden_states.stride(0)``, column stride = ``hidden_states.stride(2)``), so the gather costs
nothing and no [B, S, H] tensor is copied. ``weight`` is read in ``nn.Linear`` layout [N, K] through
its strides. Accumulation is fp32 on tensor cores; bias and activation are applied to the fp32
accumulator and the result is cast once, at the store, to the output dtype.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .activations import apply_activation
from .launch import CachedLaunch, cdiv
from .precision import round_to
from .runtime import device_of, interpreter_enabled
from .tiles import TileConfig, pick_tile

# Tile table, keyed by the largest M (batch) each row serves. No autotuning: the choice is a pure
# function of (M, dtype), so it costs nothing on the launch path, never benchmarks at first call,
# and two runs always pick the same tiles.
#   * M <= 16 (the common inference case): one M tile and a narrow N tile, so the weight read
#     (the whole cost at small batch) is spread over N / 32 programs: 24 for H = 768, 128 for 4096.
#   * block_k is the same in every row of a dtype's table: the K reduction then runs in the same
#     order whatever the batch, which is what makes a row's result independent of the batch it
#     arrives in.
#   * fp32 tiles are half as deep in K: same bytes per stage as fp16, and sm_80's 164 KiB of shared
#     memory still holds every pipeline.
_HALF_CONFIGS = (
    (16, TileConfig(16, 32, 64, 4, 4)),
    (64, TileConfig(32, 64, 64, 4, 4)),
    (256, TileConfig(64, 64, 64, 4, 4)),
    (None, TileConfig(128, 128, 64, 8, 3)),
)
_FP32_CONFIGS = (
    (16, TileConfig(16, 32, 32, 4, 4)),
    (64, TileConfig(32, 64, 32, 4, 4)),
    (256, TileConfig(64, 64, 32, 4, 4)),
    (None, TileConfig(128, 128, 32, 8, 3)),
)
POOLER_CONFIGS = {
    torch.float16: _HALF_CONFIGS,
    torch.bfloat16: _HALF_CONFIGS,
    torch.float32: _FP32_CONFIGS,
}

# Batch-invariant tiles (``batch_invariant=True``): a row's output is bitwise the same whatever batch
# it arrives in. Each output element is one dot product over K; it comes out the same in every tile
# when (1) the K loop walks the same BLOCK_K chunks in the same order and (2) every tile lowers the
# dot to the same instruction. The default table keeps (1) but not (2) on sm_90: its 16- and 32-row
# tiles are too short for wgmma (64 rows per warpgroup) and run mma.sync, the 64- and 128-row tiles
# run wgmma, and the two need not round alike. Here every tile is at least 64 rows with warps in
# whole warpgroups, so one instruction family serves every batch on each architecture (wgmma on
# sm_90, mma.sync on sm_80; fp32 with "ieee" precision is plain FMA in K order on both).
# Cost: at M <= 64 the tile carries up to 63 masked rows. Those rows are never loaded from memory,
# and at that size the op is bound by the weight read, so the predicted cost is small; the benchmark
# measures it ("triton_bi" against "triton").
_HALF_INVARIANT_CONFIGS = (
    (64, TileConfig(64, 32, 64, 4, 4)),
    (256, TileConfig(64, 64, 64, 4, 4)),
    (None, TileConfig(128, 128, 64, 8, 3)),
)
_FP32_INVARIANT_CONFIGS = (
    (64, TileConfig(64, 32, 32, 4, 4)),
    (256, TileConfig(64, 64, 32, 4, 4)),
    (None, TileConfig(128, 128, 32, 8, 3)),
)
BATCH_INVARIANT_CONFIGS = {
    torch.float16: _HALF_INVARIANT_CONFIGS,
    torch.bfloat16: _HALF_INVARIANT_CONFIGS,
    torch.float32: _FP32_INVARIANT_CONFIGS,
}


@functools.cache
def pick_config(m: int, dtype: torch.dtype, batch_invariant: bool = False) -> TileConfig:
    table = BATCH_INVARIANT_CONFIGS if batch_invariant else POOLER_CONFIGS
    return pick_tile(table[dtype], m)


@triton.jit
def pooled_tile(
    x_ptr,
    w_ptr,
    b_ptr,
    o_m,
    o_n,
    m_m,
    m_n,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_b,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """act(X[o_m] @ W[o_n].T + b[o_n]) as an fp32 [BLOCK_M, BLOCK_N] block, never stored.

    Shared by the pooler (which stores it) and the classifier head (which feeds it to a second
    GEMM), so both run the very same K loop. o_m / o_n are int64 offsets; m_m / m_n their bounds.
    """
    o_k = tl.arange(0, BLOCK_K)
    p_x = x_ptr + o_m[:, None] * stride_xm + o_k[None, :] * stride_xk
    p_w = w_ptr + o_n[None, :] * stride_wn + o_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(p_w, mask=m_k[:, None] & m_n[None, :], other=0.0)
        if UPCAST_OPERANDS:
            # Only under the CPU interpreter, whose tl.dot mishandles bfloat16 operands. A product
            # of two bf16 values is exact in fp32, so this computes what the tensor cores do.
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        acc = tl.dot(b_x, b_w, acc, input_precision=DOT_PRECISION)
        p_x += BLOCK_K * stride_xk
        p_w += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(b_ptr + o_n * stride_b, mask=m_n, other=0.0).to(tl.float32)[None, :]
    return apply_activation(acc, ACTIVATION)


@triton.jit
def pooler_fwd_kernel(
    x_ptr,  # [M, K] first-token rows, any strides
    w_ptr,  # [N, K] nn.Linear weight, any strides
    b_ptr,  # [N] bias (unused when HAS_BIAS is False)
    out_ptr,  # [M, N] output, contiguous
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_b,
    stride_om,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # N tiles vary fastest, so programs that run together share the same X rows and sweep the
    # (L2-resident) weight.
    i_n = tl.program_id(0)
    i_m = tl.program_id(1)
    # int64: row offsets are B * S * H elements away, past 2^31 for long sequences at large batch
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N
    acc = pooled_tile(
        x_ptr, w_ptr, b_ptr, o_m, o_n, m_m, m_n, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_b,
        HAS_BIAS, ACTIVATION, DOT_PRECISION, UPCAST_OPERANDS, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    p_out = out_ptr + o_m[:, None] * stride_om + o_n[None, :]
    # UPCAST_OPERANDS is set exactly when the interpreter handles bf16, whose store truncates
    tl.store(
        p_out,
        round_to(acc, out_ptr.dtype.element_ty, UPCAST_OPERANDS),
        mask=m_m[:, None] & m_n[None, :],
    )


_launch_pooler_fwd = CachedLaunch(pooler_fwd_kernel)


def fp32_dot_precision() -> str:
    """fp32 GEMMs follow torch's own switch for cuBLAS, as nn.Linear does: "ieee" or "tf32".

    torch has two APIs for it. The newer ``torch.backends.cuda.matmul.fp32_precision`` ("ieee",
    "tf32", or "none" = not set) wins when set, and once it is set the legacy getter raises (it
    refuses to answer for a mix of both APIs), so it is read first. "none" defers to the legacy
    ``get_float32_matmul_precision()``, whose default "highest" means IEEE fp32.
    """
    new_api = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if new_api in ("ieee", "tf32"):
        return new_api
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def pooler_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    out: Optional[torch.Tensor] = None,
    batch_invariant: bool = False,
) -> torch.Tensor:
    """Launch the fused pooler. Inputs are validated by the caller (``bertpool_fast.fused_pooler``).

    x: the first-token rows, either ``hidden_states`` [M, S, K] itself (position 0 of each sequence
    is read: it starts at the tensor's own data pointer, so no ``[:, 0]`` view is built on the
    launch path) or an [M, K] tensor of rows; any strides. weight: [N, K], bias: [N] or None; all
    of one dtype and device. batch_invariant: use ``BATCH_INVARIANT_CONFIGS``, so row i's output
    does not depend on M. Returns [M, N] in that dtype.
    """
    m, k = x.shape[0], x.shape[-1]
    n = weight.shape[0]
    dtype = x.dtype
    if out is None:
        out = torch.empty((m, n), dtype=dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    # k == 0 needs no special case: the K loop runs zero times and the result is act(bias).
    config = pick_config(m, dtype, batch_invariant)
    grid = (cdiv(n, config.block_n), cdiv(m, config.block_m))
    with device_of(x):
        _launch_pooler_fwd(
            grid,
            (
                x,
                weight,
                weight if bias is None else bias,  # any valid pointer; unread without HAS_BIAS
                out,
                m,
                n,
                k,
                x.stride(0),
                x.stride(-1),
                weight.stride(0),
                weight.stride(1),
                bias.stride(0) if bias is not None else 0,
                out.stride(0),
            ),
            (
                bias is not None,  # HAS_BIAS
                activation,
                fp32_dot_precision() if dtype == torch.float32 else "ieee",  # DOT_PRECISION
                interpreter_enabled() and dtype == torch.bfloat16,  # UPCAST_OPERANDS
                config.block_m,
                config.block_n,
                config.block_k,
            ),
            config.num_warps,
            config.num_stages,
        )
    return out


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the forward kernel, both tables, as compile-ahead cases.

    The signature mirrors what Triton's launcher builds for the usual call (contiguous weight,
    ``hidden_states`` contiguous in its last dimension, 16-aligned allocations, H a multiple of
    16): integer arguments equal to 1 become constants, and 16-divisible pointers and sizes carry
    the divisibility hint. Compiled without them, the loads are scalar and register counts say
    nothing about the kernel that runs.
    """
    from .inspection import TRITON_DTYPE, KernelCase

    cases = []
    for table_name, tables in (("", POOLER_CONFIGS), (" batch-invariant", BATCH_INVARIANT_CONFIGS)):
        for dtype, table in tables.items():
            t = TRITON_DTYPE[dtype]
            previous = 0
            for max_m, cfg in table:
                bucket = f"M<={max_m}" if max_m is not None else f"M>{previous}"
                previous = max_m
                cases.append(
                    KernelCase(
                        name=f"pooler_fwd {t} {bucket}{table_name}",
                        kernel=pooler_fwd_kernel,
                        signature={
                            "x_ptr": f"*{t}",
                            "w_ptr": f"*{t}",
                            "b_ptr": f"*{t}",
                            "out_ptr": f"*{t}",
                            "M": "i32",
                            "N": "i32",
                            "K": "i32",
                            "stride_xm": "i64",
                            "stride_wn": "i32",
                            "stride_b": "i32",
                            "stride_om": "i32",
                        },
                        constexprs={
                            "stride_xk": 1,
                            "stride_wk": 1,
                            "HAS_BIAS": True,
                            "ACTIVATION": "tanh",
                            "DOT_PRECISION": "ieee",
                            "UPCAST_OPERANDS": False,
                            "BLOCK_M": cfg.block_m,
                            "BLOCK_N": cfg.block_n,
                            "BLOCK_K": cfg.block_k,
                        },
                        num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages,
                        dtype=dtype,
                        expects_tensor_cores=dtype != torch.float32,
                        divisible_by_16=(
                            "x_ptr",
                            "w_ptr",
                            "b_ptr",
                            "out_ptr",
                            "N",
                            "K",
                            "stride_xm",
                            "stride_wn",
                            "stride_om",
                        ),
                        tags={
                            "table": "batch_invariant" if table_name else "default",
                            "max_m": max_m,
                        },
                    )
                )
    return cases
