"""The pooler's tuning candidates and compile-ahead cases: what ``python -m bench.tune`` times on
a GPU, and what ``inspect`` and the compiled-code tests compile for sm_90 and sm_80 (every table's
tile, every candidate, the PDL forms)."""

from __future__ import annotations

import math

import torch

from .inspection import REFERENCE_SMS, TRITON_DTYPE, KernelCase
from .pooler import (
    BATCH_INVARIANT_CONFIGS,
    DTYPE_NAMES,
    POOLER_TABLES,
    STREAM_K_BIAS_EARLY,
    pooler_fwd_kernel,
    pooler_fwd_persistent_kernel,
    pooler_fwd_stream_k_kernel,
    pooler_fwd_tma_kernel,
    pooler_grid,
    width_table_configs,
    x_in_registers_launched,
)
from .tiles import TileConfig, config_label

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
#   * Every M (NOTES.md, "What bounds the large-M tiles"): a grid reads (BLOCK_M + BLOCK_N) * K * 2
#     bytes from L2 per output tile; the tiles that move the most of it ran at 8-9 TB/s in runs
#     3-5, which looked like a ceiling. The seventh run's counters put that at 28-30% of the
#     L2-to-SM peak with no unit saturated: the large tiles are latency-bound, so bytes in flight
#     per SM (CTAs per SM x chunks in flight) weigh more than bytes per output.
# Every candidate is a multiple of 64 rows in whole warpgroups (wgmma on sm_90) except the 16- and
# 32-row non-swapped ones, kept because at M <= 16 the MMA shape hardly matters.
_HALF_CANDIDATES = (
    (1, 64, TileConfig(16, 32, 64, 4, 4)),
    (1, 64, TileConfig(16, 32, 64, 4, 3, split_k=4)),
    (1, 64, TileConfig(16, 32, 64, 4, 2, split_k=6)),
    (1, 64, TileConfig(16, 16, 256, 4, 3)),
    (1, 64, TileConfig(16, 16, 128, 4, 4)),
    # after the sixth run, unmeasured: the two above with every K chunk in flight at once (48 KiB),
    # and so the 16x32x64 s4 tile (12 chunks, four latencies: 5.1 us at M = 1) and its 16x16
    # twin with BLOCK_K 64: the same tile with only the stages changed measures the principle
    # (48-72 KiB)
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
    # (the fourth: 9% at M = 1024, 64x64x64 s4); the 64x64 tiles up to M = 8192 since the seventh
    # (below)
    (64, 1024, TileConfig(64, 32, 64, 4, 4, tma=True)),
    (128, 8192, TileConfig(64, 64, 64, 4, 4, tma=True)),
    (128, 8192, TileConfig(64, 64, 64, 4, 3, tma=True)),
    # after the fourth run, unmeasured: the mid-M winners (deep K blocks of 128, pointer loads)
    # with TMA loads
    (64, 1024, TileConfig(64, 32, 128, 4, 4, tma=True)),
    (64, 1024, TileConfig(64, 64, 128, 4, 3, tma=True)),
    # warp-specialized tiles are not tried: at 64 rows Triton 3.6 cannot split the tile between
    # the two consumer warpgroups and each computes all of it (its TTGIR holds two identical
    # partitions), which is why the 64-row tiles tuned here through run 7 measured about 2x their
    # plain twins; the 128-row ones (128x128 s3/s4, 128x256 s2/s3, persistent 128x128 s3/s4)
    # never returned from their first launch in the eighth run (pooler.warp_specialized_tile_runs)
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
    # memory, one CTA per SM. Tried up to M = 2048 too, where the winner (64x128x64 s4, 8.8 us
    # against 3.2 at the measured GEMM rate) waits about four latencies per tile in one wave,
    # and this one would wait one per tile in three
    (64, 256, TileConfig(16, 64, 128, 4, 7, swap_ab=True)),
    (128, 256, TileConfig(64, 32, 128, 4, 7, tma=True)),
    (256, 2048, TileConfig(64, 64, 128, 4, 7, tma=True)),
    # after the seventh run, unmeasured: its L2 counters put the large-M tiles at 28-30% of the
    # L2-to-SM path's peak with no unit saturated, i.e. latency-bound. These hold more bytes in
    # flight per SM than the 64x128x64 s3 winner (3 CTAs x 2 chunks of 24 KiB = 144 KiB): 64x128
    # with K chunks of 32, 6 stages (3 CTAs x 5 x 12 KiB = 180 KiB) or 4 stages (4 CTAs, 144 KiB
    # in finer chunks); and the 64x64x64 tiles above now run up to M = 8192 (4 CTAs at s3, 3 at
    # s4: 128 and 144 KiB)
    (1024, 8192, TileConfig(64, 128, 32, 4, 6, tma=True)),
    (1024, 8192, TileConfig(64, 128, 32, 4, 4, tma=True)),
    # and stream-K (pooler_fwd_stream_k_kernel): one program per SM, each taking an
    # equal run of all tiles' K chunks. Run 7's tiles leave SMs idle where the tile count is not
    # a multiple of what the SMs hold: 96 128x128 tiles at M = 2048 (36 of 132 SMs idle), 192 at
    # 4096 (60 SMs with two tiles, 72 with one); cuBLAS chose a 192x128 tile there, 132 tiles for
    # 132 SMs, a shape Triton's power-of-two blocks cannot take. Each program here computes 8.7
    # chunks of a 128x128 tile at 2048 instead of 12 on the busiest SM, 17.5 instead of 24 at
    # 4096, at the cost of a 64 KiB fp32 partial written and read once per split tile. 147-151
    # registers (Triton 3.6; 188 with 3.9), no spills: one program per SM either way. Measured
    # (eighth run, bf16): 19.4 us at M = 2048, 24.7 at 4096, 36.7 at 8192, 2.2-2.6x the part tiles
    # and 128x128 below; kept as a candidate for GPUs with other SM counts.
    (1024, 8192, TileConfig(128, 128, 64, 8, 3, tma=True, stream_k=True)),
    (1024, 8192, TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True)),
    # and tiles three 64-wide column blocks wide (TileConfig.n_parts): the whole
    # tiles that fill the SMs which stream-K splits to get there. 128x(3x64) is 4 x 32 = 128
    # tiles at M = 4096, one wave of one CTA per SM (145 registers; 120 or 160 KiB), each 1.5
    # times a 128x128 tile's work, where 128x128 tiles make 192 (two waves at one CTA per SM);
    # 64x(3x64) is 128 tiles at M = 2048, where the 128x128 winner makes 96. Run 7's 128x128x64
    # s4 tile, one CTA per SM, took 8.50 us at 2048 (one wave) and 15.16 at 4096 (two): ~1.8 us
    # fixed and ~6.7 a wave. Scaled by work alone that predicts ~11.9 us for 128x(3x64) at 4096
    # and ~6.8 for 64x(3x64) at 2048; fewer bytes per output and three MMAs per X chunk may do
    # better, one warpgroup a CTA (64 rows) worse. Measured (eighth run): 64x(3x64) s4 won at 2048
    # (8.0 us; 7.5 with PDL) and s3 at 4096 (11.4; 11.0 with PDL), 0.76-0.77x eager; 128x(3x64)
    # 12.2 at 2048 and 24.1 at 8192, where the 128x128 s3 tile took 21.4 (bf16).
    (2048, 8192, TileConfig(128, 64, 64, 8, 3, tma=True, n_parts=3)),
    (2048, 8192, TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3)),
    (2048, 4096, TileConfig(64, 64, 64, 4, 3, tma=True, n_parts=3)),
    (2048, 4096, TileConfig(64, 64, 64, 4, 4, tma=True, n_parts=3)),
    # after the ninth run, unmeasured: M = 2048's winner (64x(3x64)x64 s4, one wave of one CTA an
    # SM, 7.62 us with PDL against eager's 9.97) with more of its 12 K chunks in flight (5 or 6
    # stages: 4 or 5 chunks ahead, 160 / 192 KiB), or in 6 chunks of 128 (2 or 3 stages, 128 /
    # 192 KiB: half the K steps, so half the per-step barriers and waits). 139-142 registers,
    # no spills (Triton 3.6 and 3.9). Predicted: within a few per cent of s4 either way, since
    # each part's m64n64 wgmma already reads shared memory at the rate its MMAs need (the part
    # tiles' limit, NOTES.md); the tune decides
    (2048, 4096, TileConfig(64, 64, 64, 4, 5, tma=True, n_parts=3)),
    (2048, 4096, TileConfig(64, 64, 64, 4, 6, tma=True, n_parts=3)),
    (2048, 4096, TileConfig(64, 64, 128, 4, 2, tma=True, n_parts=3)),
    (2048, 4096, TileConfig(64, 64, 128, 4, 3, tma=True, n_parts=3)),
    # and three 32-wide blocks (96 columns), whose CTAs are small enough for two an SM (74
    # registers; 80 and 112 KiB at s4), so that one CTA's epilogue runs under the other's loop:
    # 128x(3x32) makes 256 tiles at M = 4096 (one wave of two an SM; the 64x128 s3 winner's 384
    # make one of three) and 64x(3x32) 256 at 2048 (one wave of two an SM)
    (2048, 8192, TileConfig(128, 32, 64, 8, 4, tma=True, n_parts=3)),
    (1024, 4096, TileConfig(64, 32, 64, 4, 4, tma=True, n_parts=3)),
    # and each of those with its X chunk in registers (TileConfig.x_in_registers):
    # a part's wgmma reading both operands from shared memory needs 2 KiB + N x 32 B per k16,
    # at the SM's 128 B a clock against 2048 MACs a clock, 32 clocks of each for a 64-wide part
    # and 24 for 16 for a 32-wide one; with X read once for all parts, 21 and 13. Triton 3.6:
    # 138 registers for the 64-wide parts, 90 and 96 for the 32-wide, 8-16 KiB less shared
    # memory; as many CTAs per SM, and three for 64x(3x32) against two. Measured (eighth run):
    # slower than the same tile from shared memory everywhere, e.g. 13.0 against 9.3 us (64x(3x64)
    # s3, bf16, M = 2048)
    (2048, 8192, TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3, x_in_registers=True)),
    (2048, 4096, TileConfig(64, 64, 64, 4, 3, tma=True, n_parts=3, x_in_registers=True)),
    (2048, 8192, TileConfig(128, 32, 64, 8, 4, tma=True, n_parts=3, x_in_registers=True)),
    (1024, 4096, TileConfig(64, 32, 64, 4, 4, tma=True, n_parts=3, x_in_registers=True)),
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
    TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True, pdl=True),
    TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3, pdl=True),
)


