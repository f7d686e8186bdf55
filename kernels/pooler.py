"""Fused pooler forward: ``out = act(hidden_states[:, 0] @ weight.T + bias)`` in one launch.

The kernel takes the first-token rows as a strided [M, K] view of ``hidden_states`` (row stride =
``hidden_states.stride(0)``, column stride = ``hidden_states.stride(2)``), so the gather costs
nothing and no [B, S, H] tensor is copied. ``weight`` is read in ``nn.Linear`` layout [N, K] through
its strides. Accumulation is fp32 on tensor cores, starting from the bias (fp16/bf16; fp32 adds it
after the K loop); the activation is applied to the fp32 accumulator and the result is cast once,
at the store, to the output dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait
from triton.tools.tensor_descriptor import TensorDescriptor

from . import pooler_tables as _pooler_tables
from .activations import apply_activation
from .descriptor_launch import EncodedDescriptorLaunch
from .launch import CachedLaunch
from .precision import round_to
from .runtime import device_of, interpreter_enabled
from .tiles import TileConfig, pick_tile

# Tile tables, per (architecture, dtype), keyed by the largest M (batch) each row serves. They live
# in pooler_tables.py as data, which ``python -m bench.tune`` rewrites from measurements on a GPU.
# No autotuning at run time: the choice is a pure function of (M, dtype, the device's compute
# capability), so it costs nothing on the launch path, never benchmarks at first call, and two runs
# always pick the same tiles. The hand-written default table's reasoning:
#   * M <= 16 (the common inference case): one M tile and a narrow N tile, so the weight read
#     (the whole cost at small batch) is spread over N / 32 programs: 24 for H = 768, 128 for 4096.
#   * block_k is the same in every row of a dtype's table, so the K reduction runs in the same
#     order whatever the batch (batch invariance needs more than that; see below).
#   * fp32 tiles are half as deep in K: same bytes per stage as fp16, and sm_80's 164 KiB of shared
#     memory still holds every pipeline.
#   * the fp32 32x64 tile (M <= 64) has 3 stages, not 4, in every table: Triton 3.6 miscompiles it
#     with 4 stages when hidden_states' row stride is a multiple of 16 and K is not (the LLVM it
#     bundles corrupts each thread's K offset into x; NOTES.md, "fp32 wrong result").
#     tests/test_gpu_sweep.py runs the tiles on a GPU; tests/test_compiled_code.py looks for the
#     fault in every fp32 tile, tuning candidates included.
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
POOLER_TABLES = {
    arch: {dtype: tables[name] for dtype, name in DTYPE_NAMES.items()}
    for arch, tables in _pooler_tables.TABLES.items()
}
POOLER_CONFIGS = POOLER_TABLES["default"]

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
def table_arch(device: torch.device) -> str:
    """The tile table ("sm90", "sm80", ..., "default") for a device; read once per device.

    CPU tensors and the interpreter take "default": what the CPU suite tests is what any GPU
    without a table of its own runs.
    """
    if device.type != "cuda" or interpreter_enabled():
        return "default"
    key = arch_key(*torch.cuda.get_device_capability(device))
    return key if key in POOLER_TABLES else "default"


def arch_has_pdl(arch: str) -> bool:
    """Whether a table key's GPUs have programmatic dependent launch (sm_90 and later)."""
    return arch.startswith("sm") and arch[2:].isdigit() and int(arch[2:]) >= 90


def arch_key(major: int, minor: int) -> str:
    """A compute capability's key in the tables: (9, 0) -> "sm90". Only an exact match has a
    table of its own: sm_86 / sm_89 have less shared memory per block than sm_80."""
    return f"sm{major}{minor}"


@functools.cache
def pick_config(
    m: int, dtype: torch.dtype, batch_invariant: bool = False, arch: str = "default"
) -> TileConfig:
    if batch_invariant:
        # one table for every architecture: its guarantee is a property of the tiles, not a speed
        return pick_tile(BATCH_INVARIANT_CONFIGS[dtype], m)
    return pick_tile(POOLER_TABLES[arch][dtype], m)


