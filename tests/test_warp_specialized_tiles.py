"""Warp-specialized TMA tiles of 128 rows: Triton 3.6 compiles them into a producer and two consumer
warpgroups of 64 rows each, but on an H100 their launch never returned (the eighth run); later
releases fail to compile them. So the runtime runs a table's such tile unspecialized on every
release, an explicit ``config=`` gets a clear error instead of a hang or a compile failure inside
Triton, and the tuner no longer tries them.
"""

from __future__ import annotations

import pytest
import torch

from bertpool_fast.kernels import pooler
from bertpool_fast.kernels.pooler_candidates import ARCH_CANDIDATES, inspection_cases
from bertpool_fast.kernels.tiles import TileConfig

COOPERATIVE = TileConfig(128, 128, 64, 4, 4, tma=True, warp_specialize=True, pdl=True)
SIXTY_FOUR_ROWS = TileConfig(64, 128, 64, 4, 3, tma=True, warp_specialize=True)


@pytest.fixture
def triton_release(monkeypatch):
    def release(version: tuple[int, int]):
        monkeypatch.setattr(pooler, "triton_version", lambda: version)
        pooler.pick_config.cache_clear()

    yield release
    pooler.pick_config.cache_clear()


def test_which_tiles_each_release_compiles(triton_release):
    triton_release((3, 6))
    assert pooler.warp_specialized_tile_compiles(COOPERATIVE)
    for version in ((3, 7), (3, 9), (4, 0)):
        triton_release(version)
        assert not pooler.warp_specialized_tile_compiles(COOPERATIVE)
        assert pooler.warp_specialized_tile_compiles(SIXTY_FOUR_ROWS)
        assert pooler.warp_specialized_tile_compiles(COOPERATIVE._replace(warp_specialize=False))


def test_a_table_tile_runs_unspecialized_on_every_release(triton_release, monkeypatch):
    table = ((64, TileConfig(16, 16, 128, 4, 4)), (None, COOPERATIVE))
    tables = {arch: dict(by_dtype) for arch, by_dtype in pooler.POOLER_TABLES.items()}
    tables["sm90"][torch.float16] = table
    monkeypatch.setattr(pooler, "POOLER_TABLES", tables)
    for version in ((3, 6), (3, 9)):
        triton_release(version)
        plain = pooler.pick_config(4096, torch.float16, False, "sm90")
        # the same tile, stages and launch option; the two consumer warpgroups become 8 plain warps
        assert plain == TileConfig(128, 128, 64, 8, 4, tma=True, pdl=True)
        assert pooler.pick_config(8, torch.float16, False, "sm90") == table[0][1]


def test_an_explicit_config_gets_a_clear_error(triton_release, monkeypatch):
    # on a GPU: a ValueError naming the option and why, not a hang or a compile failure
    monkeypatch.setattr(pooler, "_INTERPRETED", False)
    triton_release((3, 9))
    with pytest.raises(ValueError, match=r"config.warp_specialize: .* Triton 3\.9 cannot compile"):
        pooler.check_config(COOPERATIVE)
    pooler.check_config(SIXTY_FOUR_ROWS)
    triton_release((3, 6))
    with pytest.raises(ValueError, match=r"Triton 3\.6 compiles it, but on an H100 its launch"):
        pooler.check_config(COOPERATIVE)
    pooler.check_config(SIXTY_FOUR_ROWS)
    pooler.check_config(COOPERATIVE._replace(warp_specialize=False, num_warps=8))


def test_no_candidate_or_shipped_tile_is_warp_specialized_on_128_rows():
    # what the tuner times and what the tables ship can all be launched
    tiles = [c for by in ARCH_CANDIDATES.values() for cands in by.values() for _, _, c in cands]
    tiles += [c for tables in pooler.POOLER_TABLES.values() for rows in tables.values()
              for _, c in rows]  # fmt: skip
    tiles += [c.tags["config"] for c in inspection_cases() if "config" in c.tags]
    assert tiles and all(pooler.warp_specialized_tile_runs(c) for c in tiles)