def tune_candidates(dtype: torch.dtype, arch: str = "default") -> tuple:
    """What ``python -m bench.tune`` tries on a GPU whose table key is ``arch``: (lo, hi, config)."""
    return TUNE_CANDIDATES[dtype] + ARCH_CANDIDATES.get(arch, {}).get(dtype, ())


def inspection_arch(arch: str) -> str:
    """A table key's compile target name in ``inspect``: "sm90" -> "sm_90"."""
    return f"sm_{arch[2:]}"


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
                previous_m, previous = previous, max_m
                name = f"pooler_fwd {DTYPE_NAMES[dtype]}{suffix} {bucket}"
                if suffix == " batch-invariant":  # the name it has always had
                    name = f"pooler_fwd {DTYPE_NAMES[dtype]} {bucket}{suffix}"
                tags = {"table": table_name, "max_m": max_m,
                        "programs_at": programs_at(cfg, previous_m + 1, max_m)}  # fmt: skip
                if table_name not in ("default", "batch_invariant"):
                    # an architecture's table runs on that architecture alone (its TMA tiles
                    # would compile into pointer loads, and spill, for sm_80)
                    tags["only_arch"] = inspection_arch(table_name)
                cases.append(inspection_case(name, dtype, cfg, tags))
    for arch, hidden, dtype, cfg in width_table_configs():
        name = f"pooler_fwd {DTYPE_NAMES[dtype]} {arch} H={hidden} {config_label(cfg)}"
        tags = {"table": f"{arch} H={hidden}", "only_arch": inspection_arch(arch)}
        cases.append(inspection_case(name, dtype, cfg, tags))
    for dtype, candidates in TUNE_CANDIDATES.items():
        for lo, hi, cfg in candidates:
            name = f"pooler_fwd_candidate {DTYPE_NAMES[dtype]} {config_label(cfg)}"
            tags = {
                "table": "candidate",
                "m_range": (lo, hi),
                "programs_at": programs_at(cfg, lo, hi),
            }
            cases.append(inspection_case(name, dtype, cfg, tags))
    for arch, by_dtype in ARCH_CANDIDATES.items():
        for dtype, candidates in by_dtype.items():
            for lo, hi, cfg in candidates:
                name = f"pooler_fwd_candidate {DTYPE_NAMES[dtype]} {arch} {config_label(cfg)}"
                only = inspection_arch(arch)
                tags = {"table": "candidate", "m_range": (lo, hi), "only_arch": only,
                        "programs_at": programs_at(cfg, lo, hi)}  # fmt: skip
                cases.append(inspection_case(name, dtype, cfg, tags))
    for dtype in (torch.float16, torch.bfloat16):
        for cfg in PDL_INSPECTION_TILES:
            name = f"pooler_fwd_pdl {DTYPE_NAMES[dtype]} sm90 {config_label(cfg)}"
            cases.append(inspection_case(name, dtype, cfg, {"table": "pdl", "only_arch": "sm_90"}))
    return cases


