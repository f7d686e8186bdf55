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
from .launch import CachedLaunch
from .precision import round_to
from .runtime import device_of, interpreter_enabled, triton_version
from .tiles import TileConfig, pick_tile

# Tile tables, per (architecture, dtype), keyed by the largest M (batch) each row serves. They live
# in pooler_tables.py as data, which ``python -m bench.tune`` rewrites from measurements on a GPU.
# No autotuning at run time: the choice is a pure function of (M, dtype, the device's compute
# capability), so it costs nothing on the launch path, never benchmarks at first call, and two runs
# always pick the same tiles. The default table (GPUs without a table of their own) holds only
# pointer-load tiles every architecture compiles, in at most 99 KiB of shared memory (sm_86/89):
#   * fp16/bf16, chosen from three H100 tunes that timed them all (runs 3-5, fp16 and bf16 within
#     a few percent; us at H = 768): M <= 32 16x16x128 s4, 4.0 (16x32x64 s4 5.1); M <= 64
#     16x32x128 s4, 4.3; M <= 256 64x32x128 s4, 4.7-4.85 (64x32x64 5.4); M <= 1024 64x32x64 s4,
#     6.0 at 512, 7.3-7.5 at 1024 (64x32x128 10.5 there, 128x128 10.4-10.6 at 512-1024: 24-48
#     programs); 128x128x64 w8 s3 above. The reasons hold on any GPU: at small M the weight read
#     is the whole cost and narrow tiles spread it over many programs; a BLOCK_K of 128 halves the
#     dependent K steps, so fewer memory latencies per program, until its deeper stages cost
#     CTAs per SM (M = 1024; 64x32x128 s4 holds 96 KiB on sm_90). Elsewhere than the H100 the
#     gain is a prediction.
#   * BLOCK_K is chosen per bucket, as the tuned tables do: one K order at every batch is what
#     batch_invariant's own table provides (below).
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
# Per width (square [H, H] weights), where a GPU run tuned one: the M buckets above stand for
# H = 768, and a wider weight at the same M makes more programs (H = 1024's 64x128 tiles at
# M = 4096: 512 programs for 396 resident slots on an H100, where 768's make 384).
POOLER_WIDTH_TABLES = {
    arch: {
        hidden: {dtype: tables[name] for dtype, name in DTYPE_NAMES.items() if name in tables}
        for hidden, tables in by_width.items()
    }
    for arch, by_width in _pooler_tables.WIDTH_TABLES.items()
}

# Where the tune measured eager faster than every tile (pooler_tables' EAGER_TABLES): per
# architecture, dtype (and width), rows of True / False.
POOLER_EAGER_TABLES = {
    arch: {dtype: tables[name] for dtype, name in DTYPE_NAMES.items() if name in tables}
    for arch, tables in _pooler_tables.EAGER_TABLES.items()
}
POOLER_EAGER_WIDTH_TABLES = {
    arch: {
        hidden: {dtype: tables[name] for dtype, name in DTYPE_NAMES.items() if name in tables}
        for hidden, tables in by_width.items()
    }
    for arch, by_width in _pooler_tables.EAGER_WIDTH_TABLES.items()
}


def width_table_configs() -> list:
    """(arch, H, dtype, config) of every tile in the widths' own tables (None rows left out)."""
    return [
        (arch, hidden, dtype, cfg)
        for arch, by_width in POOLER_WIDTH_TABLES.items()
        for hidden, by_dtype in by_width.items()
        for dtype, rows in by_dtype.items()
        for _, cfg in rows
        if cfg is not None
    ]


# Batch-invariant tiles (``batch_invariant=True``): a row's output is bitwise the same whatever batch
# it arrives in. Each output element is one dot product over K; it comes out the same in every tile
# when (1) the K loop walks the same BLOCK_K chunks in the same order and (2) every tile lowers the
# dot to the same instruction. The default table keeps (1) but not (2) on sm_90: its 16- and 32-row
# tiles are too short for wgmma (64 rows per warpgroup) and run mma.sync, the 64- and 128-row tiles
# run wgmma, and the two need not round alike. Here every tile is at least 64 rows with warps in
# whole warpgroups, so one instruction family serves every batch on each architecture (wgmma on
# sm_90, mma.sync on sm_80; fp32 with "ieee" precision is plain FMA in K order on both).
# Cost: at M <= 64 the tile carries up to 63 masked rows. Those rows are never loaded from memory,
# and at that size the op is bound by the weight read. Which tile up to M = 1024: the one with the
# most programs. The fifth H100 run timed these very tiles (as tuning candidates, fp16/bf16): 64x32
# 5.4 us at M = 64-256, 6.0 at 512, 7.5 at 1024; 64x64 6.1, 6.2, 7.6; 128x128 10.4-10.6 at
# 512-1024 (24-48 programs), where the first table (64x64 to M = 256, then 128x128) cost 78% over
# the default tiles at B = 512. The benchmark measures the cost ("triton_bi" against "triton").
_HALF_INVARIANT_CONFIGS = (
    (1024, TileConfig(64, 32, 64, 4, 4)),
    (None, TileConfig(128, 128, 64, 8, 3)),
)
_FP32_INVARIANT_CONFIGS = (
    (1024, TileConfig(64, 32, 32, 4, 4)),
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
    m: int,
    dtype: torch.dtype,
    batch_invariant: bool = False,
    arch: str = "default",
    width: Optional[int] = None,
) -> TileConfig:
    """The tile for M rows. ``width``: H of a square [H, H] weight (None for any other shape),
    which takes that width's own table on ``arch`` where there is one."""
    if batch_invariant:
        # one table for every architecture: its guarantee is a property of the tiles, not a speed
        return pick_tile(BATCH_INVARIANT_CONFIGS[dtype], m)
    config = _width_tile(m, dtype, arch, width)
    if config is None:  # no table at this width, or this M was not tuned at it
        config = pick_tile(POOLER_TABLES[arch][dtype], m)
    return config if warp_specialized_tile_runs(config) else unspecialized_tile(config)


