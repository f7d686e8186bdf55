"""Tile tables: a kernel's launch configuration looked up by batch size, never autotuned."""

from __future__ import annotations

from typing import NamedTuple, Optional, TypeVar


class TileConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    # Forward pooler only (other kernels leave the defaults): K split over this many programs per
    # output tile, reduced in fixed order; and the swapped product W @ X^T (see kernels/pooler.py).
    split_k: int = 1
    swap_ab: bool = False
    # one program per SM looping over the output tiles (plain tiles only; kernels/pooler.py)
    persistent: bool = False
    # X and W tiles loaded by the TMA copy engine through tensor descriptors (plain tiles only,
    # fp16/bf16; kernels/pooler.py)
    tma: bool = False
    # TMA tiles only: Triton splits the K loop (a persistent tile's tile loop) into a producer
    # warpgroup issuing the copies and two consumer warpgroups issuing the MMAs on 64 rows each
    # (tl.range(warp_specialize=True); kernels/pooler.py)
    warp_specialize: bool = False
    # Programmatic dependent launch (sm_90 and later; ignored by the interpreter): the kernel may
    # be launched while the previous kernel on its stream drains, and waits for it (gdc_wait)
    # before its first memory access (kernels/pooler.py)
    pdl: bool = False
    # TMA tiles only: one program per SM, each taking an equal run of all tiles' K chunks; a tile
    # split between programs is summed in fixed order by the last to finish (stream-K;
    # kernels/pooler.py)
    stream_k: bool = False
    # TMA tiles only (not persistent, warp-specialized or stream-K): a program's tile is n_parts
    # adjacent block_n-wide column blocks (1 to 3) sharing each X chunk, so 128x(3x64) is 128
    # rows by 192 columns, a width Triton's power-of-two blocks cannot take whole; at H = 768 on
    # a 132-SM H100, 128 such tiles at M = 4096 and 128 of 64x(3x64) at 2048 (kernels/pooler.py)
    n_parts: int = 1
    # Tiles of several parts only: each K step's X chunk goes from shared memory into registers
    # once, and every part's wgmma reads it there (its register-A form), instead of each part's
    # wgmma reading it from shared memory again (kernels/pooler.py, dot_k_tma_parts)
    x_in_registers: bool = False


def config_label(cfg: TileConfig) -> str:
    """A config in a few characters: 64x32x64 w4 s3 k4 swap, 128x(3x64)x64 w8 s4 tma xreg."""
    width = f"({cfg.n_parts}x{cfg.block_n})" if cfg.n_parts > 1 else f"{cfg.block_n}"
    label = f"{cfg.block_m}x{width}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"
    if cfg.split_k > 1:
        label += f" k{cfg.split_k}"
    label += (" swap" if cfg.swap_ab else "") + (" persistent" if cfg.persistent else "")
    label += (" tma" if cfg.tma else "") + (" ws" if cfg.warp_specialize else "")
    label += (" stream-k" if cfg.stream_k else "") + (" xreg" if cfg.x_in_registers else "")
    return label + (" pdl" if cfg.pdl else "")


# A table is a tuple of (largest M the row serves, config), in increasing M, the last row's bound
# None (every larger M). The lookup is a pure function of M, so it costs nothing worth caching
# beyond the launcher's own lru_cache, never benchmarks at first call, and is the same every run.
Config = TypeVar("Config")
TileTable = tuple[tuple[Optional[int], Config], ...]


def pick_tile(table: TileTable, m: int) -> Config:
    for max_m, config in table:
        if max_m is None or m <= max_m:
            return config
    raise ValueError("a tile table must end with a row whose bound is None")