# The batch size an inspection case's last table row (bound None) is sized at: the tune's largest.
LARGEST_M = 8192


def programs_at(cfg: TileConfig, lo: int, hi, hidden: int = 768) -> dict:
    """{target: ((lo, programs), (hi, programs))}: the grid's size at the edges of the batch sizes
    ``cfg`` serves (``hi`` None: LARGEST_M, or ``lo`` past it), at H = ``hidden``, on each target's
    reference GPU (inspection.REFERENCE_SMS). TMA tiles run the TMA kernel on sm_90 and the
    pointer kernel on sm_80, as pooler_fwd launches them."""
    edges = (lo, max(lo, LARGEST_M) if hi is None else hi)
    out = {}
    for target, sms in REFERENCE_SMS.items():
        tma = cfg.tma and target == "sm_90"
        out[target] = tuple((m, math.prod(pooler_grid(cfg, m, hidden, hidden, sms, tma)))
                            for m in dict.fromkeys(edges))  # fmt: skip
    return out


def inspection_case(name: str, dtype: torch.dtype, cfg: TileConfig, tags: dict):
    t = TRITON_DTYPE[dtype]
    tiles = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
    if cfg.tma:
        # Descriptors are typed by element type and block shape only, as Triton's launcher types
        # them; their sizes and strides are run-time values the copy engine reads, with no hints.
        # The stream-K kernel adds its scratch after the output.
        kernel = pooler_fwd_stream_k_kernel if cfg.stream_k else pooler_fwd_tma_kernel
        scratch = ("ws_ptr", "ticket_ptr") if cfg.stream_k else ()
        signature = {
            "x_desc": f"tensordesc<{t}[{cfg.block_m}, {cfg.block_k}]>",
            "w_desc": f"tensordesc<{t}[{cfg.block_n}, {cfg.block_k}]>",
            "b_ptr": f"*{t}",
            "out_ptr": f"*{t}",
            **({"ws_ptr": "*fp32", "ticket_ptr": "*i32"} if scratch else {}),
            **dict.fromkeys(("M", "N", "K", "stride_om"), "i32"),
        }
        # a contiguous bias's stride is 1, which the launcher makes the constant 1
        constexprs = {"stride_b": 1, "HAS_BIAS": True, "ACTIVATION": "tanh",
                      "INTERPRETED_BF16": False, **tiles, "PDL": cfg.pdl}  # fmt: skip
        if cfg.stream_k:
            constexprs.update(BIAS_EARLY=STREAM_K_BIAS_EARLY)  # as this Triton's launch passes it
        else:
            constexprs.update(WARP_SPECIALIZE=cfg.warp_specialize, PERSISTENT=cfg.persistent,
                              N_PARTS=cfg.n_parts,
                              X_IN_REGISTERS=x_in_registers_launched(cfg))  # fmt: skip
        divisible = ("b_ptr", "out_ptr", *scratch, "N", "K", "stride_om")
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