def _width_tile(m: int, dtype: torch.dtype, arch: str, width: Optional[int]):
    """The tile of ``width``'s own table on ``arch`` for M rows; None where that table does not
    cover M (or there is none): those M take the main table's tiles and eager rows."""
    by_width = POOLER_WIDTH_TABLES.get(arch, {}).get(width, {})
    return pick_tile(by_width[dtype], m) if dtype in by_width else None


@functools.cache
def eager_measured_faster(
    m: int, dtype: torch.dtype, arch: str = "default", width: Optional[int] = None
) -> bool:
    """Whether ``arch``'s tune measured eager (cuBLAS linear, then the activation) faster than
    every tile at M rows (``width`` as in ``pick_config``: that width's tune where it measured M).
    ``backend="auto"`` runs eager there; False wherever no tune said so (the CPU, untuned GPUs).
    A tune writes eager rows only where eager won somewhere, so M that a width's tile table
    covers read that width's eager rows or none, never the main table's."""
    if _width_tile(m, dtype, arch, width) is not None:
        rows = POOLER_EAGER_WIDTH_TABLES.get(arch, {}).get(width, {}).get(dtype)
    else:  # no tune at this width, or this M was not tuned at it
        rows = POOLER_EAGER_TABLES.get(arch, {}).get(dtype)
    return bool(rows) and bool(pick_tile(rows, m))


# Triton 3.6 (the GPU machines') compiles a warp-specialized tile of 128 rows into a producer and
# two consumer warpgroups of 64 rows each; Triton 3.9's pass splits the X copy between the two
# but not its descriptor's block, and the compile fails ("descriptor block and tensor must have
# the same number of elements"); 3.7 and 3.8 are untested and taken as 3.9. What 3.6 builds does
# not run either: on an H100 (eighth run) none of 24 such launches (six tiles, plain and
# persistent, 128x128 and 128x256, fp16 and bf16, H = 768 and 1024) returned within 60 s, where
# their unspecialized twins took 10-30 us. So pick_config runs such a tile unspecialized on
# every release, and an explicit config= is refused.


def warp_specialized_tile_compiles(config: TileConfig) -> bool:
    """Whether this Triton compiles ``config`` (only 128-row warp-specialized tiles may not)."""
    return not (config.warp_specialize and config.block_m > 64) or triton_version() < (3, 7)


def warp_specialized_tile_runs(config: TileConfig) -> bool:
    """Whether ``config`` may be launched: not a 128-row warp-specialized tile (on any release)."""
    return not (config.warp_specialize and config.block_m > 64)


def unspecialized_tile(config: TileConfig) -> TileConfig:
    """A warp-specialized tile without it: its two consumer warpgroups as 8 plain warps, the same
    tile and stages (correct; its speed is not what the tune measured)."""
    return config._replace(warp_specialize=False, num_warps=8)


# The register-A form (TileConfig.x_in_registers) as Triton 3.6 (the GPU machines') builds it:
# 138 registers for the 64-wide part tiles, no spills (145 and 139 without it). Triton 3.9's
# LLVM schedules the same kernel into 255 registers and spills 4-32 B; 3.7 and 3.8 are untested
# and taken as 3.9. There, and under the interpreter (no PTX), the tile reads its X chunk from
# shared memory as it would without the option: same values, the form the tune did not time.
def x_in_registers_launched(config: TileConfig) -> bool:
    """Whether a launch of ``config`` passes X_IN_REGISTERS (what ``inspect`` compiles too)."""
    return config.x_in_registers and not _INTERPRETED and triton_version() < (3, 7)


