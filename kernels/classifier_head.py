"""Fused classification head: ``logits = act(X @ W1.T + b1) @ W2.T + b2`` without the pooled rows
ever reaching memory.

This is BERT's pooler followed by its classifier (``BertForSequenceClassification``,
``BertForNextSentencePrediction``; dropout is the identity in eval mode), and equally Roberta's
``RobertaClassificationHead`` (``dense`` -> tanh -> ``out_proj`` on the first token).

Both GEMMs meet in ``head_chunk``: a [BLOCK_M, BLOCK_N] chunk of the pooled rows comes from
``pooled_tile`` (the pooler kernel's own K loop, bias and activation), is rounded to the input
dtype and multiplied by the matching [BLOCK_N, L] slice of W2 into an fp32 [BLOCK_M, BLOCK_L]
block. Two launch shapes use it:

* fused (large M): one program per BLOCK_M rows walks all of N, chaining the chunks into one
  logits accumulator; one launch, only the logits are written.
* split-N (small M): one program per (N chunk, M tile) writes its chunk's partial logits to an fp32
  scratch [N / BLOCK_N, M, L]; a second, tiny kernel sums them over the chunks in chunk order,
  adds b2 and stores. No atomics: the order is fixed, so results are bitwise reproducible.

Precision: the pooled chunk is rounded to the input dtype before the second GEMM. Eager PyTorch
stores ``pooled_output`` in the input dtype too, so this reproduces eager's one intermediate
rounding (keeping fp32 would differ from eager by as much as eager differs from exact), and it lets
the second GEMM run fp16/bf16 operands on tensor cores like the first. For fp32 inputs nothing is
rounded.

Determinism, not batch invariance: the same inputs give the same bits on every run, but a row's
logits may differ in the last bits with the batch it arrives in. The two paths add the N chunks
with different roundings (the fused path accumulates inside the MMA, the split path adds rounded
fp32 partials), and on sm_90 tiles shorter than 64 rows run mma.sync where 64-row tiles run wgmma.
For batch-invariant pooled rows use ``fused_pooler(..., batch_invariant=True)`` and ``F.linear``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch, cdiv
from .pooler import fp32_dot_precision, pooled_tile
from .precision import round_to
from .runtime import device_of, interpreter_enabled
from .tiles import pick_tile

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
    split_n: bool  # grid over (N chunks, M tiles) + a reduction launch, else one fused launch


# Keyed by the largest M each row serves, like the pooler's table.
#   * M <= 256, split-N: the fused grid is cdiv(M, BLOCK_M) programs, each streaming all of W1
#     (1.2 MB at H = 768): at B = 1..16 that is one SM's bandwidth for the whole weight read, the
#     cost of the op. Split over N chunks the read is spread over N / 64 programs per M tile (12
#     at H = 768, 64 at H = 4096), as the pooler's small-batch tiles spread it. The price: a second
#     launch (a [M, L] sum, tiny) and 8 * (N / 64) * M * L bytes of fp32 scratch written and read
#     (6 KB at M = 16, L = 2, H = 768; 3 MB at M = 256, L = 128), small against the weight read
#     up to a few hundred rows. Above 256 rows the fused grid has at least 5 programs sharing an
#     L2-resident W1 and the scratch grows with M * L, so one launch wins (to be measured).
#   * 8 warps wherever a 128-label fp32 block sits beside a pooled chunk of 64 rows: at 4 warps the
#     fused 64-row tile spilled (up to 2.4 KB on sm_80). fp32 tiles stop at 32 rows: its FMA dot
#     keeps operands in registers too, and 64 fp32 rows spill even at 8 warps.
#   * the fused half row takes 2 stages: with 3, Triton 3.6 spills 8 B on sm_80 at 128 labels.
#   * block_n and block_k are one value per dtype: block_n is the split path's chunk and the fused
#     path's step, block_k the pooled K order, so the head sums K in one order at every M.
_HALF_CONFIGS = (
    (16, HeadConfig(16, 64, 64, 4, 4, True)),
    (64, HeadConfig(32, 64, 64, 4, 4, True)),
    (256, HeadConfig(64, 64, 64, 8, 3, True)),
    (None, HeadConfig(64, 64, 64, 8, 2, False)),
)
#   * fp32 takes fewer than 4 stages: with 4, Triton 3.6 miscompiles the split rows when
#     hidden_states' row stride is a multiple of 16 and K is not (each thread's K offset into x is
#     corrupted, as in the pooler's fp32 tile; NOTES.md, "fp32 wrong result"), and the fused row's
#     LLVM IR carries the same poisoned vector shift. tests/test_compiled_code.py looks for it in
#     every fp32 tile. The fused row takes 2: with 3 it spills 4 B on sm_90 (Triton 3.9).
#   * the fused fp32 row is 16 rows high: at 32, ptxas packs the 16-label case into 80 registers
#     on sm_90 and spills 4 B with Triton 3.8 (the release torch 2.14 brings); 16 rows spill with
#     none of 3.6, 3.8 and 3.9, and give M > 256 twice the programs.
_FP32_CONFIGS = (
    (16, HeadConfig(16, 64, 32, 4, 3, True)),
    (256, HeadConfig(32, 64, 32, 8, 3, True)),
    (None, HeadConfig(16, 64, 32, 8, 2, False)),
)
HEAD_CONFIGS = {
    torch.float16: _HALF_CONFIGS,
    torch.bfloat16: _HALF_CONFIGS,
    torch.float32: _FP32_CONFIGS,
}
# The largest M the split-N path serves (the last split row of every table).
SPLIT_MAX_M = 256
# The reduction kernel is a few loads and adds per logit: two warps, loads double-buffered (with
# four, Triton 3.6 spills 8 B on sm_80 for 16 x 128 fp32 logits). At most 32 rows a program: a
# 64 x 128 fp32 sum plus the next chunk's loads in flight spills.
REDUCE_NUM_WARPS = 2
REDUCE_NUM_STAGES = 2
REDUCE_MAX_BLOCK_M = 32


@functools.cache
def pick_head_config(m: int, dtype: torch.dtype) -> HeadConfig:
    return pick_tile(HEAD_CONFIGS[dtype], m)


@functools.cache  # num_labels <= MAX_LABELS; triton.next_power_of_2 is slow on the host
def block_l_for(num_labels: int) -> int:
    return max(MIN_BLOCK_L, triton.next_power_of_2(num_labels))


@triton.jit
def head_chunk(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    acc,
    o_m,
    o_n,
    o_l,
    m_m,
    m_n,
    m_l,
    K,
    stride_xm,
    stride_xk,
    stride_w1n,
    stride_w1k,
    stride_b1,
    stride_w2l,
    stride_w2n,
    HAS_BIAS1: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + round(act(X[o_m] @ W1[o_n].T + b1[o_n])) @ W2[:, o_n].T, fp32 [BLOCK_M, BLOCK_L].

    The pooled chunk is rounded to the input dtype (x_ptr's), as eager stores pooled_output.
    """
    b_p = pooled_tile(
        x_ptr, w1_ptr, b1_ptr, o_m, o_n, m_m, m_n, K,
        stride_xm, stride_xk, stride_w1n, stride_w1k, stride_b1,
        HAS_BIAS1, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    # Columns past N hold act(0); the zero-filled W2 rows below cancel them whatever act(0) is.
    # under the interpreter with bf16 its conversion truncates: round_to rounds to nearest first
    b_p = round_to(b_p, x_ptr.dtype.element_ty, INTERPRETED_BF16)
    p_w2 = w2_ptr + o_n[:, None] * stride_w2n + o_l[None, :] * stride_w2l
    b_w2 = tl.load(p_w2, mask=m_n[:, None] & m_l[None, :], other=0.0)
    if INTERPRETED_BF16:
        # interpreter only, as in pooled_tile: bf16 x bf16 products are exact in fp32
        b_p = b_p.to(tl.float32)
        b_w2 = b_w2.to(tl.float32)
    return tl.dot(b_p, b_w2, acc, input_precision=DOT_PRECISION)


@triton.jit
def store_logits(
    logits,
    b2_ptr,
    out_ptr,
    o_m,
    o_l,
    m_m,
    m_l,
    stride_b2,
    stride_om,
    HAS_BIAS2: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
):
    """out[o_m, o_l] = round(logits + b2): the one epilogue of both paths."""
    if HAS_BIAS2:
        logits += tl.load(b2_ptr + o_l * stride_b2, mask=m_l, other=0.0).to(tl.float32)[None, :]
    p_out = out_ptr + o_m[:, None] * stride_om + o_l[None, :]
    b_out = round_to(logits, out_ptr.dtype.element_ty, INTERPRETED_BF16)
    tl.store(p_out, b_out, mask=m_m[:, None] & m_l[None, :])


@triton.jit
def classifier_head_fwd_kernel(
    x_ptr,  # [M, K] first-token rows (or [M, S, K], position 0 read), any strides
    w1_ptr,  # [N, K] pooler / dense weight (nn.Linear layout), any strides
    b1_ptr,  # [N] (unused when HAS_BIAS1 is False)
    w2_ptr,  # [L, N] classifier weight (nn.Linear layout), any strides
    b2_ptr,  # [L] (unused when HAS_BIAS2 is False)
    out_ptr,  # [M, L] logits, unit column stride
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
    INTERPRETED_BF16: tl.constexpr,
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
        logits = head_chunk(
            x_ptr, w1_ptr, b1_ptr, w2_ptr, logits, o_m, o_n, o_l, m_m, o_n < N, m_l, K,
            stride_xm, stride_xk, stride_w1n, stride_w1k, stride_b1, stride_w2l, stride_w2n,
            HAS_BIAS1, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
    store_logits(logits, b2_ptr, out_ptr, o_m, o_l, m_m, m_l, stride_b2, stride_om, HAS_BIAS2,
                 INTERPRETED_BF16)  # fmt: skip


@triton.jit
def classifier_head_split_kernel(
    x_ptr,  # [M, K] first-token rows (or [M, S, K], position 0 read), any strides
    w1_ptr,  # [N, K], any strides
    b1_ptr,  # [N] (unused when HAS_BIAS1 is False)
    w2_ptr,  # [L, N], any strides
    part_ptr,  # [cdiv(N, BLOCK_N), M, L] fp32 partial logits, contiguous
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
    HAS_BIAS1: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # N chunks vary fastest, as in the pooler: programs running together share the same X rows.
    i_n = tl.program_id(0)
    i_m = tl.program_id(1)
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_l = tl.arange(0, BLOCK_L)
    m_m = o_m < M
    m_l = o_l < L
    zero = tl.zeros((BLOCK_M, BLOCK_L), dtype=tl.float32)
    part = head_chunk(
        x_ptr, w1_ptr, b1_ptr, w2_ptr, zero, o_m, o_n, o_l, m_m, o_n < N, m_l, K,
        stride_xm, stride_xk, stride_w1n, stride_w1k, stride_b1, stride_w2l, stride_w2n,
        HAS_BIAS1, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    p_part = part_ptr + (i_n * M + o_m)[:, None] * L + o_l[None, :]
    tl.store(p_part, part, mask=m_m[:, None] & m_l[None, :])


@triton.jit
def classifier_head_reduce_kernel(
    part_ptr,  # [num_chunks, M, L] fp32 partial logits, contiguous
    b2_ptr,  # [L] (unused when HAS_BIAS2 is False)
    out_ptr,  # [M, L] logits, unit column stride
    M,
    L,
    num_chunks,
    stride_b2,
    stride_om,
    HAS_BIAS2: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    i_m = tl.program_id(0)
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_l = tl.arange(0, BLOCK_L)
    m_m = o_m < M
    m_l = o_l < L
    m_ml = m_m[:, None] & m_l[None, :]
    p_part = part_ptr + o_m[:, None] * L + o_l[None, :]
    logits = tl.zeros((BLOCK_M, BLOCK_L), dtype=tl.float32)
    # chunk order, one add at a time: the same bits on every run (no atomics, no tree)
    for _ in range(num_chunks):
        logits += tl.load(p_part, mask=m_ml, other=0.0)
        p_part += M * L
    store_logits(logits, b2_ptr, out_ptr, o_m, o_l, m_m, m_l, stride_b2, stride_om, HAS_BIAS2,
                 INTERPRETED_BF16)  # fmt: skip


_launch_head_fwd = CachedLaunch(classifier_head_fwd_kernel)
_launch_head_split = CachedLaunch(classifier_head_split_kernel)
_launch_head_reduce = CachedLaunch(classifier_head_reduce_kernel)


def classifier_head_fwd(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    activation: str,
    out: Optional[torch.Tensor] = None,
    config: Optional[HeadConfig] = None,
) -> torch.Tensor:
    """Launch the head; inputs are validated by ``bertpool_fast.fused_classifier_head``.

    x: the first-token rows, either ``hidden_states`` [M, S, K] itself (position 0 of each sequence
    is read through ``stride(0)`` and ``stride(-1)``, as ``pooler_fwd`` reads it: no ``[:, 0]`` view
    is built on the launch path) or an [M, K] tensor of rows; any strides. w1: [N, K], b1: [N] or
    None, w2: [L, N] with L <= MAX_LABELS, b2: [L] or None; all of one dtype and device. Returns
    [M, L] logits in that dtype. M <= ``SPLIT_MAX_M`` runs split over N (two launches, fp32
    scratch), larger M one fused launch. config overrides the table's pick (tests).
    """
    m, k = x.shape[0], x.shape[-1]
    n = w1.shape[0]
    n_labels = w2.shape[0]
    dtype = x.dtype
    if n_labels > MAX_LABELS:
        raise ValueError(f"classifier_head_fwd handles at most {MAX_LABELS} labels, got {n_labels}")
    if out is None:
        out = torch.empty((m, n_labels), dtype=dtype, device=x.device)
    if out.shape != (m, n_labels) or (n_labels > 1 and out.stride(1) != 1):
        raise ValueError(f"out must be [{m}, {n_labels}] with unit column stride, got "
                         f"shape {tuple(out.shape)}, strides {out.stride()}")  # fmt: skip
    if m == 0 or n_labels == 0:
        return out
    # k == 0 needs no special case: the K loop runs zero times (pooled = act(b1)). n == 0 takes
    # the fused path, whose N loop then runs zero times (logits = b2): the split grid would be empty.
    if config is None:
        config = pick_head_config(m, dtype)
    interpreted_bf16 = interpreter_enabled() and dtype == torch.bfloat16
    dot_precision = fp32_dot_precision() if dtype == torch.float32 else "ieee"
    block_l = block_l_for(n_labels)
    has_b1, has_b2 = b1 is not None, b2 is not None
    stride_b1 = b1.stride(0) if has_b1 else 0
    stride_b2 = b2.stride(0) if has_b2 else 0
    b1_arg = b1 if has_b1 else w1  # any valid pointer; never read without HAS_BIAS1
    b2_arg = b2 if has_b2 else w2
    with device_of(x):
        if not config.split_n or n == 0:
            _launch_head_fwd(
                (cdiv(m, config.block_m),),
                (x, w1, b1_arg, w2, b2_arg, out, m, n, k, n_labels,
                 x.stride(0), x.stride(-1), w1.stride(0), w1.stride(1), stride_b1,
                 w2.stride(0), w2.stride(1), stride_b2, out.stride(0)),
                # HAS_BIAS1, HAS_BIAS2, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M/N/K/L
                (has_b1, has_b2, activation, dot_precision, interpreted_bf16,
                 config.block_m, config.block_n, config.block_k, block_l),
                config.num_warps, config.num_stages,
            )  # fmt: skip
            return out
        num_chunks = cdiv(n, config.block_n)
        # every element is written by the split grid, which covers all (chunk, row, label)
        partial = torch.empty((num_chunks, m, n_labels), dtype=torch.float32, device=x.device)
        _launch_head_split(
            (num_chunks, cdiv(m, config.block_m)),
            (x, w1, b1_arg, w2, partial, m, n, k, n_labels,
             x.stride(0), x.stride(-1), w1.stride(0), w1.stride(1), stride_b1,
             w2.stride(0), w2.stride(1)),
            # HAS_BIAS1, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M/N/K/L
            (has_b1, activation, dot_precision, interpreted_bf16,
             config.block_m, config.block_n, config.block_k, block_l),
            config.num_warps, config.num_stages,
        )  # fmt: skip
        reduce_block_m = min(config.block_m, REDUCE_MAX_BLOCK_M)
        _launch_head_reduce(
            (cdiv(m, reduce_block_m),),
            (partial, b2_arg, out, m, n_labels, num_chunks, stride_b2, out.stride(0)),
            # HAS_BIAS2, INTERPRETED_BF16, BLOCK_M, BLOCK_L
            (has_b2, interpreted_bf16, reduce_block_m, block_l),
            REDUCE_NUM_WARPS, REDUCE_NUM_STAGES,
        )  # fmt: skip
    return out


# Label counts compiled ahead by ``inspect``: binary / NSP (2 -> BLOCK_L 16), a typical multi-class
# head (up to 32) and the widest the kernel takes.
INSPECTED_BLOCK_L = (16, 32, MAX_LABELS)


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the head's kernels, for a few label widths.

    As for the pooler, the signature is what Triton's launcher builds for the usual call
    (``hidden_states`` contiguous in its last dimension, contiguous weights and biases, 16-aligned
    allocations, H a multiple of 16): unit strides are constants, 16-divisible pointers and sizes
    carry the divisibility hint. The label count L and the logits row stride (= L) carry none.
    A split-N row of the table is two kernels, the split GEMM and the reduction; a fused row one.
    """
    from .inspection import TRITON_DTYPE, KernelCase

    cases = []
    for dtype, table in HEAD_CONFIGS.items():
        t = TRITON_DTYPE[dtype]
        previous = 0
        for max_m, cfg in table:
            bucket = f"M<={max_m}" if max_m is not None else f"M>{previous}"
            previous = max_m
            for block_l in INSPECTED_BLOCK_L:
                tags = {"max_m": max_m, "block_l": block_l, "split_n": cfg.split_n}
                # what the fused and split kernels share: the two GEMMs' operands
                gemm_sig = {
                    "x_ptr": f"*{t}", "w1_ptr": f"*{t}", "b1_ptr": f"*{t}", "w2_ptr": f"*{t}",
                    "M": "i32", "N": "i32", "K": "i32", "L": "i32",
                    "stride_xm": "i64", "stride_w1n": "i32", "stride_w2l": "i32",
                }  # fmt: skip
                gemm_const = {
                    "stride_xk": 1, "stride_w1k": 1, "stride_b1": 1, "stride_w2n": 1,
                    "HAS_BIAS1": True, "ACTIVATION": "tanh", "DOT_PRECISION": "ieee",
                    "INTERPRETED_BF16": False, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                    "BLOCK_K": cfg.block_k, "BLOCK_L": block_l,
                }  # fmt: skip
                gemm_div = ("x_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "N", "K", "stride_xm",
                            "stride_w1n", "stride_w2l")  # fmt: skip
                gemm = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, dtype=dtype,
                            expects_tensor_cores=dtype != torch.float32, tags=tags)  # fmt: skip
                if not cfg.split_n:
                    cases.append(KernelCase(
                        name=f"classifier_head_fwd {t} {bucket} L<={block_l}",
                        kernel=classifier_head_fwd_kernel,
                        signature={**gemm_sig, "b2_ptr": f"*{t}", "out_ptr": f"*{t}",
                                   "stride_om": "i32"},
                        constexprs={**gemm_const, "stride_b2": 1, "HAS_BIAS2": True},
                        divisible_by_16=gemm_div + ("b2_ptr", "out_ptr"),
                        **gemm,
                    ))  # fmt: skip
                    continue
                cases.append(KernelCase(
                    name=f"classifier_head_split {t} {bucket} L<={block_l}",
                    kernel=classifier_head_split_kernel,
                    signature={**gemm_sig, "part_ptr": "*fp32"},
                    constexprs=gemm_const,
                    divisible_by_16=gemm_div + ("part_ptr",),
                    **gemm,
                ))  # fmt: skip
                cases.append(KernelCase(
                    name=f"classifier_head_reduce {t} {bucket} L<={block_l}",
                    kernel=classifier_head_reduce_kernel,
                    signature={"part_ptr": "*fp32", "b2_ptr": f"*{t}", "out_ptr": f"*{t}",
                               "M": "i32", "L": "i32", "num_chunks": "i32", "stride_om": "i32"},
                    constexprs={"stride_b2": 1, "HAS_BIAS2": True, "INTERPRETED_BF16": False,
                                "BLOCK_M": min(cfg.block_m, REDUCE_MAX_BLOCK_M),
                                "BLOCK_L": block_l},
                    divisible_by_16=("part_ptr", "b2_ptr", "out_ptr"),
                    num_warps=REDUCE_NUM_WARPS,
                    num_stages=REDUCE_NUM_STAGES,
                    dtype=dtype,
                    # loads, adds and a store, no tile shared between threads: no shared memory
                    tags={**tags, "uses_shared_memory": False},
                ))  # fmt: skip
    return cases
