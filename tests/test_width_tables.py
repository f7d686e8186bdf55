"""A width's own tile table (``WIDTH_TABLES`` in kernels/pooler_tables.py, from
``python -m bench.tune --hidden H``): the main tables' M buckets are tuned at H = 768, and a
square [H, H] weight of a width tuned on its own takes that width's rows on that architecture;
every other weight, every M a width table hands back (a None row) and ``batch_invariant`` take the
main tables, as before.
"""

from __future__ import annotations

import pytest
import torch

from bertpool_fast.kernels import pooler, pooler_plan, pooler_tables
from bertpool_fast.kernels.pooler import (
    BATCH_INVARIANT_CONFIGS,
    DTYPE_NAMES,
    POOLER_TABLES,
    arch_has_pdl,
    pick_config,
    pooler_fwd,
    square_width,
)
from bertpool_fast.kernels.tiles import TileConfig, pick_tile
from conftest import assert_close_rel, poisoned, randn

WIDE = TileConfig(64, 128, 64, 4, 3, tma=True, pdl=True)
WIDEST = TileConfig(128, 128, 64, 8, 3, tma=True, pdl=True)


def width_table_faults(width_tables: dict, provenance: dict) -> list[str]:
    """What is wrong with a module's WIDTH_TABLES / WIDTH_PROVENANCE (empty when nothing)."""
    faults = []
    if {a: set(w) for a, w in width_tables.items()} != {a: set(w) for a, w in provenance.items()}:
        faults.append("WIDTH_PROVENANCE does not name exactly the tables' architectures and widths")
    for arch, by_width in width_tables.items():
        if arch not in pooler_tables.TABLES or arch == "default":
            faults.append(f"{arch}: a width table needs a GPU architecture with a main table")
        for width, by_dtype in by_width.items():
            where = f"{arch} H={width}"
            if not isinstance(width, int) or width < 1:
                faults.append(f"{where}: the width must be a positive int")
            for dtype_name, rows in by_dtype.items():
                if dtype_name not in DTYPE_NAMES.values():
                    faults.append(f"{where}: unknown dtype {dtype_name!r}")
                bounds = [m for m, _ in rows]
                if not rows or bounds[-1] is not None or rows[-1][1] is None:
                    faults.append(f"{where} {dtype_name}: must end in an open row with a tile")
                elif bounds[:-1] != sorted(set(bounds[:-1])):
                    faults.append(f"{where} {dtype_name}: bounds must increase")
                for _, cfg in rows:
                    if cfg is not None and not isinstance(cfg, TileConfig):
                        faults.append(f"{where} {dtype_name}: {cfg!r} is not a TileConfig")
                    elif cfg is not None and cfg.pdl and not arch_has_pdl(arch):
                        faults.append(f"{where} {dtype_name}: pdl on an architecture without it")
    return faults


def test_shipped_width_tables_are_well_formed():
    assert width_table_faults(pooler_tables.WIDTH_TABLES, pooler_tables.WIDTH_PROVENANCE) == []


@pytest.mark.parametrize(
    "tables,fault",
    [
        ({"sm90": {1024: {"fp16": ((1024, None), (None, WIDE))}}}, "WIDTH_PROVENANCE"),
        ({"sm77": {1024: {"fp16": ((None, WIDE),)}}}, "needs a GPU architecture"),
        ({"sm90": {1024: {"fp16": ((4096, WIDE),)}}}, "open row"),
        ({"sm90": {1024: {"fp16": ((1024, WIDE), (None, None))}}}, "open row"),
        ({"sm90": {1024: {"fp16": ((4096, WIDE), (2048, WIDE), (None, WIDE))}}}, "increase"),
        ({"sm90": {1024: {"fp8": ((None, WIDE),)}}}, "unknown dtype"),
        ({"sm80": {1024: {"fp16": ((None, WIDE),)}}}, "pdl on an architecture"),
    ],
    ids=["provenance", "arch", "not-open", "open-none", "order", "dtype", "pdl"],
)
def test_a_malformed_width_table_is_caught(tables, fault):
    provenance = {a: dict.fromkeys(w, "measured") for a, w in tables.items()}
    if fault == "WIDTH_PROVENANCE":
        provenance = {}
    assert any(fault in f for f in width_table_faults(tables, provenance))


@pytest.fixture
def width_table(monkeypatch):
    """A width table for H = 64 on ``arch`` (fp16 only): M <= 8 back to the main table, WIDE to
    M = 40, WIDEST above; ``pick_config``'s cache cleared around the test."""

    def install(arch: str, wide=WIDE, widest=WIDEST):
        rows = ((8, None), (40, wide), (None, widest))
        monkeypatch.setattr(pooler, "POOLER_WIDTH_TABLES", {arch: {64: {torch.float16: rows}}})
        pick_config.cache_clear()

    yield install
    pick_config.cache_clear()