def square_width(n: int, k: int) -> Optional[int]:
    """``pick_config``'s ``width`` for an [N, K] weight: H when N = K = H, else None."""
    return n if n == k else None


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
    BIAS_FIRST: tl.constexpr = True,
):
    """act(X[o_m] @ W[o_n].T + b[o_n]) as an fp32 [BLOCK_M, BLOCK_N] block, never stored.

    Shared by the pooler (which stores it) and the classifier head (which feeds it to a second
    GEMM), so both run the very same K loop. o_m / o_n are int64 offsets; m_m / m_n their bounds.
    """
    acc = bias_accumulator(b_ptr, o_n, m_n, stride_b, HAS_BIAS and BIAS_FIRST, False, BLOCK_M,
                           BLOCK_N)  # fmt: skip
    acc = dot_k_range(
        x_ptr, w_ptr, o_m, o_n, m_m, m_n, acc, 0, K, stride_xm, stride_xk, stride_wn, stride_wk,
        DOT_PRECISION, INTERPRETED_BF16, False, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    return bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION, False,
                               x_ptr.dtype.element_ty, BIAS_FIRST)  # fmt: skip


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
    Nor for the persistent loops (callers pass HAS_BIAS False here and BIAS_FIRST False to the
    epilogue): Triton 3.6 and 3.9 flatten a tile loop into its K loop by putting each tile's
    start in the loop's first pipeline stage; a start that depends on the bias there feeds the
    last stage's sum back into the first, and the pipeliner then emits no prologue at all, so
    every K step waits for its own copies (sm_90 TTGIR: 2 TMA copies and a wgmma wait of 0,
    against 8 and 1; measured 2x slower on the H100). Their next tile's copies are in flight
    during the epilogue anyway.
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
    SWAP_AB: tl.constexpr, ROUNDED_TO: tl.constexpr, BIAS_FIRST: tl.constexpr = True,
):  # fmt: skip
    """act(acc + b[o_n]) on a K sum that started from bias_accumulator, whose bias it adds where
    that did not (fp32, or not BIAS_FIRST); the result is next rounded to ROUNDED_TO, which sets
    how precise the activation must be."""
    if HAS_BIAS and (b_ptr.dtype.element_ty == tl.float32 or not BIAS_FIRST):
        acc = add_bias(acc, b_ptr, o_n, m_n, stride_b, SWAP_AB)
    return apply_activation(acc, ACTIVATION, ROUNDED_TO)


@triton.jit
def store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16: tl.constexpr):
    """Store an fp32 [BLOCK_M, BLOCK_N] result into out[o_m, o_n], cast once, masked to [M, N]."""
    # under the interpreter with bf16 the cast truncates: round_to rounds to nearest first
    tl.store(out_ptr + o_m[:, None] * stride_om + o_n[None, :],
             round_to(acc, out_ptr.dtype.element_ty, INTERPRETED_BF16),
             mask=m_m[:, None] & m_n[None, :])  # fmt: skip


@triton.jit
def publish_partial(p_part, acc, mask, p_ticket):
    """Store this program's fp32 partial sum of an output tile, then take a ticket at the tile's
    counter: n - 1 for the n-th program to arrive. Deterministic split sums use it only to decide
    WHO adds the partials (the last to arrive), never in what order."""
    tl.store(p_part, acc, mask=mask)
    # every warp's partial is written before this program takes its ticket (the acq_rel
    # atomic then publishes them at GPU scope)
    tl.debug_barrier()
    return tl.atomic_add(p_ticket, 1, sem="acq_rel")


@triton.jit
def read_partial(p_part, mask):
    """Another program's partial stored by publish_partial, once this one's ticket says all are."""
    # .cg: read at L2, where the other programs' stores are, never a stale L1 line
    return tl.load(p_part, mask=mask, other=0.0, cache_modifier=".cg")


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
        p_ticket = ticket_ptr + i_m * tl.num_programs(0) + i_n
        ticket = publish_partial(ws_ptr + i_s * slice_mn + o_ws, acc, m_out, p_ticket)
        if ticket == SPLIT_K - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += read_partial(ws_ptr + s * slice_mn + o_ws, m_out)
            total = bias_and_activation(total, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION,
                                        SWAP_AB, out_ptr.dtype.element_ty)  # fmt: skip
            tl.store(out_ptr + o_out, round_to(total, out_ptr.dtype.element_ty, INTERPRETED_BF16),
                     mask=m_out)  # fmt: skip
            # re-arm the counter for the next launch (and the next CUDA-graph replay)
            tl.atomic_xchg(p_ticket, 0)


launch_pooler_fwd = CachedLaunch(pooler_fwd_kernel)


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
    the plain kernel except that the bias is added after the K loop (bias_accumulator says why),
    so the result does not depend on the grid size, and for fp32 it is the plain kernel's."""
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
            BLOCK_N, BLOCK_K, False,
        )  # fmt: skip
        store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16)


