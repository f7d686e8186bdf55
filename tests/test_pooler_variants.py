"""The forward pooler's kernel variants (SWAP_AB, deterministic SPLIT_K), the ``config=`` override,
and the per-architecture tile tables: every shipped config and every tuning candidate must compute
the pooler, whatever table the runtime picks on whatever GPU.
"""

from __future__ import annotations

import pytest
import torch

from bertpool_fast.kernels import pooler as pooler_module
from bertpool_fast.kernels import pooler_tables
from bertpool_fast.kernels.pooler import (
    _SPLIT_K_SCRATCH,
    ARCH_CANDIDATES,
    BATCH_INVARIANT_CONFIGS,
    DTYPE_NAMES,
    POOLER_TABLES,
    TUNE_CANDIDATES,
    arch_key,
    config_label,
    inspection_cases,
    pick_config,
    pooler_fwd,
    table_arch,
    tune_candidates,
    wgmma_shaped,
)
from bertpool_fast.kernels.tiles import TileConfig
from conftest import HAS_CUDA, KERNEL_DEVICE, assert_close_rel, poisoned, randn

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def make_inputs(b, s, h_in, h_out, dtype, device=KERNEL_DEVICE):
    hidden = randn(b, s, h_in, dtype=dtype, device=device)
    weight = randn(h_out, h_in, dtype=dtype, device=device, scale=h_in**-0.5)
    bias = randn(h_out, dtype=dtype, device=device, scale=0.5)
    return hidden, weight, bias


def reference64(hidden, weight, bias):
    return torch.tanh(hidden[:, 0].double() @ weight.double().t() + bias.double())


def run_checked(hidden, weight, bias, cfg):
    """The kernel under ``cfg`` into a NaN-filled output, twice: an unwritten element, or a split-K
    ticket counter the first launch left non-zero (the second would then never reduce), fails."""
    outs = []
    for _ in range(2):
        out = poisoned((hidden.shape[0], weight.shape[0]), hidden.dtype, hidden.device)
        pooler_fwd(hidden, weight, bias, "tanh", out=out, config=cfg)
        assert not torch.isnan(out).any(), f"{config_label(cfg)} left elements unwritten"
        outs.append(out)
    # split-K sums its partials in a fixed order: the same inputs give the same bits every launch
    assert torch.equal(outs[0], outs[1]), f"{config_label(cfg)} is not deterministic"
    for _ws, tickets in _SPLIT_K_SCRATCH.values():
        assert not tickets.any(), "a split-K launch left its ticket counters non-zero"
    return outs[0]


def bk(dtype) -> int:
    return 32 if dtype == torch.float32 else 64


