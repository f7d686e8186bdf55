"""Fused classification head: ``logits = act(X @ W1.T + b1) @ W2.T + b2`` in one launch.

This is BERT's pooler followed by its classifier (``BertForSequenceClassification``,
``BertForNextSentencePrediction``; dropout is the identity in eval mode), and equally Roberta's
``RobertaClassificationHead`` (``dense`` -> tanh -> ``out_proj`` on the first token).

One program owns a tile of BLOCK_M rows. It walks the pooler's output dimension N in BLOCK_N
chunks: each chunk of the pooled rows comes from ``pooled_tile`` (the pooler kernel's own K loop,
bias and activation), is rounded to the input dtype, and is multiplied at once by the matching
[BLOCK_N, L] slice of W2 into an fp32 [BLOCK_M, BLOCK_L] logits accumulator. Pooled rows never
reach memory; only the logits are written.

Precision: the pooled chunk is rounded to the input dtype before the second GEMM. Eager PyTorch
stores ``pooled_output`` in the input dtype too, so this reproduces eager's one intermediate
rounding (keeping fp32 would differ from eager by as much as eager differs from exact), and it lets
the second GEMM run fp16/bf16 operands on tensor cores like the first. For fp32 inputs nothing is
rounded.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .pooler import fp32_dot_precision, pooled_tile
from .runtime import interpreter_enabled

# The logits accumulator is [BLOCK_M, BLOCK_L] fp32 in registers next to the pooled chunk. Up to
# 128 labels it fits beside a 64-row tile; wider heads (rare: num_labels is usually 2-20) are run
# by the caller as pooler kernel + nn.Linear instead.
MAX_LABELS = 128
# tl.dot needs every dimension of a tile to be at least 16.
MIN_BLOCK_L = 16


class HeadConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Keyed by the largest M each row serves, like the pooler's table. block_n and block_k are the same
# in every row of a dtype's table, so both reductions (over K for the pooled chunk, over N for the
# logits) run in the same order whatever the batch: a row's logits do not depend on its batch.
# The whole grid is cdiv(M, BLOCK_M) programs, each reading all of W1; at small M that is one
# program streaming the weight, the price of keeping the pooled rows on chip (see NOTES.md).
_HALF_CONFIGS = (
    (16, HeadConfig(16, 64, 64, 4, 3)),
    (64, HeadConfig(32, 64, 64, 4, 3)),
    (None, HeadConfig(64, 64, 64, 4, 3)),
)
_FP32_CONFIGS = (
    (16, HeadConfig(16, 64, 32, 4, 3)),
    (64, HeadConfig(32, 64, 32, 4, 3)),
    (None, HeadConfig(64, 64, 32, 4, 3)),
)
HEAD_CONFIGS = {
    torch.float16: _HALF_CONFIGS,
    torch.bfloat16: _HALF_CONFIGS,
    torch.float32: _FP32_CONFIGS,
}


@functools.lru_cache(maxsize=None)
def pick_head_config(m: int, dtype: torch.dtype) -> HeadConfig:
    for max_m, config in HEAD_CONFIGS[dtype]:
        if max_m is None or m <= max_m:
            return config
    raise AssertionError("unreachable: the last row of every table has max_m=None")


def block_l_for(num_labels: int) -> int:
    return max(MIN_BLOCK_L, triton.next_power_of_2(num_labels))


@triton.jit
def classifier_head_fwd_kernel(
    x_ptr,  # [M, K] first-token rows, any strides
    w1_ptr,  # [N, K] pooler / dense weight (nn.Linear layout), any strides
    b1_ptr,  # [N] (unused when HAS_BIAS1 is False)
    w2_ptr,  # [L, N] classifier weight (nn.Linear layout), any strides
    b2_ptr,  # [L] (unused when HAS_BIAS2 is False)
    out_ptr,  # [M, L] logits, contiguous rows
    M,
    N,
    K,
    L,
    stride_xm,
    stride_xk,
    stride_w1n,
    stride_w1k,
    stride_b1,
    stride_w2l,
    stride_w2n,
    stride_b2,
    stride_om,
    HAS_BIAS1: tl.constexpr,
    HAS_BIAS2: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    i_m = tl.program_id(0)
    # int64: row offsets are B * S * H elements away, past 2^31 for long sequences at large batch
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_l = tl.arange(0, BLOCK_L)
    m_m = o_m < M
    m_l = o_l < L

    logits = tl.zeros((BLOCK_M, BLOCK_L), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < N
        b_p = pooled_tile(
            x_ptr, w1_ptr, b1_ptr, o_m, o_n, m_m, m_n, K,
            stride_xm, stride_xk, stride_w1n, stride_w1k, stride_b1,
            HAS_BIAS1, ACTIVATION, DOT_PRECISION, UPCAST_OPERANDS, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        # Columns past N hold act(0); the zero-filled W2 rows below cancel them whatever act(0) is.
        b_p = b_p.to(out_ptr.dtype.element_ty)
        p_w2 = w2_ptr + o_n[:, None] * stride_w2n + o_l[None, :] * stride_w2l
        b_w2 = tl.load(p_w2, mask=m_n[:, None] & m_l[None, :], other=0.0)
        if UPCAST_OPERANDS:
            # interpreter only, as in pooled_tile: bf16 x bf16 products are exact in fp32
            b_p = b_p.to(tl.float32)
            b_w2 = b_w2.to(tl.float32)
        logits = tl.dot(b_p, b_w2, logits, input_precision=DOT_PRECISION)

    if HAS_BIAS2:
        logits += tl.load(b2_ptr + o_l * stride_b2, mask=m_l, other=0.0).to(tl.float32)[None, :]
    p_out = out_ptr + o_m[:, None] * stride_om + o_l[None, :]
    tl.store(p_out, logits.to(out_ptr.dtype.element_ty), mask=m_m[:, None] & m_l[None, :])


def classifier_head_fwd(
    x_cls: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    activation: str,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the fused head; inputs are validated by ``bertpool_fast.fused_classifier_head``.

    x_cls: [M, K] (any strides), w1: [N, K], b1: [N] or None, w2: [L, N] with L <= MAX_LABELS,
    b2: [L] or None; all of one dtype and device. Returns [M, L] logits in that dtype.
    """
    m, k = x_cls.shape
    n = w1.shape[0]
    n_labels = w2.shape[0]
    if n_labels > MAX_LABELS:
        raise ValueError(f"classifier_head_fwd handles at most {MAX_LABELS} labels, got {n_labels}")
    if out is None:
        out = torch.empty((m, n_labels), dtype=x_cls.dtype, device=x_cls.device)
    if m == 0 or n_labels == 0:
        return out
    # n == 0 or k == 0 need no special case: the loops run zero times (logits = b2, or act(b1) W2^T)
    config = pick_head_config(m, x_cls.dtype)
    is_fp32 = x_cls.dtype == torch.float32
    grid = (triton.cdiv(m, config.block_m),)
    classifier_head_fwd_kernel[grid](
        x_cls,
        w1,
        b1 if b1 is not None else w1,  # any valid pointer; never read without HAS_BIAS1
        w2,
        b2 if b2 is not None else w2,
        out,
        m,
        n,
        k,
        n_labels,
        x_cls.stride(0),
        x_cls.stride(1),
        w1.stride(0),
        w1.stride(1),
        b1.stride(0) if b1 is not None else 0,
        w2.stride(0),
        w2.stride(1),
        b2.stride(0) if b2 is not None else 0,
        out.stride(0),
        HAS_BIAS1=b1 is not None,
        HAS_BIAS2=b2 is not None,
        ACTIVATION=activation,
        DOT_PRECISION=fp32_dot_precision() if is_fp32 else "ieee",
        UPCAST_OPERANDS=interpreter_enabled() and x_cls.dtype == torch.bfloat16,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BLOCK_L=block_l_for(n_labels),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


# Label counts compiled ahead by ``inspect``: binary / NSP (2 -> BLOCK_L 16), a typical multi-class
# head (up to 32) and the widest the kernel takes.
INSPECTED_BLOCK_L = (16, 32, MAX_LABELS)


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the head kernel, for a few label widths, as compile cases."""
    from .inspection import TRITON_DTYPE, KernelCase

    cases = []
    for dtype, table in HEAD_CONFIGS.items():
        t = TRITON_DTYPE[dtype]
        for max_m, cfg in table:
            bucket = f"M<={max_m}" if max_m is not None else "M>64"
            for block_l in INSPECTED_BLOCK_L:
                cases.append(
                    KernelCase(
                        name=f"classifier_head_fwd {t} {bucket} L<={block_l}",
                        kernel=classifier_head_fwd_kernel,
                        signature={
                            "x_ptr": f"*{t}", "w1_ptr": f"*{t}", "b1_ptr": f"*{t}",
                            "w2_ptr": f"*{t}", "b2_ptr": f"*{t}", "out_ptr": f"*{t}",
                            "M": "i32", "N": "i32", "K": "i32", "L": "i32",
                            "stride_xm": "i64", "stride_xk": "i32", "stride_w1n": "i32",
                            "stride_w1k": "i32", "stride_b1": "i32", "stride_w2l": "i32",
                            "stride_w2n": "i32", "stride_b2": "i32", "stride_om": "i32",
                        },
                        constexprs={
                            "HAS_BIAS1": True, "HAS_BIAS2": True, "ACTIVATION": "tanh",
                            "DOT_PRECISION": "ieee", "UPCAST_OPERANDS": False,
                            "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                            "BLOCK_K": cfg.block_k, "BLOCK_L": block_l,
                        },
                        num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages,
                        dtype=dtype,
                        expects_tensor_cores=dtype != torch.float32,
                    )
                )
    return cases