launch_pooler_fwd_persistent = CachedLaunch(pooler_fwd_persistent_kernel)
# Programs of a persistent launch on a CPU device (the interpreter): a few, so that every program
# walks several tiles in the tests.
INTERPRETER_PROGRAMS = 3


@triton.jit
def dot_k_tma(
    x_desc, w_desc, off_m, off_n, acc, k_lo, k_hi, INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    """dot_k_range's plain sum over k in [k_lo, k_hi) (from acc; k_lo a multiple of BLOCK_K), its
    X and W tiles copied by TMA from descriptors.

    The copy engine computes the addresses and zero-fills the rows past M (X) or N (W) and the
    columns past K, which is what the dot needs: no per-thread offsets or masks, and a stage's
    arrival is an mbarrier's transaction count, not a cp.async group wait. WARP_SPECIALIZE: a
    producer warp issues the copies and consumer warpgroups the MMAs, each waiting only on its
    own barriers (Triton's automatic warp specialization); the sum's K order is the same.
    """
    acc, _, _ = dot_k_tma_parts(x_desc, w_desc, off_m, off_n, acc, acc, acc, k_lo, k_hi,
                                INTERPRETED_BF16, BLOCK_N, BLOCK_K, 1,
                                WARP_SPECIALIZE)  # fmt: skip
    return acc


@triton.jit
def registers_copy(b):
    # The same 16-bit block through an identity PTX move, two elements a register. A tl.dot
    # whose A operand was copied by the TMA engine reads it from shared memory (wgmma's SS form);
    # one computed in registers, as this move's result is, makes Triton read the block into
    # registers (ldmatrix, once) and issue wgmma's register-A form, which every part's dot then
    # shares (sm_90 SASS: HGMMA.64x64x16.F32 R.., R.., gdesc[..]). CUDA only: the interpreter
    # runs no PTX, and the values are unchanged anyway.
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [b], dtype=b.dtype,
                                     is_pure=True, pack=2)  # fmt: skip


@triton.jit
def dot_k_tma_parts(
    x_desc, w_desc, off_m, off_n, acc0, acc1, acc2, k_lo, k_hi, INTERPRETED_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, N_PARTS: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, X_IN_REGISTERS: tl.constexpr = False,
):  # fmt: skip
    """dot_k_tma for N_PARTS (1 to 3) adjacent BLOCK_N-wide column blocks from off_n, each with
    its own accumulator (acc0, acc1, acc2; those past N_PARTS come back as they went in), all
    from one X chunk per K step: a tile BLOCK_N * N_PARTS wide that is not a power of two
    (TileConfig.n_parts says why). X_IN_REGISTERS: the chunk is read into registers once for
    all parts (TileConfig.x_in_registers)."""
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, warp_specialize=WARP_SPECIALIZE):
        b_x = x_desc.load([off_m, k0])
        b_w0 = w_desc.load([off_n, k0])
        if N_PARTS > 1:
            b_w1 = w_desc.load([off_n + BLOCK_N, k0])
        if N_PARTS > 2:
            b_w2 = w_desc.load([off_n + 2 * BLOCK_N, k0])
        if INTERPRETED_BF16:  # as in dot_k_range: the interpreter's bf16 dot is wrong
            b_x = b_x.to(tl.float32)
            b_w0 = b_w0.to(tl.float32)
            if N_PARTS > 1:
                b_w1 = b_w1.to(tl.float32)
            if N_PARTS > 2:
                b_w2 = b_w2.to(tl.float32)
        if X_IN_REGISTERS:  # never under the interpreter (x_in_registers_launched)
            b_x = registers_copy(b_x)
        # fp16/bf16 operands only; "ieee" matters only for the interpreter's fp32 copies above
        acc0 = tl.dot(b_x, b_w0.T, acc0, input_precision="ieee")
        if N_PARTS > 1:
            acc1 = tl.dot(b_x, b_w1.T, acc1, input_precision="ieee")
        if N_PARTS > 2:
            acc2 = tl.dot(b_x, b_w2.T, acc2, input_precision="ieee")
    return acc0, acc1, acc2