@triton.jit
def dot_k_range(
    x_ptr,
    w_ptr,
    o_m,
    o_n,
    m_m,
    m_n,
    acc,
    k_lo,
    k_hi,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    SWAP_AB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + sum over k in [k_lo, k_hi) of X[o_m, k] * W[o_n, k], fp32, in BLOCK_K chunks in K
    order.

    [BLOCK_M, BLOCK_N] (acc's shape); under SWAP_AB its transpose [BLOCK_N, BLOCK_M], computed as
    W @ X^T so that the N tile fills the MMA's rows (wgmma needs 64 of them) when M is a handful of
    rows.
    """
    o_k = k_lo + tl.arange(0, BLOCK_K)
    if SWAP_AB:
        p_w = w_ptr + o_n[:, None] * stride_wn + o_k[None, :] * stride_wk
        p_x = x_ptr + o_m[None, :] * stride_xm + o_k[:, None] * stride_xk
    else:
        p_x = x_ptr + o_m[:, None] * stride_xm + o_k[None, :] * stride_xk
        p_w = w_ptr + o_n[None, :] * stride_wn + o_k[:, None] * stride_wk
    for k0 in range(k_lo, k_hi, BLOCK_K):
        m_k = (k0 + tl.arange(0, BLOCK_K)) < k_hi
        if SWAP_AB:
            b_w = tl.load(p_w, mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_x = tl.load(p_x, mask=m_k[:, None] & m_m[None, :], other=0.0)
        else:
            b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)
            b_w = tl.load(p_w, mask=m_k[:, None] & m_n[None, :], other=0.0)
        if INTERPRETED_BF16:
            # Only under the CPU interpreter, whose tl.dot mishandles bfloat16 operands. A product
            # of two bf16 values is exact in fp32, so this computes what the tensor cores do.
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        if SWAP_AB:
            acc = tl.dot(b_w, b_x, acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(b_x, b_w, acc, input_precision=DOT_PRECISION)
        p_x += BLOCK_K * stride_xk
        p_w += BLOCK_K * stride_wk
    return acc


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
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """act(X[o_m] @ W[o_n].T + b[o_n]) as an fp32 [BLOCK_M, BLOCK_N] block, never stored.

    Shared by the pooler (which stores it) and the classifier head (which feeds it to a second
    GEMM), so both run the very same K loop. o_m / o_n are int64 offsets; m_m / m_n their bounds.
    """
    acc = bias_accumulator(b_ptr, o_n, m_n, stride_b, HAS_BIAS, False, BLOCK_M, BLOCK_N)
    acc = dot_k_range(
        x_ptr, w_ptr, o_m, o_n, m_m, m_n, acc, 0, K, stride_xm, stride_xk, stride_wn, stride_wk,
        DOT_PRECISION, INTERPRETED_BF16, False, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    return bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION, False,
                               x_ptr.dtype.element_ty)  # fmt: skip


@triton.jit
def bias_accumulator(
    b_ptr, o_n, m_n, stride_b, HAS_BIAS: tl.constexpr, SWAP_AB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The K sum's starting value: b[o_n] in fp32 on every row of the tile (N runs along the rows
    under SWAP_AB) for fp16/bf16, zeros for fp32, without a bias or where m_n is False.

    Why the sum starts from the bias: added in the epilogue, the bias load is the first thing a
    program does after its last MMA, so each program waits one more memory latency (the bias is
    as cold as the weight) at its end. Loaded here, it is in flight with the K loop's first
    copies, and it costs no registers across the loop: the accumulator holds it. The bias is one
    more term of the same fp32 sum, in a fixed place (first), so the error bound is unchanged.
    Not for fp32: its FMA (or TF32) tiles hold their operands in registers, and the largest sit
    at 255 of them, where an accumulator live before the K loop's prologue spills; there the K
    loop is long and one latency is a small part of it. bias_and_activation adds it instead.
    """
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_BIAS and b_ptr.dtype.element_ty != tl.float32:
        acc = add_bias(acc, b_ptr, o_n, m_n, stride_b, SWAP_AB)
    return acc


@triton.jit
def add_bias(acc, b_ptr, o_n, m_n, stride_b, SWAP_AB: tl.constexpr):
    """acc + b[o_n] on every row of acc (N runs along acc's rows under SWAP_AB), in fp32."""
    b = tl.load(b_ptr + o_n * stride_b, mask=m_n, other=0.0).to(tl.float32)
    if SWAP_AB:
        return acc + b[:, None]
    else:
        return acc + b[None, :]


@triton.jit
def bias_and_activation(
    acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    SWAP_AB: tl.constexpr, ROUNDED_TO: tl.constexpr,
):  # fmt: skip
    """act(acc + b[o_n]) on a K sum that started from bias_accumulator, whose bias it adds where
    that did not (fp32); the result is next rounded to ROUNDED_TO, which sets how precise the
    activation must be."""
    if HAS_BIAS and b_ptr.dtype.element_ty == tl.float32:
        acc = add_bias(acc, b_ptr, o_n, m_n, stride_b, SWAP_AB)
    return apply_activation(acc, ACTIVATION, ROUNDED_TO)


@triton.jit
def store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16: tl.constexpr):
    """Store an fp32 [BLOCK_M, BLOCK_N] result into out[o_m, o_n], cast once, masked to [M, N]."""
    # under the interpreter with bf16 the cast truncates: round_to rounds to nearest first
    tl.store(out_ptr + o_m[:, None] * stride_om + o_n[None, :],
             round_to(acc, out_ptr.dtype.element_ty, INTERPRETED_BF16),
             mask=m_m[:, None] & m_n[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["M"])
def pooler_fwd_kernel(
    x_ptr,  # [M, K] first-token rows, any strides
    w_ptr,  # [N, K] nn.Linear weight, any strides
    b_ptr,  # [N] bias (unused when HAS_BIAS is False)
    out_ptr,  # [M, N] output, contiguous
    ws_ptr,  # [SPLIT_K, M, N] fp32 partial sums (unused when SPLIT_K == 1)
    ticket_ptr,  # [tiles] int32, zero between launches (unused when SPLIT_K == 1)
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
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr = 1,
    SWAP_AB: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    if PDL:  # launched early (TileConfig.pdl; see above pooler_fwd): wait for the previous kernel
        gdc_wait()
    # N tiles vary fastest, so programs that run together share the same X rows and sweep the
    # (L2-resident) weight. M is not specialized (do_not_specialize): one compile serves M = 1, 8
    # and 16 alike, and the value only bounds masks.
    i_n = tl.program_id(0)
    i_m = tl.program_id(1)
    # int64: row offsets are B * S * H elements away, past 2^31 for long sequences at large batch
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N
    # Split K: program i_s takes the i_s-th of SPLIT_K runs of whole BLOCK_K chunks.
    i_s = tl.program_id(2)
    k_run = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = i_s * k_run
    k_hi = tl.minimum(K, k_lo + k_run)
    # split 0's partial starts from the bias, the others from zero: the bias is summed once
    m_bias = m_n
    if SPLIT_K > 1:
        m_bias = o_n < tl.where(i_s == 0, N, 0)
    acc = bias_accumulator(b_ptr, o_n, m_bias, stride_b, HAS_BIAS, SWAP_AB, BLOCK_M, BLOCK_N)
    acc = dot_k_range(
        x_ptr, w_ptr, o_m, o_n, m_m, m_n, acc, k_lo, k_hi, stride_xm, stride_xk, stride_wn,
        stride_wk, DOT_PRECISION, INTERPRETED_BF16, SWAP_AB, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    # Where each accumulator element lives in the output and in a [M, N] workspace slice, in the
    # accumulator's own orientation (transposed under SWAP_AB), so no tl.trans is needed.
    if SWAP_AB:
        o_out = o_m[None, :] * stride_om + o_n[:, None]
        o_ws = o_m[None, :] * N + o_n[:, None]
        m_out = m_m[None, :] & m_n[:, None]
    else:
        o_out = o_m[:, None] * stride_om + o_n[None, :]
        o_ws = o_m[:, None] * N + o_n[None, :]
        m_out = m_m[:, None] & m_n[None, :]
    if SPLIT_K == 1:
        acc = bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION, SWAP_AB,
                                  out_ptr.dtype.element_ty)  # fmt: skip
        # under the interpreter with bf16 its store truncates: round_to rounds to nearest first
        tl.store(out_ptr + o_out, round_to(acc, out_ptr.dtype.element_ty, INTERPRETED_BF16),
                 mask=m_out)  # fmt: skip
    else:
        # Deterministic split-K: every program stores its fp32 partial; the ticket counter only
        # decides WHO sums them - the last program to arrive - and it sums partials 0..SPLIT_K-1
        # in that fixed order, so the result never depends on arrival order.
        slice_mn = M.to(tl.int64) * N
        tl.store(ws_ptr + i_s * slice_mn + o_ws, acc, mask=m_out)
        # every warp's partial is written before this program takes its ticket (the acq_rel
        # atomic then publishes them at GPU scope)
        tl.debug_barrier()
        p_ticket = ticket_ptr + i_m * tl.num_programs(0) + i_n
        ticket = tl.atomic_add(p_ticket, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                # .cg: read at L2, where the other programs' stores are, never a stale L1 line
                total += tl.load(ws_ptr + s * slice_mn + o_ws, mask=m_out, other=0.0,
                                 cache_modifier=".cg")  # fmt: skip
            total = bias_and_activation(total, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION,
                                        SWAP_AB, out_ptr.dtype.element_ty)  # fmt: skip
            tl.store(out_ptr + o_out, round_to(total, out_ptr.dtype.element_ty, INTERPRETED_BF16),
                     mask=m_out)  # fmt: skip
            # re-arm the counter for the next launch (and the next CUDA-graph replay)
            tl.atomic_xchg(p_ticket, 0)


_launch_pooler_fwd = CachedLaunch(pooler_fwd_kernel)


@triton.jit(do_not_specialize=["M"])
def pooler_fwd_persistent_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, stride_b,
    stride_om, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """pooler_fwd_kernel's plain tile (no split, no swap), with a grid of about one program per SM
    that walks the output tiles i, i + programs, ...: no wave tail at large M, and the compiler
    may start a tile's loads while the previous tile's epilogue runs. Each tile is computed as in
    the plain kernel, so the result does not depend on the grid size."""
    if PDL:
        gdc_wait()
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * tiles_n
    for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=True):
        # N tiles fastest, as in the plain kernel: neighbouring programs share X rows
        i_m = tile // tiles_n
        i_n = tile % tiles_n
        o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_m = o_m < M
        m_n = o_n < N
        acc = pooled_tile(
            x_ptr, w_ptr, b_ptr, o_m, o_n, m_m, m_n, K, stride_xm, stride_xk, stride_wn,
            stride_wk, stride_b, HAS_BIAS, ACTIVATION, DOT_PRECISION, INTERPRETED_BF16, BLOCK_M,
            BLOCK_N, BLOCK_K,
        )  # fmt: skip
        store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16)


_launch_pooler_fwd_persistent = CachedLaunch(pooler_fwd_persistent_kernel)
# Programs of a persistent launch on a CPU device (the interpreter): a few, so that every program
# walks several tiles in the tests.
INTERPRETER_PROGRAMS = 3


@triton.jit
def dot_k_tma(
    x_desc, w_desc, off_m, off_n, acc, K, INTERPRETED_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    """dot_k_range's plain sum over all of K (from acc), its X and W tiles copied by TMA from
    descriptors.

    The copy engine computes the addresses and zero-fills the rows past M (X) or N (W) and the
    columns past K, which is what the dot needs: no per-thread offsets or masks, and a stage's
    arrival is an mbarrier's transaction count, not a cp.async group wait. WARP_SPECIALIZE: a
    producer warp issues the copies and consumer warpgroups the MMAs, each waiting only on its
    own barriers (Triton's automatic warp specialization); the sum's K order is the same.
    """
    for k0 in tl.range(0, K, BLOCK_K, warp_specialize=WARP_SPECIALIZE):
        b_x = x_desc.load([off_m, k0])
        b_w = w_desc.load([off_n, k0])
        if INTERPRETED_BF16:  # as in dot_k_range: the interpreter's bf16 dot is wrong
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        # fp16/bf16 operands only; "ieee" matters only for the interpreter's fp32 copies above
        acc = tl.dot(b_x, b_w.T, acc, input_precision="ieee")
    return acc


@triton.jit
def tma_output_tile(
    x_desc, w_desc, b_ptr, out_ptr, i_m, i_n, M, N, K, stride_b, stride_om,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    """Output tile (i_m, i_n) of the TMA kernel: the plain kernel's K sum (from the bias) and
    epilogue."""
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    acc = bias_accumulator(b_ptr, o_n, m_n, stride_b, HAS_BIAS, False, BLOCK_M, BLOCK_N)
    acc = dot_k_tma(x_desc, w_desc, i_m * BLOCK_M, i_n * BLOCK_N, acc, K, INTERPRETED_BF16,
                    BLOCK_M, BLOCK_N, BLOCK_K, WARP_SPECIALIZE)  # fmt: skip
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    acc = bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION, False,
                              out_ptr.dtype.element_ty)  # fmt: skip
    store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16)


@triton.jit(do_not_specialize=["M"])
def pooler_fwd_tma_kernel(
    x_desc,  # [M, K] first-token rows, block [BLOCK_M, BLOCK_K]
    w_desc,  # [N, K] nn.Linear weight, block [BLOCK_N, BLOCK_K]
    b_ptr,  # [N] bias (unused when HAS_BIAS is False)
    out_ptr,  # [M, N] output
    M,
    N,
    K,
    stride_b,
    stride_om,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    PERSISTENT: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """pooler_fwd_kernel's plain tile (no split, no swap) with TMA loads; the same epilogue, the
    same tile order (N tiles fastest) and the same K chunks in the same order. PERSISTENT: a 1-D
    grid of about one program per SM walks the tiles i, i + programs, ... as
    pooler_fwd_persistent_kernel does; its loop is flattened with the K loop, so the pipeliner may
    issue the next tile's first copies before this tile's epilogue."""
    if PDL:
        gdc_wait()
    if PERSISTENT:
        tiles_n = tl.cdiv(N, BLOCK_N)
        tiles = tl.cdiv(M, BLOCK_M) * tiles_n
        for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=True):
            tma_output_tile(x_desc, w_desc, b_ptr, out_ptr, tile // tiles_n, tile % tiles_n, M, N,
                            K, stride_b, stride_om, HAS_BIAS, ACTIVATION, INTERPRETED_BF16,
                            BLOCK_M, BLOCK_N, BLOCK_K, WARP_SPECIALIZE)  # fmt: skip
    else:
        tma_output_tile(x_desc, w_desc, b_ptr, out_ptr, tl.program_id(1), tl.program_id(0), M, N,
                        K, stride_b, stride_om, HAS_BIAS, ACTIVATION, INTERPRETED_BF16, BLOCK_M,
                        BLOCK_N, BLOCK_K, WARP_SPECIALIZE)  # fmt: skip


_launch_pooler_fwd_tma = CachedLaunch(pooler_fwd_tma_kernel)


@functools.cache
def persistent_programs(device: torch.device) -> int:
    """The persistent kernel's grid size on ``device``: its SM count, read once per device."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count


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


def check_config(config: TileConfig) -> None:
    """Reject a ``config=`` override the kernel cannot run (the tables are checked by tests)."""
    if not isinstance(config, TileConfig):
        raise TypeError(f"config must be a TileConfig, got {type(config).__name__}")
    for name in ("block_m", "block_n", "block_k"):
        size = getattr(config, name)
        if size < 16 or size & (size - 1):
            raise ValueError(f"config.{name} must be a power of two >= 16 (tl.dot), got {size}")
    if config.num_warps not in (1, 2, 4, 8, 16) or config.num_stages < 1:
        raise ValueError(f"config.num_warps / num_stages out of range: {config}")
    if config.split_k < 1:
        raise ValueError(f"config.split_k must be >= 1, got {config.split_k}")
    if config.persistent and (config.split_k > 1 or config.swap_ab):
        raise ValueError(f"config.persistent takes neither split_k nor swap_ab: {config}")
    if config.tma and (config.split_k > 1 or config.swap_ab):
        raise ValueError(f"config.tma takes neither split_k nor swap_ab: {config}")
    if config.tma and max(config.block_m, config.block_n, config.block_k) > 256:
        raise ValueError(f"config.tma: a TMA box is at most 256 elements a side: {config}")
    if config.warp_specialize and (not config.tma or config.persistent):
        raise ValueError(f"config.warp_specialize needs config.tma, not persistent: {config}")


# Split-K scratch per (device, stream): fp32 partial sums and the per-tile ticket counters, which
# the kernel leaves at zero. Kept for the life of the process and only ever replaced by a larger
# pair, the old pair staying referenced: a CUDA graph that captured a launch keeps valid pointers.
# Per stream, so launches on two streams never share counters.
_SPLIT_K_SCRATCH: dict = {}
_RETIRED_SCRATCH: list = []


def split_k_scratch(device: torch.device, partials: int, tiles: int):
    if device.type == "cuda":
        key = (device.index, torch._C._cuda_getCurrentRawStream(device.index))
    else:
        key = (device.type, 0)
    ws, tickets = _SPLIT_K_SCRATCH.get(key, (None, None))
    if ws is None or ws.numel() < partials or tickets.numel() < tiles:
        if ws is not None:
            _RETIRED_SCRATCH.append((ws, tickets))
        # powers of two: a handful of growths over a process's life
        ws = torch.empty(triton.next_power_of_2(partials), dtype=torch.float32, device=device)
        tickets = torch.zeros(triton.next_power_of_2(tiles), dtype=torch.int32, device=device)
        _SPLIT_K_SCRATCH[key] = (ws, tickets)
    return ws, tickets


# table_arch per device, asked once: a device's capability does not change within a process
_TABLE_ARCH: dict = {}


def _device_arch(device: torch.device) -> str:
    arch = _TABLE_ARCH.get(device)
    if arch is None:
        arch = _TABLE_ARCH[device] = table_arch(device)
    return arch


_INTERPRETED = interpreter_enabled()  # fixed when triton is imported

# Programmatic dependent launch (TileConfig.pdl): the launch carries Triton's ``launch_pdl``
# option, so the GPU may start this grid once every block of the previous kernel on the stream has
# exited, before that kernel has completed and flushed its writes; the kernel's first statement,
# ``gdc_wait``, holds every thread until it has. Nothing is read before the wait: any input, the
# weight included (an optimizer step or a weight copy may be the previous kernel), can be that
# kernel's output. What overlaps is the launch itself: block scheduling, argument and descriptor
# set-up. The kernel never lets its own successor start early (``gdc_launch_dependents``): what
# follows a pooler in a model (a classifier GEMM) is not launched for it, and in a benchmark of
# back-to-back pooler calls an early start would overlap two poolers, which no model does. Off
# under the interpreter (which has no ``gdc_wait``); before sm_90, ptxas refuses ``griddepcontrol``,
# so only an sm_90 table may set it and ``pooler_fwd`` refuses an override there.


def launches_pdl(config: TileConfig) -> bool:
    """Whether a launch of ``config`` waits with gdc_wait and carries ``launch_pdl``."""
    return config.pdl and not _INTERPRETED


def pooler_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    out: Optional[torch.Tensor] = None,
    batch_invariant: bool = False,
    config: Optional[TileConfig] = None,
) -> torch.Tensor:
    """Launch the fused pooler. Inputs are validated by the caller (``bertpool_fast.fused_pooler``).

    x: the first-token rows, either ``hidden_states`` [M, S, K] itself (position 0 of each sequence
    is read: it starts at the tensor's own data pointer, so no ``[:, 0]`` view is built on the
    launch path) or an [M, K] tensor of rows; any strides. weight: [N, K], bias: [N] or None; all
    of one dtype and device. batch_invariant: use ``BATCH_INVARIANT_CONFIGS``, so row i's output
    does not depend on M. config: run this tile instead of the table's pick (tuning, tests); it
    overrides batch_invariant's table too. Returns [M, N] in that dtype.
    """
    m, n = x.shape[0], weight.shape[0]
    dtype = x.dtype
    device = x.device  # read once: each read builds a torch.device
    if out is None:
        out = torch.empty((m, n), dtype=dtype, device=device)
    if m == 0 or n == 0:
        return out
    # k == 0 needs no special case: the K loop runs zero times and the result is act(bias).
    if config is None:
        config = pick_config(m, dtype, batch_invariant, _device_arch(device))
    else:
        check_config(config)
        if config.pdl:
            check_pdl_device(device)
    launch, grid, args, constexprs = _launch_args(x, weight, bias, activation, out, config, device)
    with device_of(x):
        launch(grid, args, constexprs, config.num_warps, config.num_stages, launches_pdl(config))
    return out


def check_pdl_device(device: torch.device) -> None:
    """Refuse a ``pdl`` config for a GPU before sm_90 (ptxas would fail inside Triton)."""
    if device.type == "cuda" and not _INTERPRETED and not has_tma(device):
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise ValueError(
            "config.pdl: programmatic dependent launch needs a GPU of compute capability 9.0 or "
            f"later; {device} has {capability}"
        )


def _launch_args(x, weight, bias, activation, out, config: TileConfig, device: torch.device):
    """(launcher, grid, runtime arguments, constexprs) of one pooler launch with this tile."""
    shape = x.shape
    m, k, n = shape[0], shape[-1], weight.shape[0]
    dtype = x.dtype
    # cdiv written out (-(-a // b)): three calls fewer per launch
    grid_n, grid_m = -(-n // config.block_n), -(-m // config.block_m)
    x_strides, w_strides = x.stride(), weight.stride()
    if config.persistent:  # one program per SM (at most one per tile), a 1-D grid
        tiles = (min(grid_n * grid_m, persistent_programs(device)),)
    else:
        tiles = (grid_n, grid_m)
    pdl = launches_pdl(config)  # the PDL constexpr
    # what a descriptor cannot describe runs this tile through the pointer kernel below
    if config.tma and tma_describable(x, weight, x_strides, w_strides, dtype, device, k):
        return _tma_launch_args(x, weight, bias, activation, out, config, tiles, x_strides[0],
                                w_strides[0], pdl)  # fmt: skip
    b = weight if bias is None else bias  # any valid pointer; unread without HAS_BIAS
    ints = (m, n, k, x_strides[0], x_strides[-1], w_strides[0], w_strides[1],
            bias.stride(0) if bias is not None else 0, out.stride(0))  # fmt: skip
    flags = (
        bias is not None,  # HAS_BIAS
        activation,
        fp32_dot_precision() if dtype == torch.float32 else "ieee",  # DOT_PRECISION
        _INTERPRETED and dtype is torch.bfloat16,  # INTERPRETED_BF16
        config.block_m,
        config.block_n,
        config.block_k,
    )
    if config.persistent:
        return _launch_pooler_fwd_persistent, tiles, (x, weight, b, out, *ints), (*flags, pdl)
    # never more splits than K chunks, so no split is empty (at H = 768, BLOCK_K = 64: 12 chunks)
    split_k = max(1, min(config.split_k, -(-k // config.block_k)))
    if split_k > 1:
        ws, tickets = split_k_scratch(device, split_k * m * n, grid_n * grid_m)
    else:
        ws, tickets = out, out  # any valid pointers; never touched when SPLIT_K == 1
    args = (x, weight, b, out, ws, tickets, *ints)
    constexprs = (*flags, split_k, config.swap_ab, pdl)
    return _launch_pooler_fwd, (grid_n, grid_m, split_k), args, constexprs


def plan_pooler_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str
) -> Optional[PoolerPlan]:
    """A ``PoolerPlan`` for calls like this one (``pooler_fwd``'s table pick), or None when its
    launch is not in the launch cache (not launched yet, the interpreter, Triton's own path)."""
    if not _launch_pooler_fwd.enabled:
        return None
    m, n = x.shape[0], weight.shape[0]
    if x.dim() != 3 or m == 0 or n == 0:
        return None
    device = x.device
    config = pick_config(m, x.dtype, False, _device_arch(device))
    out = torch.empty((m, n), dtype=x.dtype, device=device)
    launch, grid, args, constexprs = _launch_args(x, weight, bias, activation, out, config, device)
    index = x.get_device()
    entry = launch.entry_for(index, grid, args, constexprs, config.num_warps, config.num_stages,
                             launches_pdl(config))  # fmt: skip
    if entry is None or out.data_ptr() & 15:
        return None
    # a TMA tile's plan keeps the descriptors' block shapes (a descriptor object kept for the
    # weight would keep the weight alive) and launches with their encoded forms where it can
    tma_blocks = encoded = None
    if launch is _launch_pooler_fwd_tma:
        tma_blocks = (args[0].block_shape, args[1].block_shape)
        encoded = EncodedDescriptorLaunch.of(launch, entry, 2)
    split_k = 1 if config.persistent or tma_blocks else grid[2]
    return PoolerPlan(x, weight, bias, activation, launch, entry, grid, constexprs, index,
                      split_k, config.persistent, tma_blocks, encoded)  # fmt: skip


class PoolerPlan:
    """``pooler_fwd`` worked out once for one weight, bias, activation, batch size and dtype on
    one device: the tile, grid, constexprs and cached compiled kernel. ``run`` launches it for new
    ``hidden_states`` after a few comparisons, instead of the table lookup and the launch cache's
    key: every kernel argument must be what the plan was made with, except the rows' address
    (same 16-byte alignment), the row stride (same Triton specialization: its sequence length
    may change) and the output's address. Anything else returns None: call ``pooler_fwd``. A TMA
    tile's plan also needs the row stride a descriptor can hold (a multiple of 16 bytes); it
    keeps encoded descriptors (``EncodedDescriptorLaunch``) for the last few row addresses: the
    weight's, valid while the weight passes the checks above, and the rows', valid for the same
    address and row stride (M, K and dtype are the plan's). Rows elsewhere encode both again,
    through Triton's own launch the first time they are seen, recorded and kept the second.

    Holds no tensor: the weight and bias are recognised by address, dtype, shape and strides."""

    __slots__ = (
        "m", "k", "n", "dtype", "device", "index", "activation", "weight_key", "bias_key",
        "x_col_stride", "x_row_div16", "x_aligned", "launch", "entry", "grid", "constexprs",
        "ints_after_row_stride", "split_k", "persistent", "scratch_sizes", "device_type",
        "tma_blocks", "w_row_stride", "tma_ints", "encoded", "kept_maps", "seen_rows",
    )  # fmt: skip

    def __init__(self, x, weight, bias, activation, launch, entry, grid, constexprs, index,
                 split_k, persistent, tma_blocks=None, encoded=None):  # fmt: skip
        shape, strides = x.shape, x.stride()
        self.m, self.k, self.n = shape[0], shape[-1], weight.shape[0]
        self.dtype, self.device, self.index = x.dtype, x.device, index
        self.device_type = x.device.type
        self.activation = activation
        self.weight_key = _tensor_key(weight)
        self.bias_key = None if bias is None else _tensor_key(bias)
        self.x_col_stride = strides[2]
        self.x_row_div16 = strides[0] & 15 == 0
        self.x_aligned = x.data_ptr() & 15 == 0
        self.launch, self.entry, self.grid, self.constexprs = launch, entry, grid, constexprs
        w_strides = weight.stride()
        self.ints_after_row_stride = (strides[2], w_strides[0], w_strides[1],
                                      0 if bias is None else bias.stride(0), self.n)  # fmt: skip
        self.split_k, self.persistent = split_k, persistent
        tiles = grid[0] * grid[1] if split_k > 1 else 0
        self.scratch_sizes = (split_k * self.m * self.n, tiles)
        self.tma_blocks, self.w_row_stride = tma_blocks, w_strides[0]
        self.tma_ints = (self.m, self.n, self.k, 0 if bias is None else bias.stride(0), self.n)
        self.encoded = encoded
        # ((rows' address, row stride), both descriptors' expansions), newest first: one tuple,
        # replaced whole, so a thread never pairs one call's address with another's expansion
        self.kept_maps: tuple = ()
        # (address, row stride) of rows seen once lately, newest first: the second sighting
        # records; the plan's own rows count as seen
        self.seen_rows: tuple = ((x.data_ptr(), strides[0]),)

    def run(self, x, weight, bias) -> Optional[torch.Tensor]:
        """The pooler of [M, S, K] ``x`` (plain CUDA tensors the caller vetted), or None."""
        shape, strides = x.shape, x.stride()
        row_stride = strides[0]
        if (
            x.dtype is not self.dtype
            or len(shape) != 3
            or shape[0] != self.m
            or shape[1] < 1
            or shape[2] != self.k
            or strides[2] != self.x_col_stride
            # the row stride's specialization: not 1, in int32, divisible by 16 or not as planned
            or not 1 < row_stride <= _I32_MAX
            or (row_stride & 15 == 0) is not self.x_row_div16
            or (x.data_ptr() & 15 == 0) is not self.x_aligned
            or x.get_device() != self.index
            or _tensor_key(weight) != self.weight_key
            or (self.bias_key is None) is not (bias is None)
            or (bias is not None and _tensor_key(bias) != self.bias_key)
            or self.launch.current_device() != self.index  # device_of's condition, no switch
        ):
            return None
        out = torch.empty((self.m, self.n), dtype=self.dtype, device=self.device)
        if out.data_ptr() & 15:
            return None
        b = weight if bias is None else bias
        m, n, k = self.m, self.n, self.k
        if self.tma_blocks is not None:
            if row_stride & 7 or row_stride >= _TMA_MAX_STRIDE:  # 16 bytes, as tma_describable
                return None
            encoded = self.encoded
            if encoded is not None:
                return self._run_encoded(encoded, x, row_stride, weight, b, out)
            args = self._tma_args(x, row_stride, weight, b, out)
        elif self.persistent:  # no split-K scratch in its signature
            args = (x, weight, b, out, m, n, k, row_stride, *self.ints_after_row_stride)
        elif self.split_k > 1:
            ws, tickets = split_k_scratch(self.device, *self.scratch_sizes)
            args = (x, weight, b, out, ws, tickets, m, n, k, row_stride,
                    *self.ints_after_row_stride)  # fmt: skip
        else:
            args = (x, weight, b, out, out, out, m, n, k, row_stride, *self.ints_after_row_stride)
        if not self.launch.launch_entry(self.entry, self.index, self.grid, args, self.constexprs):
            return None
        return out

    def _tma_args(self, x, row_stride, weight, b, out) -> tuple:
        """The TMA kernel's runtime arguments: the rows' and the weight's descriptors first."""
        x_block, w_block = self.tma_blocks
        return (_descriptor(x, [self.m, self.k], [row_stride, 1], x_block),
                _descriptor(weight, [self.n, self.k], [self.w_row_stride, 1], w_block),
                b, out, *self.tma_ints)  # fmt: skip

    def _run_encoded(self, encoded, x, row_stride, weight, b, out) -> Optional[torch.Tensor]:
        """The TMA launch with kept encoded descriptors when the rows are at an address (and row
        stride) kept lately; else with fresh ones, recorded and kept when the rows were seen once
        before, launched through Triton (no recording) when not: rows at a new address on every
        call (a new buffer each time) then cost what they cost without kept maps."""
        key = (x.data_ptr(), row_stride)
        kept = self.kept_maps
        for rows, expansions in kept:
            if rows == key:
                rest = (b, out, *self.tma_ints, *self.constexprs)
                return out if encoded.launch(self.index, self.grid, expansions, rest) else None
        args = self._tma_args(x, row_stride, weight, b, out)
        seen = self.seen_rows
        if key not in seen:
            self.seen_rows = (key, *seen[: _KEPT_ROWS - 1])
            if not self.launch.launch_entry(self.entry, self.index, self.grid, args,
                                            self.constexprs):  # fmt: skip
                return None
            return out
        recorded = encoded.record(self.index, self.grid, args, self.constexprs)
        if recorded is None:
            return None
        if recorded:
            self.kept_maps = ((key, recorded), *kept[: _KEPT_ROWS - 1])
        return out


# Row addresses whose encoded maps a TMA plan keeps (and that it remembers as seen once). In a
# model loop the last hidden states of one call are usually still alive (returned to the caller)
# while the next call's are made, so consecutive calls alternate between two addresses or more.
_KEPT_ROWS = 4


def _tensor_key(t: torch.Tensor) -> tuple:
    # what the kernel reads of a weight or bias: its memory, element type and layout
    return (t.data_ptr(), t.dtype, t.shape, t.stride())


_I32_MAX = (1 << 31) - 1


def tma_describable(
    x: torch.Tensor, weight: torch.Tensor, x_strides: tuple, w_strides: tuple, dtype, device, k: int
) -> bool:
    """Whether TMA can copy tiles of x's [M, K] first-token rows and of weight [N, K] (strides as
    ``x.stride()`` / ``weight.stride()``, read once by the caller).

    TMA is sm_90 and later (for older GPUs Triton compiles descriptors into pointer loads: the
    64x128 tile spilled so for sm_80). A tensor descriptor needs a 16-byte-aligned base, a
    contiguous last dimension, the other strides multiples of 16 bytes (and below 2^40 bytes) and
    every size positive; the kernel is written for the half types. Where any of it fails (an H
    that is not a multiple of 8, a view offset by an element, a transposed weight, fp32, K = 0),
    ``pooler_fwd`` runs the same tile through the pointer kernel instead: TMA is a speed choice,
    never a reason to refuse a call.
    """
    if dtype is not torch.float16 and dtype is not torch.bfloat16:
        return False
    if not _INTERPRETED and not has_tma(device):
        return False
    # fp16/bf16: 16 bytes are 8 elements
    return (
        k > 0
        and x_strides[-1] == 1
        and w_strides[1] == 1
        and 0 < x_strides[0] < _TMA_MAX_STRIDE
        and x_strides[0] & 7 == 0
        and 0 < w_strides[0] < _TMA_MAX_STRIDE
        and w_strides[0] & 7 == 0
        and x.data_ptr() & 15 == 0
        and weight.data_ptr() & 15 == 0
    )


@functools.cache
def has_tma(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with the TMA copy engine (compute capability 9.0 or later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


_TMA_MAX_STRIDE = 1 << 39  # elements of 2 bytes: the 2^40-byte stride limit of a TMA descriptor


def _descriptor_builder():
    """TensorDescriptor(base, shape, strides, block_shape) for the launch path.

    ``TensorDescriptor.__post_init__`` re-checks on every call what ``tma_describable`` has
    checked already (plus the block shape, fixed by the config); this builds the same object
    without it, with the dataclass's own defaults for the remaining fields (``padding="zero"``:
    out-of-bounds elements read as 0). If a Triton release adds a field without a default, the
    real constructor is used.
    """
    fields = dataclasses.fields(TensorDescriptor)
    names = [f.name for f in fields]
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    if names[:4] != ["base", "shape", "strides", "block_shape"] or set(names[4:]) - set(defaults):
        return TensorDescriptor
    new = object.__new__

    def build(base, shape, strides, block_shape):
        desc = new(TensorDescriptor)
        desc.__dict__ = {"base": base, "shape": shape, "strides": strides,
                         "block_shape": block_shape, **defaults}  # fmt: skip
        return desc

    return build


_descriptor = _descriptor_builder()


def _tma_launch_args(x, weight, bias, activation, out, config, grid, stride_xm, stride_wn, pdl):
    """``_launch_args`` for the TMA tile: two descriptors in place of the X and W pointers."""
    m, k, n = x.shape[0], x.shape[-1], weight.shape[0]
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    # x may be hidden_states itself: position 0 of row i is at data_ptr + i * stride(0), so the
    # [M, K] rows are described without building the [:, 0] view
    x_desc = _descriptor(x, [m, k], [stride_xm, 1], [bm, bk])
    w_desc = _descriptor(weight, [n, k], [stride_wn, 1], [bn, bk])
    args = (x_desc, w_desc, weight if bias is None else bias, out, m, n, k,
            bias.stride(0) if bias is not None else 0, out.stride(0))  # fmt: skip
    flags = (bias is not None, activation, _INTERPRETED and x.dtype is torch.bfloat16, bm, bn, bk,
             config.warp_specialize, config.persistent, pdl)  # fmt: skip
    return _launch_pooler_fwd_tma, grid, args, flags


# What ``python -m bench.tune`` measures, per dtype: (smallest M, largest M it is tried at, config).
# Chosen for H = 768 (N = K = 768: 12 K chunks of 64) on a 132-SM H100; "programs" is the grid
# size at the bucket's M. Reasoning:
#   * M <= 64: the op is the read of the 1.18 MB weight (0.35 us at 3.35 TB/s if every SM pulls;
#     one SM alone streams far less), so the grid must spread the weight over >= ~100 programs of
#     <= 12 KB each. N tiles alone give 24 (BLOCK_N 32) or 12 (64): split-K multiplies that by
#     4, 6 or 12 (96-144 programs) at the cost of one fp32 partial per program and a fixed-order
#     sum by the last one. SWAP_AB computes W @ X^T so the 64-wide N tile fills wgmma's 64 rows
#     while M (1-32 rows) becomes the MMA's narrow side, instead of a 16-row mma.sync tile.
#     A pipeline of S stages has S - 1 K chunks in flight ahead of the one being summed (the
#     loop issues chunk i + S - 1 after chunk i has arrived), so a program's K loop waits
#     ceil(chunks / (S - 1)) memory latencies, and one only with S = chunks + 1.
#     The H100 runs priced split-K's reduction (a partial stored, an atomic ticket, the partials
#     read back: a few L2 round trips on the critical path) at most of its gain (split 4: 4.83 us
#     against 5.09 unsplit at M = 1). The other way to have more of the weight in flight is a
#     deep prefetch with no reduction: 16x16 tiles (48 programs at H = 768) with BLOCK_K 256 and
#     3 stages, or 128 and 4, wait two latencies for a program's 24 KB slice of W (3.99-4.02 us at
#     M = 1 in the fifth run, against 4.22 for 16x32x128 s4, also two, and 5.10 for 16x32x64 s4,
#     four: ~0.45 us a latency); with 4 or 7 stages, one.
#   * 64 < M <= 1024: 64-row wgmma tiles (one warpgroup); 64x64 gives 24 programs at M = 128 and
#     96 at M = 512, so split-K 2/4 and 64x32 tiles lift the small end to ~100-200 programs.
#     Up to M ~ 1024 a program's time is its K loop's latency chain, not its arithmetic: 12
#     dependent 64-wide steps with 3-4 in flight is 3-4 memory latencies; BLOCK_K 128 (4 stages)
#     or 256 (3 stages) puts most or all of a program's K in flight at once, with no split.
#   * M >= 512: 128-row tiles; 128x128 at M = 8192 is 384 tiles, 2.9 waves of one CTA per SM, but
#     at 96 KiB of shared memory (3 stages) two CTAs fit per SM (1.45 waves); 128x64 / 64x128 (4
#     warps, 4 stages) move that tail.
#   * M >= 1024, where the H100 run (2026-11-26) found 128x128x64 w8 s3 slower than cuBLAS + tanh:
#     K = 768 is only 12 chunks of 64, so each tile's pipeline fill/drain and epilogue weigh; a
#     BLOCK_K of 128 halves the iterations (2 or 3 stages), a 4th stage hides more latency. Bigger
#     tiles (128x256, 256x128) halve the programs and reread X / W half as often; they compile
#     spill-free on sm_90 but spill (or sit at 255 registers) on sm_80 under Triton 3.6, so they
#     are sm_90-only candidates (ARCH_CANDIDATES below). So are the persistent ones (one program
#     per SM looping over tiles, Triton tutorial 09's pattern: no tail wave, the next tile's loads
#     can overlap this one's epilogue), which spill on sm_80 under Triton 3.9. Dropped after five
#     H100 tunes in which they were the slowest at every M tried (36-39 us at M = 8192 against
#     22-23): 128x128x64 w4 s4 and 64x256x64 w4 s4, one warpgroup holding a 128x128 or 64x256
#     fp32 accumulator (255 registers; both spill under Triton 3.6).
#   * M >= 2048, after the second H100 run found bigger, deeper and persistent tiles all slower:
#     TMA loads (pooler_fwd_tma_kernel). The X rows are S * H elements apart, and the cp.async
#     loop spends 80-106 integer, predicate and move instructions (PTX) and 11-15 cp.async per
#     64-wide K step on per-thread addresses and masks; with TMA one elected thread issues two
#     bulk copies and the copy engine addresses and zero-fills (52-67 such instructions per step,
#     many of them wgmma descriptors; but 4 CTA barriers per step instead of 2, as Triton 3.6 and
#     3.9 lower it). Unmeasured: the tuner decides. Tiles (CTAs per SM from shared memory and
#     registers): 128x128 s3 (96 KiB, 128 registers: two), s4 (128 KiB: one), 128x256 s3
#     (144 KiB, ~170 registers: one), 64x128 w4 s4 (96 KiB: two) and s3 (72 KiB: three).
#     sm_90 only: sm_80 has no TMA.
# Every candidate is a multiple of 64 rows in whole warpgroups (wgmma on sm_90) except the 16- and
# 32-row non-swapped ones, kept because at M <= 16 the MMA shape hardly matters.
_HALF_CANDIDATES = (
    (1, 64, TileConfig(16, 32, 64, 4, 4)),
    (1, 64, TileConfig(16, 32, 64, 4, 3, split_k=4)),
    (1, 64, TileConfig(16, 32, 64, 4, 2, split_k=6)),
    (1, 64, TileConfig(16, 16, 256, 4, 3)),
    (1, 64, TileConfig(16, 16, 128, 4, 4)),
    # after the sixth run, unmeasured: the two above with every K chunk in flight at once (48 KiB),
    # and so the 16x32x64 s4 tile of the default table (12 chunks, four latencies) and its 16x16
    # twin with BLOCK_K 64: the same tile with only the stages changed measures the principle,
    # and a BLOCK_K of 64 is what the default table's one K order would allow (48-72 KiB)
    (1, 64, TileConfig(16, 16, 256, 4, 4)),
    (1, 64, TileConfig(16, 16, 128, 4, 7)),
    (1, 64, TileConfig(16, 32, 64, 4, 13)),
    (1, 64, TileConfig(16, 16, 64, 4, 13)),
    (1, 256, TileConfig(16, 32, 128, 4, 4)),
    (1, 32, TileConfig(16, 64, 64, 4, 2, split_k=6, swap_ab=True)),
    (1, 32, TileConfig(16, 64, 64, 4, 1, split_k=12, swap_ab=True)),
    (16, 64, TileConfig(32, 64, 64, 4, 3, split_k=4, swap_ab=True)),
    (16, 64, TileConfig(32, 64, 64, 4, 4)),
    (16, 128, TileConfig(64, 32, 64, 4, 3, split_k=4)),
    (32, 128, TileConfig(64, 64, 64, 4, 2, split_k=6, swap_ab=True)),
    (64, 1024, TileConfig(64, 64, 64, 4, 4)),
    (64, 512, TileConfig(64, 64, 64, 4, 3, split_k=2)),
    (64, 256, TileConfig(64, 64, 64, 4, 3, split_k=4)),
    (64, 1024, TileConfig(64, 32, 64, 4, 4)),
    (64, 512, TileConfig(64, 32, 64, 4, 3, split_k=2)),
    (64, 1024, TileConfig(64, 32, 128, 4, 4)),
    (64, 1024, TileConfig(64, 32, 256, 4, 3)),
    (64, 512, TileConfig(64, 64, 128, 4, 4)),
    # after the fourth run: ~96 programs with deep K blocks won at M <= 64 (16x32x128, 4.30 us at
    # M = 64) and M = 256-512 (64x32x128, 64x64x128), while M = 128's winner ran 48 (64x32x128,
    # 4.70 us); these give M = 128-1024 about 96-200 programs (mma.sync below 64 rows)
    (64, 512, TileConfig(32, 32, 128, 4, 4)),
    (64, 512, TileConfig(32, 32, 256, 4, 3)),
    (128, 1024, TileConfig(32, 64, 128, 4, 4)),
    # the same program counts with wgmma on sm_90: swapped, 64 weight rows fill the MMA's M side
    # and 16 or 32 batch rows its N side (96 or 48 programs at M = 128)
    (64, 512, TileConfig(16, 64, 128, 4, 4, swap_ab=True)),
    (64, 512, TileConfig(32, 64, 128, 4, 4, swap_ab=True)),
    (256, 8192, TileConfig(128, 64, 64, 4, 4)),
    (256, 8192, TileConfig(64, 128, 64, 4, 4)),
    (512, 8192, TileConfig(128, 128, 64, 8, 3)),
    (1024, 8192, TileConfig(128, 128, 64, 8, 4)),
    (1024, 8192, TileConfig(128, 128, 128, 8, 2)),
    (1024, 8192, TileConfig(128, 128, 128, 8, 3)),
)
# fp32 (optional in the sweep): the default table's tiles and a split-K one for small M.
_FP32_CANDIDATES = (
    (1, 64, TileConfig(16, 32, 32, 4, 4)),
    (1, 64, TileConfig(16, 32, 32, 4, 3, split_k=4)),
    (16, 256, TileConfig(32, 64, 32, 4, 3)),
    (64, 1024, TileConfig(64, 64, 32, 4, 4)),
    (512, 8192, TileConfig(128, 128, 32, 8, 3)),
    (512, 8192, TileConfig(128, 64, 32, 8, 3)),
)
TUNE_CANDIDATES = {
    torch.float16: _HALF_CANDIDATES,
    torch.bfloat16: _HALF_CANDIDATES,
    torch.float32: _FP32_CANDIDATES,
}
# Candidates tuned only on one architecture (a table key), and so only ever written into its
# table; each must compile spill-free for that target alone (inspection compiles it only there).
_SM90_HALF_CANDIDATES = (
    (2048, 8192, TileConfig(128, 256, 64, 8, 3)),
    (2048, 8192, TileConfig(256, 128, 64, 8, 3)),
    # persistent (pooler_fwd_persistent_kernel): one program per SM, no wave tail; sm_80 spills
    (2048, 8192, TileConfig(128, 128, 64, 8, 4, persistent=True)),
    (2048, 8192, TileConfig(128, 128, 128, 8, 2, persistent=True)),
    # TMA loads (pooler_fwd_tma_kernel): the copy engine does the addressing and masking
    (2048, 8192, TileConfig(128, 128, 64, 8, 3, tma=True)),
    (2048, 8192, TileConfig(128, 128, 64, 8, 4, tma=True)),
    (2048, 8192, TileConfig(128, 256, 64, 8, 3, tma=True)),
    (512, 8192, TileConfig(64, 128, 64, 4, 4, tma=True)),
    (1024, 8192, TileConfig(64, 128, 64, 4, 3, tma=True)),
    # and at mid M, where the third H100 run found TMA 14-25% faster than pointers from M = 2048
    # (the fourth: 9% at M = 1024, 64x64x64 s4)
    (64, 1024, TileConfig(64, 32, 64, 4, 4, tma=True)),
    (128, 2048, TileConfig(64, 64, 64, 4, 4, tma=True)),
    (128, 2048, TileConfig(64, 64, 64, 4, 3, tma=True)),
    # after the fourth run, unmeasured: the mid-M winners (deep K blocks of 128, pointer loads)
    # with TMA loads
    (64, 1024, TileConfig(64, 32, 128, 4, 4, tma=True)),
    (64, 1024, TileConfig(64, 64, 128, 4, 3, tma=True)),
    # and warp-specialized (unmeasured): a producer warp for the copies and two consumer
    # warpgroups for the MMAs (Triton makes it 12 warps, 168 registers; 128-row and 8-warp tiles
    # are not warp-specialized by Triton 3.6, or fail to compile with 3.9)
    (64, 1024, TileConfig(64, 32, 128, 4, 4, tma=True, warp_specialize=True)),
    (64, 1024, TileConfig(64, 64, 128, 4, 3, tma=True, warp_specialize=True)),
    (128, 2048, TileConfig(64, 64, 64, 4, 4, tma=True, warp_specialize=True)),
    (1024, 8192, TileConfig(64, 128, 64, 4, 4, tma=True, warp_specialize=True)),
    (1024, 8192, TileConfig(64, 128, 64, 4, 3, tma=True, warp_specialize=True)),
    # and persistent (unmeasured): at M = 8192 the TMA tile's epilogue adds 3 us that nothing
    # hides (attribution, third run); a tile loop flattened with the K loop lets the pipeliner
    # issue the next tile's copies during this tile's epilogue. The pointer kernel's persistent
    # tiles lost (second run), with the per-thread cp.async issue that TMA removed.
    (2048, 8192, TileConfig(128, 128, 64, 8, 3, tma=True, persistent=True)),
    (2048, 8192, TileConfig(128, 128, 64, 8, 4, tma=True, persistent=True)),
    (1024, 8192, TileConfig(64, 128, 64, 4, 4, tma=True, persistent=True)),
    # after the sixth run, unmeasured: the mid-M winners (swapped 16x64x128 at M = 64-128, TMA
    # 64x32x128 at 256-512, both 4 stages: two latencies for 6 chunks) with all 6 in flight, and
    # a 64x64 TMA tile that does so in one wave at M = 512 (96 programs); 140-224 KiB of shared
    # memory, one CTA per SM
    (64, 256, TileConfig(16, 64, 128, 4, 7, swap_ab=True)),
    (128, 256, TileConfig(64, 32, 128, 4, 7, tma=True)),
    (256, 1024, TileConfig(64, 64, 128, 4, 7, tma=True)),
)
ARCH_CANDIDATES = {
    "sm90": {torch.float16: _SM90_HALF_CANDIDATES, torch.bfloat16: _SM90_HALF_CANDIDATES},
}


# Tiles whose PDL form ``inspect`` compiles for sm_90 (one per kernel branch), whether or not a
# table holds one yet: the tune times each bucket's fastest tile with pdl on an sm_90 GPU.
PDL_INSPECTION_TILES = (
    TileConfig(16, 16, 128, 4, 4, pdl=True),
    TileConfig(16, 32, 64, 4, 3, split_k=4, pdl=True),
    TileConfig(16, 64, 128, 4, 4, swap_ab=True, pdl=True),
    TileConfig(128, 128, 64, 8, 4, persistent=True, pdl=True),
    TileConfig(64, 32, 128, 4, 4, tma=True, pdl=True),
    TileConfig(128, 128, 64, 8, 3, tma=True, persistent=True, pdl=True),
)


def tune_candidates(dtype: torch.dtype, arch: str = "default") -> tuple:
    """What ``python -m bench.tune`` tries on a GPU whose table key is ``arch``: (lo, hi, config)."""
    return TUNE_CANDIDATES[dtype] + ARCH_CANDIDATES.get(arch, {}).get(dtype, ())


def inspection_arch(arch: str) -> str:
    """A table key's compile target name in ``inspect``: "sm90" -> "sm_90"."""
    return f"sm_{arch[2:]}"


def config_label(cfg: TileConfig) -> str:
    """A config in a few characters: 64x32x64 w4 s3 k4 swap."""
    label = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"
    if cfg.split_k > 1:
        label += f" k{cfg.split_k}"
    label += (" swap" if cfg.swap_ab else "") + (" persistent" if cfg.persistent else "")
    label += (" tma" if cfg.tma else "") + (" ws" if cfg.warp_specialize else "")
    return label + (" pdl" if cfg.pdl else "")


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the forward kernel - every architecture's table, the
    batch-invariant table - and every tuning candidate, as compile-ahead cases.

    The signature mirrors what Triton's launcher builds for the usual call (contiguous weight,
    ``hidden_states`` contiguous in its last dimension, 16-aligned allocations, H a multiple of
    16): integer arguments equal to 1 become constants, and 16-divisible pointers and sizes carry
    the divisibility hint. Compiled without them, the loads are scalar and register counts say
    nothing about the kernel that runs.
    """
    cases = []
    tables = [
        (f" {arch}" if arch != "default" else "", arch, t) for arch, t in POOLER_TABLES.items()
    ]
    tables.append((" batch-invariant", "batch_invariant", BATCH_INVARIANT_CONFIGS))
    for suffix, table_name, by_dtype in tables:
        for dtype, table in by_dtype.items():
            previous = 0
            for max_m, cfg in table:
                bucket = f"M<={max_m}" if max_m is not None else f"M>{previous}"
                previous = max_m
                name = f"pooler_fwd {DTYPE_NAMES[dtype]}{suffix} {bucket}"
                if suffix == " batch-invariant":  # the name it has always had
                    name = f"pooler_fwd {DTYPE_NAMES[dtype]} {bucket}{suffix}"
                tags = {"table": table_name, "max_m": max_m}
                if table_name not in ("default", "batch_invariant"):
                    # an architecture's table runs on that architecture alone (its TMA tiles
                    # would compile into pointer loads, and spill, for sm_80)
                    tags["only_arch"] = inspection_arch(table_name)
                cases.append(_case(name, dtype, cfg, tags))
    for dtype, candidates in TUNE_CANDIDATES.items():
        for lo, hi, cfg in candidates:
            name = f"pooler_fwd_candidate {DTYPE_NAMES[dtype]} {config_label(cfg)}"
            cases.append(_case(name, dtype, cfg, {"table": "candidate", "m_range": (lo, hi)}))
    for arch, by_dtype in ARCH_CANDIDATES.items():
        for dtype, candidates in by_dtype.items():
            for lo, hi, cfg in candidates:
                name = f"pooler_fwd_candidate {DTYPE_NAMES[dtype]} {arch} {config_label(cfg)}"
                only = inspection_arch(arch)
                tags = {"table": "candidate", "m_range": (lo, hi), "only_arch": only}
                cases.append(_case(name, dtype, cfg, tags))
    for dtype in (torch.float16, torch.bfloat16):
        for cfg in PDL_INSPECTION_TILES:
            name = f"pooler_fwd_pdl {DTYPE_NAMES[dtype]} sm90 {config_label(cfg)}"
            cases.append(_case(name, dtype, cfg, {"table": "pdl", "only_arch": "sm_90"}))
    return cases


def _case(name: str, dtype: torch.dtype, cfg: TileConfig, tags: dict):
    from .inspection import TRITON_DTYPE, KernelCase

    t = TRITON_DTYPE[dtype]
    tiles = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
    if cfg.tma:
        # Descriptors are typed by element type and block shape only, as Triton's launcher types
        # them; their sizes and strides are run-time values the copy engine reads, with no hints.
        kernel = pooler_fwd_tma_kernel
        signature = {
            "x_desc": f"tensordesc<{t}[{cfg.block_m}, {cfg.block_k}]>",
            "w_desc": f"tensordesc<{t}[{cfg.block_n}, {cfg.block_k}]>",
            "b_ptr": f"*{t}",
            "out_ptr": f"*{t}",
            **dict.fromkeys(("M", "N", "K", "stride_om"), "i32"),
        }
        # a contiguous bias's stride is 1, which the launcher makes the constant 1
        constexprs = {"stride_b": 1, "HAS_BIAS": True, "ACTIVATION": "tanh",
                      "INTERPRETED_BF16": False, **tiles, "WARP_SPECIALIZE": cfg.warp_specialize,
                      "PERSISTENT": cfg.persistent, "PDL": cfg.pdl}  # fmt: skip
        divisible = ("b_ptr", "out_ptr", "N", "K", "stride_om")
    else:
        # the persistent kernel has no split-K scratch and no SPLIT_K / SWAP_AB
        scratch = () if cfg.persistent else ("ws_ptr", "ticket_ptr")
        kernel = pooler_fwd_persistent_kernel if cfg.persistent else pooler_fwd_kernel
        signature = {
            "x_ptr": f"*{t}",
            "w_ptr": f"*{t}",
            "b_ptr": f"*{t}",
            "out_ptr": f"*{t}",
            **({"ws_ptr": "*fp32", "ticket_ptr": "*i32"} if scratch else {}),
            **dict.fromkeys(("M", "N", "K"), "i32"),
            "stride_xm": "i64",
            **dict.fromkeys(("stride_wn", "stride_om"), "i32"),
        }
        constexprs = {
            "stride_xk": 1,
            "stride_wk": 1,
            "stride_b": 1,
            "HAS_BIAS": True,
            "ACTIVATION": "tanh",
            "DOT_PRECISION": "ieee",
            "INTERPRETED_BF16": False,
            **tiles,
            **({} if cfg.persistent else {"SPLIT_K": cfg.split_k, "SWAP_AB": cfg.swap_ab}),
            "PDL": cfg.pdl,
        }
        divisible = ("x_ptr", "w_ptr", "b_ptr", "out_ptr", *scratch, "N", "K", "stride_xm",
                     "stride_wn", "stride_om")  # fmt: skip
    return KernelCase(
        name=name,
        kernel=kernel,
        signature=signature,
        constexprs=constexprs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        launch_pdl=cfg.pdl,
        dtype=dtype,
        expects_tensor_cores=dtype != torch.float32,
        divisible_by_16=divisible,
        tags=dict(tags, wgmma_shape=wgmma_shaped(cfg), config=cfg),
    )


def wgmma_shaped(cfg: TileConfig) -> bool:
    """Whether sm_90 can lower the tile's dot to wgmma: the MMA's rows (BLOCK_M, or BLOCK_N under
    SWAP_AB) a multiple of 64, and warps in whole warpgroups."""
    rows = cfg.block_n if cfg.swap_ab else cfg.block_m
    return rows % 64 == 0 and cfg.num_warps % 4 == 0
