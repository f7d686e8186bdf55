"""Warp-specialized TMA tiles of 128 rows (sm_90 tuning candidates): Triton 3.6 compiles them into
a producer and two consumer warpgroups of 64 rows each; later releases fail to compile them. A
table tuned with 3.6 may hold one, so the runtime runs the same tile unspecialized there, and an
explicit ``config=`` gets a clear error instead of a compile failure inside Triton.
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


def test_a_table_tile_runs_unspecialized_where_triton_cannot_compile_it(
    triton_release, monkeypatch
):
    table = ((64, TileConfig(16, 16, 128, 4, 4)), (None, COOPERATIVE))
    tables = {arch: dict(by_dtype) for arch, by_dtype in pooler.POOLER_TABLES.items()}
    tables["sm90"][torch.float16] = table
    monkeypatch.setattr(pooler, "POOLER_TABLES", tables)
    triton_release((3, 6))
    assert pooler.pick_config(4096, torch.float16, False, "sm90") == COOPERATIVE
    triton_release((3, 9))
    plain = pooler.pick_config(4096, torch.float16, False, "sm90")
    # the same tile, stages and launch option; the two consumer warpgroups become 8 plain warps
    assert plain == TileConfig(128, 128, 64, 8, 4, tma=True, pdl=True)
    assert pooler.pick_config(8, torch.float16, False, "sm90") == table[0][1]


def test_an_explicit_config_gets_a_clear_error(triton_release, monkeypatch):
    # on a GPU: a ValueError naming the option, not a compile failure inside Triton
    monkeypatch.setattr(pooler, "_INTERPRETED", False)
    triton_release((3, 9))
    with pytest.raises(ValueError, match=r"config.warp_specialize: Triton 3\.9 cannot compile"):
        pooler.check_config(COOPERATIVE)
    pooler.check_config(SIXTY_FOUR_ROWS)
    triton_release((3, 6))
    pooler.check_config(COOPERATIVE)


def test_candidates_are_128_rows_and_their_fallbacks_are_inspected():
    # 64-row warp-specialized tiles compute their whole tile in each consumer warpgroup (Triton
    # 3.6 cannot split 64 rows between two), so none is a candidate; each 128-row one has its
    # unspecialized fallback compiled beside it
    specialized = [c for by in ARCH_CANDIDATES.values() for cands in by.values()
                   for _, _, c in cands if c.warp_specialize]  # fmt: skip
    assert specialized and all(c.block_m == 128 and c.tma for c in specialized)
    fallbacks = {c.tags["config"] for c in inspection_cases() if c.tags["table"] == "fallback"}
    assert fallbacks == {pooler.unspecialized_tile(c) for c in specialized}
    assert all(not c.warp_specialize and c.num_warps == 8 for c in fallbacks)