@triton.jit
def tma_output_tile(
    x_desc, w_desc, b_ptr, out_ptr, i_m, i_n, M, N, K, stride_b, stride_om,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INTERPRETED_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, BIAS_FIRST: tl.constexpr, N_PARTS: tl.constexpr = 1,
    X_IN_REGISTERS: tl.constexpr = False,
):  # fmt: skip
    """Output tile (i_m, i_n) of the TMA kernel, BLOCK_N * N_PARTS wide: the plain kernel's K sum
    (from the bias unless not BIAS_FIRST) and epilogue, on each BLOCK_N-wide part."""
    n0 = i_n.to(tl.int64) * (BLOCK_N * N_PARTS)
    acc0, o_n0, m_n0 = tma_part_start(b_ptr, n0, N, stride_b, HAS_BIAS and BIAS_FIRST, BLOCK_M,
                                      BLOCK_N)  # fmt: skip
    acc1, o_n1, m_n1 = acc0, o_n0, m_n0
    acc2, o_n2, m_n2 = acc0, o_n0, m_n0
    if N_PARTS > 1:
        acc1, o_n1, m_n1 = tma_part_start(b_ptr, n0 + BLOCK_N, N, stride_b,
                                          HAS_BIAS and BIAS_FIRST, BLOCK_M, BLOCK_N)  # fmt: skip
    if N_PARTS > 2:
        acc2, o_n2, m_n2 = tma_part_start(b_ptr, n0 + 2 * BLOCK_N, N, stride_b,
                                          HAS_BIAS and BIAS_FIRST, BLOCK_M, BLOCK_N)  # fmt: skip
    acc0, acc1, acc2 = dot_k_tma_parts(x_desc, w_desc, i_m * BLOCK_M, i_n * (BLOCK_N * N_PARTS),
                                       acc0, acc1, acc2, 0, K, INTERPRETED_BF16, BLOCK_N, BLOCK_K,
                                       N_PARTS, WARP_SPECIALIZE, X_IN_REGISTERS)  # fmt: skip
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    tma_part_store(acc0, b_ptr, out_ptr, o_m, m_m, o_n0, m_n0, stride_b, stride_om, HAS_BIAS,
                   ACTIVATION, INTERPRETED_BF16, BIAS_FIRST)  # fmt: skip
    if N_PARTS > 1:
        tma_part_store(acc1, b_ptr, out_ptr, o_m, m_m, o_n1, m_n1, stride_b, stride_om, HAS_BIAS,
                       ACTIVATION, INTERPRETED_BF16, BIAS_FIRST)  # fmt: skip
    if N_PARTS > 2:
        tma_part_store(acc2, b_ptr, out_ptr, o_m, m_m, o_n2, m_n2, stride_b, stride_om, HAS_BIAS,
                       ACTIVATION, INTERPRETED_BF16, BIAS_FIRST)  # fmt: skip


@triton.jit
def tma_part_start(b_ptr, n0, N, stride_b, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):  # fmt: skip
    """(bias_accumulator, the columns o_n, their bound m_n) for the BLOCK_N columns from n0, an
    int64."""
    o_n = n0 + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    return bias_accumulator(b_ptr, o_n, m_n, stride_b, HAS_BIAS, False, BLOCK_M, BLOCK_N), o_n, m_n


@triton.jit
def tma_part_store(
    acc, b_ptr, out_ptr, o_m, m_m, o_n, m_n, stride_b, stride_om, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, INTERPRETED_BF16: tl.constexpr, BIAS_FIRST: tl.constexpr,
):  # fmt: skip
    """A tile part's epilogue: bias (unless BIAS_FIRST added it), activation, store."""
    acc = bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS, ACTIVATION, False,
                              out_ptr.dtype.element_ty, BIAS_FIRST)  # fmt: skip
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
    N_PARTS: tl.constexpr = 1,
    X_IN_REGISTERS: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """pooler_fwd_kernel's plain tile (no split, no swap) with TMA loads; the same epilogue, the
    same tile order (N tiles fastest) and the same K chunks in the same order. N_PARTS: each
    program's tile is N_PARTS adjacent BLOCK_N-wide column blocks (not with PERSISTENT), whose
    dots read each X chunk from registers with X_IN_REGISTERS (TileConfig.x_in_registers).
    PERSISTENT: a 1-D grid of about one program per SM walks the tiles i, i + programs, ... as
    pooler_fwd_persistent_kernel does; its loop is flattened with the K loop, so the pipeliner may
    issue the next tile's first copies before this tile's epilogue; it adds the bias after the K
    loop (bias_accumulator says why). WARP_SPECIALIZE: a producer warpgroup issues the copies and
    two consumer warpgroups the MMAs (dot_k_tma); with PERSISTENT, of the whole tile loop."""
    if PDL:
        gdc_wait()
    if PERSISTENT:
        tiles_n = tl.cdiv(N, BLOCK_N)
        tiles = tl.cdiv(M, BLOCK_M) * tiles_n
        # WARP_SPECIALIZE: the tile loop is specialized, not the K loop, so the producer copies
        # the next tile's chunks while the consumers run this tile's epilogue (Triton specializes
        # only a loop it does not flatten)
        for tile in tl.range(
            tl.program_id(0),
            tiles,
            tl.num_programs(0),
            flatten=not WARP_SPECIALIZE,
            warp_specialize=WARP_SPECIALIZE,
        ):
            tma_output_tile(x_desc, w_desc, b_ptr, out_ptr, tile // tiles_n, tile % tiles_n, M, N,
                            K, stride_b, stride_om, HAS_BIAS, ACTIVATION, INTERPRETED_BF16,
                            BLOCK_M, BLOCK_N, BLOCK_K, False, False)  # fmt: skip
    else:
        tma_output_tile(x_desc, w_desc, b_ptr, out_ptr, tl.program_id(1), tl.program_id(0), M, N,
                        K, stride_b, stride_om, HAS_BIAS, ACTIVATION, INTERPRETED_BF16, BLOCK_M,
                        BLOCK_N, BLOCK_K, WARP_SPECIALIZE, True, N_PARTS,
                        X_IN_REGISTERS)  # fmt: skip