def test_a_square_weight_of_a_tuned_width_takes_its_rows(width_table):
    width_table("sm90")
    main = POOLER_TABLES["sm90"][torch.float16]
    assert pick_config(9, torch.float16, False, "sm90", 64) == WIDE
    assert pick_config(40, torch.float16, False, "sm90", 64) == WIDE
    assert pick_config(41, torch.float16, False, "sm90", 64) == WIDEST
    assert pick_config(100_000, torch.float16, False, "sm90", 64) == WIDEST
    # the M the width table hands back, other widths, other shapes, other dtypes, other GPUs
    for m in (1, 8):
        assert pick_config(m, torch.float16, False, "sm90", 64) == pick_tile(main, m)
    for width in (None, 768, 1024):
        assert pick_config(41, torch.float16, False, "sm90", width) == pick_tile(main, 41)
    bf16 = POOLER_TABLES["sm90"][torch.bfloat16]
    assert pick_config(41, torch.bfloat16, False, "sm90", 64) == pick_tile(bf16, 41)
    default = POOLER_TABLES["default"][torch.float16]
    assert pick_config(41, torch.float16, False, "default", 64) == pick_tile(default, 41)
    # batch_invariant keeps its one table: its guarantee is the same tiles at every width too
    invariant = BATCH_INVARIANT_CONFIGS[torch.float16]
    assert pick_config(41, torch.float16, True, "sm90", 64) == pick_tile(invariant, 41)


def test_square_width():
    assert square_width(1024, 1024) == 1024
    assert square_width(768, 1024) is None and square_width(1024, 768) is None


def _launched_configs(monkeypatch) -> list:
    seen = []
    real = pooler.launch_args

    def spy(x, weight, bias, activation, out, config, device):
        seen.append(config)
        return real(x, weight, bias, activation, out, config, device)

    monkeypatch.setattr(pooler, "launch_args", spy)
    return seen


def test_pooler_fwd_launches_the_width_tables_tile_for_a_square_weight(width_table, monkeypatch):
    # On the CPU the device's table is "default": give it a width table of pointer tiles the
    # interpreter runs, and check both the tile launched and the result.
    wide, widest = TileConfig(16, 32, 32, 4, 2), TileConfig(32, 64, 32, 4, 2)
    width_table("default", wide, widest)
    seen = _launched_configs(monkeypatch)
    main = POOLER_TABLES["default"][torch.float16]
    for b, h_in, h_out, expected in [
        (20, 64, 64, wide),
        (41, 64, 64, widest),
        (3, 64, 64, pick_tile(main, 3)),  # handed back to the main table
        (20, 64, 48, pick_tile(main, 20)),  # not square
        (20, 48, 48, pick_tile(main, 20)),  # another width
    ]:
        hidden = randn(b, 3, h_in, dtype=torch.float16)
        weight = randn(h_out, h_in, dtype=torch.float16, scale=h_in**-0.5)
        bias = randn(h_out, dtype=torch.float16, scale=0.5)
        out = poisoned((b, h_out), torch.float16, hidden.device)
        pooler_fwd(hidden, weight, bias, "tanh", out=out)
        assert seen[-1] == expected, (b, h_in, h_out)
        ref = torch.tanh(hidden[:, 0].double() @ weight.double().t() + bias.double())
        assert_close_rel(out, ref, torch.float16)


def test_a_plan_picks_the_width_tables_tile(width_table, monkeypatch):
    # plan_pooler_fwd makes pooler_fwd's own choice: for a square weight, the width's
    seen = _launched_configs(monkeypatch)
    monkeypatch.setattr(pooler.launch_pooler_fwd, "enabled", False)  # no plan: just the pick
    width_table("default", TileConfig(16, 32, 32, 4, 2), TileConfig(32, 64, 32, 4, 2))
    hidden = randn(41, 3, 64, dtype=torch.float16)
    weight = randn(64, 64, dtype=torch.float16, scale=0.125)
    assert pooler_plan.plan_pooler_fwd(hidden, weight, None, "tanh") is None
    assert seen == []  # disabled: returns before choosing
    monkeypatch.setattr(pooler.launch_pooler_fwd, "enabled", True)
    pooler_plan.plan_pooler_fwd(hidden, weight, None, "tanh")
    assert seen == [TileConfig(32, 64, 32, 4, 2)]


def test_width_tables_are_inspected_and_swept_on_their_architecture(width_table):
    # `inspect` compiles a width table's tiles for its architecture alone, and the GPU sweep
    # (which runs every shipped tile) takes them from the same cases
    from bertpool_fast.kernels.pooler_candidates import inspection_cases

    width_table("sm90")
    cases = {c.tags["config"]: c for c in inspection_cases() if c.tags["table"] == "sm90 H=64"}
    assert set(cases) == {WIDE, WIDEST}
    assert all(c.tags["only_arch"] == "sm_90" and c.dtype == torch.float16 for c in cases.values())