# (B, H_in, H_out, config builder): tails in M (B not a multiple of BLOCK_M), N (H_out not a multiple
# of BLOCK_N) and K (H_in not a multiple of BLOCK_K), for each variant and their combination.
VARIANTS = [
    pytest.param(5, 200, 72, dict(split_k=3), id="splitK3-tails-MNK"),
    pytest.param(19, 130, 40, dict(split_k=4), id="splitK4-uneven-runs"),
    pytest.param(3, 100, 72, dict(swap_ab=True), id="swapAB-tails-MNK"),
    pytest.param(21, 136, 50, dict(swap_ab=True, split_k=2), id="swapAB-splitK2-tails-MNK"),
    pytest.param(2, 72, 40, dict(split_k=12), id="splitK-more-than-K-chunks"),
    pytest.param(70, 96, 24, dict(split_k=2, block_m=64), id="splitK2-two-M-tiles"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("b,h_in,h_out,variant", VARIANTS)
def test_variant_parity_against_float64(b, h_in, h_out, variant, dtype):
    fields = dict(block_m=16, block_n=32, block_k=bk(dtype), num_warps=4, num_stages=2)
    if variant.get("swap_ab"):
        fields["block_n"] = 64  # the N tile is the MMA's row side under SWAP_AB
    fields.update(variant)
    cfg = TileConfig(**fields)
    hidden, weight, bias = make_inputs(b, 3, h_in, h_out, dtype)
    out = run_checked(hidden, weight, bias, cfg)
    assert_close_rel(out, reference64(hidden, weight, bias), dtype)


def _every_config(dtype) -> list[TileConfig]:
    """Every config of ``dtype`` in every architecture's table, the batch-invariant table and the
    tuning candidates, once each."""
    configs = [cfg for tables in POOLER_TABLES.values() for _, cfg in tables[dtype]]
    configs += [cfg for _, cfg in BATCH_INVARIANT_CONFIGS[dtype]]
    for arch in ("default", *ARCH_CANDIDATES):
        configs += [cfg for _, _, cfg in tune_candidates(dtype, arch)]
    return list(dict.fromkeys(configs))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_shipped_config_and_candidate_interpreter(dtype):
    # One shape with tails in M, N and K and several K chunks per split (H_in 200 = 3.1 chunks
    # of 64, 6.25 of 32); every config the runtime or the tuner can pick.
    hidden, weight, bias = make_inputs(37, 2, 200, 88, dtype)
    ref = reference64(hidden, weight, bias)
    for cfg in _every_config(dtype):
        out = run_checked(hidden, weight, bias, cfg)
        try:
            assert_close_rel(out, ref, dtype)
        except AssertionError as exc:
            raise AssertionError(f"{config_label(cfg)}: {exc}") from None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_device_table_gpu(dtype):
    # Compiled: the split-K ticket handshake and the transposed SWAP_AB store only mean something
    # on real hardware. Every config of this GPU's own table at H = 768 (the tuned size, compiled
    # already by a tune run), and those with a split or a swap at an odd size too (tails in M/N/K).
    # python -m bench.tune checks every candidate the same way before it can be picked.
    table = POOLER_TABLES[table_arch(torch.empty(0, device="cuda").device)][dtype]
    for cfg in dict.fromkeys(cfg for _, cfg in table):
        shapes = [(b, 768, 768) for b in (1, 17, 300)]
        if cfg.split_k > 1 or cfg.swap_ab:
            shapes.append((37, 200, 88))
        for b, h_in, h_out in shapes:
            hidden, weight, bias = make_inputs(b, 4, h_in, h_out, dtype, device="cuda")
            out = run_checked(hidden, weight, bias, cfg)
            try:
                assert_close_rel(out, reference64(hidden, weight, bias), dtype)
            except AssertionError as exc:
                raise AssertionError(
                    f"B={b} H={h_in}->{h_out} {config_label(cfg)}: {exc}"
                ) from None


def test_tables_are_well_formed():
    # Every architecture has a table for every dtype, each ending in an open bucket, with
    # increasing bounds; the module is what the runtime reads.
    assert "default" in POOLER_TABLES
    for arch, tables in POOLER_TABLES.items():
        assert set(tables) == set(DTYPE_NAMES), arch
        for dtype, table in tables.items():
            bounds = [m for m, _ in table]
            assert bounds[-1] is None, (arch, dtype)
            assert bounds[:-1] == sorted(bounds[:-1]) and len(set(bounds)) == len(bounds)
            assert all(isinstance(cfg, TileConfig) for _, cfg in table)
    assert set(pooler_tables.PROVENANCE) == set(pooler_tables.TABLES)


def test_candidates_are_wgmma_shaped_where_they_claim():
    # The reasoning in kernels/pooler.py: every half-precision candidate with 64 MMA rows runs in
    # whole warpgroups, and only 16- and 32-row non-swapped tiles fall back to mma.sync.
    for dtype in (torch.float16, torch.bfloat16):
        for _lo, _hi, cfg in tune_candidates(dtype, "sm90"):
            rows = cfg.block_n if cfg.swap_ab else cfg.block_m
            assert wgmma_shaped(cfg) or (rows < 64 and not cfg.swap_ab), config_label(cfg)


def test_architecture_candidates_stay_on_their_architecture():
    # An architecture's own candidates (tiles that spill elsewhere) are tried by the tuner on that
    # architecture alone, so they can only enter its table; inspect compiles them for it alone.
    for arch, by_dtype in ARCH_CANDIDATES.items():
        for dtype, extra in by_dtype.items():
            assert tune_candidates(dtype, arch) == TUNE_CANDIDATES[dtype] + extra
            assert tune_candidates(dtype, "default") == TUNE_CANDIDATES[dtype]
            assert not {c for _, _, c in extra} & {c for _, _, c in TUNE_CANDIDATES[dtype]}
    only = [c.tags["only_arch"] for c in inspection_cases() if "only_arch" in c.tags]
    assert len(only) == sum(len(e) for by in ARCH_CANDIDATES.values() for e in by.values())
    assert set(only) == {f"sm_{arch[2:]}" for arch in ARCH_CANDIDATES}


def test_runtime_picks_the_table_of_its_device():
    # CPU tensors (and the interpreter) read the default table; a capability maps to its key.
    assert table_arch(torch.empty(0).device) == "default"
    assert arch_key(9, 0) == "sm90" and arch_key(8, 6) == "sm86"
    for m in (1, 16, 17, 300, 5000):
        for dtype in DTYPES:
            for arch, tables in POOLER_TABLES.items():
                expected = next(c for b, c in tables[dtype] if b is None or m <= b)
                assert pick_config(m, dtype, False, arch) == expected


@pytest.mark.skipif(not HAS_CUDA, reason="the device's compute capability needs a GPU")
def test_runtime_picks_the_table_of_its_device_gpu():
    key = arch_key(*torch.cuda.get_device_capability())
    expected = key if key in POOLER_TABLES else "default"
    assert table_arch(torch.empty(0, device="cuda").device) == expected


def test_batch_invariant_ignores_the_architecture():
    for arch in POOLER_TABLES:
        for m in (1, 64, 65, 1000):
            assert pick_config(m, torch.float16, True, arch) == pick_config(m, torch.float16, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_persistent_result_does_not_depend_on_the_grid_interpreter(dtype, monkeypatch):
    # The persistent kernel's grid is the device's SM count; each tile is the plain kernel's, so
    # any program count gives the plain kernel's bits. Small tiles (18 of them, tails in M, N and
    # K) make every program walk several tiles.
    hidden, weight, bias = make_inputs(37, 2, 200, 88, dtype)
    cfg = TileConfig(16, 32, 32, 4, 2, persistent=True)
    plain = run_checked(hidden, weight, bias, cfg._replace(persistent=False))
    assert_close_rel(plain, reference64(hidden, weight, bias), dtype)
    try:
        for programs in (1, 4, 7, 64):
            monkeypatch.setattr(pooler_module, "INTERPRETER_PROGRAMS", programs)
            pooler_module.persistent_programs.cache_clear()
            out = run_checked(hidden, weight, bias, cfg)
            assert torch.equal(out, plain), f"{programs} programs"
    finally:
        pooler_module.persistent_programs.cache_clear()  # no count cached past the patch


def test_config_override_is_validated():
    hidden, weight, bias = make_inputs(2, 1, 32, 16, torch.float32)
    with pytest.raises(TypeError, match="config must be a TileConfig"):
        pooler_fwd(hidden, weight, bias, "tanh", config=(16, 16, 16, 4, 1))
    with pytest.raises(ValueError, match="config.block_n must be a power of two"):
        pooler_fwd(hidden, weight, bias, "tanh", config=TileConfig(16, 24, 16, 4, 1))
    with pytest.raises(ValueError, match="config.persistent takes neither"):
        cfg = TileConfig(16, 16, 16, 4, 1, split_k=2, persistent=True)
        pooler_fwd(hidden, weight, bias, "tanh", config=cfg)
    with pytest.raises(ValueError, match="config.split_k must be >= 1"):
        pooler_fwd(hidden, weight, bias, "tanh", config=TileConfig(16, 16, 16, 4, 1, split_k=0))