launch_pooler_fwd_tma = CachedLaunch(pooler_fwd_tma_kernel)


@triton.jit
def stream_k_owner(chunk, chunks_total, programs):
    """The stream-K program whose run holds the ``chunk``-th K chunk of the whole sequence."""
    return ((chunk + 1) * programs - 1) // chunks_total


@triton.jit(do_not_specialize=["M"])
def pooler_fwd_stream_k_kernel(
    x_desc,  # [M, K] first-token rows, block [BLOCK_M, BLOCK_K]
    w_desc,  # [N, K] nn.Linear weight, block [BLOCK_N, BLOCK_K]
    b_ptr,  # [N] bias (unused when HAS_BIAS is False)
    out_ptr,  # [M, N] output
    ws_ptr,  # [2 * programs, BLOCK_M * BLOCK_N] fp32 partial sums, two slots a program
    ticket_ptr,  # [tiles] int32, zero between launches
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
    BIAS_EARLY: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """The TMA kernel's tile with the work split evenly by K chunks instead of by tiles
    (stream-K): all output tiles' K chunks form one sequence, tile after tile (N tiles fastest),
    and program p of P takes chunks [p * T // P, (p + 1) * T // P) of its T. So every program
    does the same work to within one chunk, where whole tiles leave SMs idle: at M = 2048, H = 768
    a 128x128 tile makes 96 programs for 132 SMs. A program whose run covers a tile whole
    finishes it as the TMA kernel does; a run that covers part of one stores its fp32 partial in
    its slot (0 for its first run, 1 for its last) and takes a ticket (publish_partial); the last
    of the tile's programs to arrive sums every partial in program order, which is K order,
    applies the activation and stores (the bias: BIAS_EARLY, below). The order of that sum is
    fixed by M, N, K, the tile and P, never by timing, so the result is deterministic; it may
    differ in the last bit from the TMA kernel's (another grouping of the same fp32 sum). The
    launcher makes P <= T, so that every program has a run and a tile's programs are the
    consecutive ones that own its first and last chunks."""
    if PDL:
        gdc_wait()
    tiles_n = tl.cdiv(N, BLOCK_N)
    chunks = tl.cdiv(K, BLOCK_K)  # a tile's K chunks
    chunks_total = (tl.cdiv(M, BLOCK_M) * tiles_n).to(tl.int64) * chunks
    programs = tl.num_programs(0)
    pid = tl.program_id(0)
    run_lo = pid * chunks_total // programs
    run_hi = (pid + 1) * chunks_total // programs
    c = run_lo
    while c < run_hi:
        tile = c // chunks
        tile_lo = tile * chunks
        k_first = c - tile_lo
        k_end = tl.minimum(chunks, k_first + (run_hi - c))
        i_m = tile // tiles_n
        i_n = tile % tiles_n
        o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        # BIAS_EARLY (STREAM_K_BIAS_EARLY says when): the tile's first run adds the bias (zeros
        # in the others: it is summed once), loaded before the K loop so that its latency hides
        # behind the first copies. Else the epilogue adds it, after the partials are summed.
        if HAS_BIAS and BIAS_EARLY:
            b = tl.load(b_ptr + o_n * stride_b, mask=o_n < tl.where(k_first == 0, N, 0), other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = dot_k_tma(x_desc, w_desc, (i_m * BLOCK_M).to(tl.int32),
                        (i_n * BLOCK_N).to(tl.int32), acc, (k_first * BLOCK_K).to(tl.int32),
                        tl.minimum(k_end * BLOCK_K, K).to(tl.int32), INTERPRETED_BF16, BLOCK_M,
                        BLOCK_N, BLOCK_K, False)  # fmt: skip
        if HAS_BIAS and BIAS_EARLY:
            acc += b.to(tl.float32)[None, :]
        o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        if k_first == 0 and k_end == chunks:  # the whole K sum: no other program holds a part
            acc = bias_and_activation(acc, b_ptr, o_n, m_n, stride_b, HAS_BIAS and not BIAS_EARLY,
                                      ACTIVATION, False, out_ptr.dtype.element_ty,
                                      False)  # fmt: skip
            store_tile(out_ptr, acc, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16)
        else:
            m_out = m_m[:, None] & m_n[None, :]
            o_part = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            slot = 2 * pid + (c != run_lo).to(tl.int32)
            ticket = publish_partial(ws_ptr + slot.to(tl.int64) * (BLOCK_M * BLOCK_N) + o_part,
                                     acc, m_out, ticket_ptr + tile)  # fmt: skip
            first = stream_k_owner(tile_lo, chunks_total, programs)
            last = stream_k_owner(tile_lo + chunks - 1, chunks_total, programs)
            if ticket == last - first:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for p in range(first, last + 1):
                    # p's run in this tile is its first (slot 0) if p starts inside the tile
                    p_slot = 2 * p + (p * chunks_total // programs < tile_lo).to(tl.int64)
                    total += read_partial(ws_ptr + p_slot * (BLOCK_M * BLOCK_N) + o_part, m_out)
                total = bias_and_activation(total, b_ptr, o_n, m_n, stride_b,
                                            HAS_BIAS and not BIAS_EARLY, ACTIVATION, False,
                                            out_ptr.dtype.element_ty, False)  # fmt: skip
                store_tile(out_ptr, total, o_m, o_n, m_m, m_n, stride_om, INTERPRETED_BF16)
                # re-arm the counter for the next launch (and the next CUDA-graph replay)
                tl.atomic_xchg(ticket_ptr + tile, 0)
        c = tile_lo + k_end


launch_pooler_fwd_stream_k = CachedLaunch(pooler_fwd_stream_k_kernel)
# Whether the stream-K tile loads its bias before the K loop. Triton 3.6 (the GPU machines')
# compiles that at 147-148 registers; 3.9 at 255 with spills (sm_90, 128x128x64 w8), as it does
# a bias added to each first run after the loop, or the sum started from it (bias_accumulator);
# so there the epilogue adds it (188 registers, no spills). 3.7 and 3.8 are untested and taken
# as 3.9.
STREAM_K_BIAS_EARLY = triton_version() < (3, 7)


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
    if config.warp_specialize and not config.tma:
        raise ValueError(f"config.warp_specialize needs config.tma: {config}")
    if config.stream_k and (not config.tma or config.persistent or config.warp_specialize):
        raise ValueError(
            f"config.stream_k needs config.tma, and takes neither persistent nor warp_specialize: "
            f"{config}"
        )
    if not 1 <= config.n_parts <= 3:
        raise ValueError(f"config.n_parts must be 1, 2 or 3, got {config.n_parts}")
    if config.n_parts > 1 and (
        not config.tma or config.persistent or config.warp_specialize or config.stream_k
    ):
        raise ValueError(
            f"config.n_parts needs config.tma, and takes none of persistent, warp_specialize or "
            f"stream_k: {config}"
        )
    if config.x_in_registers and config.n_parts < 2:
        raise ValueError(f"config.x_in_registers needs config.n_parts of 2 or 3: {config}")
    if not _INTERPRETED and not warp_specialized_tile_runs(config):
        why = (
            "compiles it, but on an H100 its launch never returned"
            if warp_specialized_tile_compiles(config)
            else "cannot compile it"
        )
        raise ValueError(
            f"config.warp_specialize: a warp-specialized tile of {config.block_m} rows (more than "
            f"64) is not supported: Triton {'.'.join(map(str, triton_version()))} {why}; use "
            f"warp_specialize=False: {config}"
        )


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


def stream_k_scratch_sizes(config: TileConfig, programs: int, m: int, n: int) -> tuple:
    """(partials, tickets) a stream-K launch of ``programs`` needs from split_k_scratch: two
    partial tiles a program, a ticket a tile."""
    tiles = -(-m // config.block_m) * -(-n // config.block_n)
    return 2 * programs * config.block_m * config.block_n, tiles


# table_arch per device, asked once: a device's capability does not change within a process
_TABLE_ARCH: dict = {}


def device_arch(device: torch.device) -> str:
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
    m, k, n = x.shape[0], x.shape[-1], weight.shape[0]
    dtype = x.dtype
    device = x.device  # read once: each read builds a torch.device
    if out is None:
        out = torch.empty((m, n), dtype=dtype, device=device)
    if m == 0 or n == 0:
        return out
    # k == 0 needs no special case: the K loop runs zero times and the result is act(bias).
    if config is None:
        config = pick_config(m, dtype, batch_invariant, device_arch(device), square_width(n, k))
    else:
        check_config(config)
        if config.pdl:
            check_pdl_device(device)
    launch, grid, args, constexprs = launch_args(x, weight, bias, activation, out, config, device)
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


def pooler_grid(config: TileConfig, m: int, n: int, k: int, sms: int, tma: bool) -> tuple:
    """The launch grid of ``config`` at M, N, K on a GPU of ``sms`` SMs (read only by the tiles of
    one program per SM); ``tma``: whether the TMA kernel runs it (``tma_describable``), else the
    pointer kernel, which runs a TMA tile's column blocks one a program."""
    # cdiv written out (-(-a // b)): fewer calls per launch
    grid_n, grid_m = -(-n // config.block_n), -(-m // config.block_m)
    if tma and config.stream_k:  # one program per SM, at most one per K chunk (the kernel needs it)
        return (min(grid_n * grid_m * -(-k // config.block_k), sms),)
    if config.persistent:  # one program per SM, at most one per tile
        return (min(grid_n * grid_m, sms),)
    if tma:  # n_parts column blocks a program
        return (-(-n // (config.block_n * config.n_parts)), grid_m)
    # never more splits than K chunks, so no split is empty (at H = 768, BLOCK_K = 64: 12 chunks)
    return (grid_n, grid_m, max(1, min(config.split_k, -(-k // config.block_k))))


def launch_args(x, weight, bias, activation, out, config: TileConfig, device: torch.device):
    """(launcher, grid, runtime arguments, constexprs) of one pooler launch with this tile."""
    shape = x.shape
    m, k, n = shape[0], shape[-1], weight.shape[0]
    dtype = x.dtype
    x_strides, w_strides = x.stride(), weight.stride()
    # what a descriptor cannot describe runs this tile through the pointer kernel below
    tma = config.tma and tma_describable(x, weight, x_strides, w_strides, dtype, device, k)
    sms = persistent_programs(device) if config.persistent or config.stream_k else 0
    grid = pooler_grid(config, m, n, k, sms, tma)
    pdl = launches_pdl(config)  # the PDL constexpr
    if tma:
        return _tma_launch_args(x, weight, bias, activation, out, config, grid, x_strides[0],
                                w_strides[0], pdl, device)  # fmt: skip
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
        return launch_pooler_fwd_persistent, grid, (x, weight, b, out, *ints), (*flags, pdl)
    split_k = grid[2]
    if split_k > 1:
        ws, tickets = split_k_scratch(device, split_k * m * n, grid[0] * grid[1])
    else:
        ws, tickets = out, out  # any valid pointers; never touched when SPLIT_K == 1
    args = (x, weight, b, out, ws, tickets, *ints)
    constexprs = (*flags, split_k, config.swap_ab, pdl)
    return launch_pooler_fwd, grid, args, constexprs


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
        and 0 < x_strides[0] < TMA_MAX_STRIDE
        and x_strides[0] & 7 == 0
        and 0 < w_strides[0] < TMA_MAX_STRIDE
        and w_strides[0] & 7 == 0
        and x.data_ptr() & 15 == 0
        and weight.data_ptr() & 15 == 0
    )


@functools.cache
def has_tma(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with the TMA copy engine (compute capability 9.0 or later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


TMA_MAX_STRIDE = 1 << 39  # elements of 2 bytes: the 2^40-byte stride limit of a TMA descriptor


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


tensor_descriptor = _descriptor_builder()


def _tma_launch_args(x, weight, bias, activation, out, config, grid, stride_xm, stride_wn, pdl,
                     device):  # fmt: skip
    """``launch_args`` for the TMA tile: two descriptors in place of the X and W pointers."""
    m, k, n = x.shape[0], x.shape[-1], weight.shape[0]
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    # x may be hidden_states itself: position 0 of row i is at data_ptr + i * stride(0), so the
    # [M, K] rows are described without building the [:, 0] view
    x_desc = tensor_descriptor(x, [m, k], [stride_xm, 1], [bm, bk])
    w_desc = tensor_descriptor(weight, [n, k], [stride_wn, 1], [bn, bk])
    if config.stream_k:
        ws, tickets = split_k_scratch(device, *stream_k_scratch_sizes(config, grid[0], m, n))
        args = (x_desc, w_desc, weight if bias is None else bias, out, ws, tickets, m, n, k,
                bias.stride(0) if bias is not None else 0, out.stride(0))  # fmt: skip
        flags = (bias is not None, activation, _INTERPRETED and x.dtype is torch.bfloat16, bm, bn,
                 bk, STREAM_K_BIAS_EARLY, pdl)  # fmt: skip
        return launch_pooler_fwd_stream_k, grid, args, flags
    args = (x_desc, w_desc, weight if bias is None else bias, out, m, n, k,
            bias.stride(0) if bias is not None else 0, out.stride(0))  # fmt: skip
    flags = (bias is not None, activation, _INTERPRETED and x.dtype is torch.bfloat16, bm, bn, bk,
             config.warp_specialize, config.persistent, config.n_parts,
             x_in_registers_launched(config), pdl)  # fmt: skip
    return launch_pooler_fwd_tma, grid, args, flags
