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
    BATCH_INVARIANT_CONFIGS,
    DTYPE_NAMES,
    POOLER_TABLES,
    arch_has_pdl,
    arch_key,
    pick_config,
    pooler_fwd,
    table_arch,
    width_table_configs,
)
from bertpool_fast.kernels.pooler_candidates import (
    ARCH_CANDIDATES,
    TUNE_CANDIDATES,
    inspection_cases,
    tune_candidates,
    wgmma_shaped,
)
from bertpool_fast.kernels.tiles import TileConfig, config_label
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
    # python -m bench.tune checks every candidate the same way before it can be picked. A width's
    # own tiles run at that width.
    arch = table_arch(torch.empty(0, device="cuda").device)
    tiles = {(cfg, 768): None for _, cfg in POOLER_TABLES[arch][dtype]}
    tiles.update(
        ((cfg, h), None) for a, h, d, cfg in width_table_configs() if (a, d) == (arch, dtype)
    )
    for cfg, h in tiles:
        shapes = [(b, h, h) for b in (1, 17, 300)]
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


def test_only_tables_of_gpus_with_pdl_launch_with_it():
    # programmatic dependent launch compiles to griddepcontrol, which ptxas refuses before sm_90:
    # only such an architecture's table (written by the tune there) may set it
    assert arch_has_pdl("sm90") and arch_has_pdl("sm100") and not arch_has_pdl("sm80")
    assert not arch_has_pdl("default") and not arch_has_pdl("smx")
    for arch, tables in POOLER_TABLES.items():
        if not arch_has_pdl(arch):
            assert not any(cfg.pdl for table in tables.values() for _, cfg in table), arch
    assert not any(cfg.pdl for table in BATCH_INVARIANT_CONFIGS.values() for _, cfg in table)


def test_a_pdl_override_is_refused_for_a_gpu_without_it(monkeypatch):
    # a clear error naming the option, not a ptxas failure inside Triton
    monkeypatch.setattr(pooler_module, "_INTERPRETED", False)
    monkeypatch.setattr(pooler_module, "has_tma", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"config\.pdl.*9\.0 or later.*has 8\.0"):
        pooler_module.check_pdl_device(torch.device("cuda", 0))
    pooler_module.check_pdl_device(torch.device("cpu"))  # the interpreter's device: no launch
    monkeypatch.setattr(pooler_module, "has_tma", lambda device: True)
    pooler_module.check_pdl_device(torch.device("cuda", 0))


PDL_TILES = (
    TileConfig(16, 32, 64, 4, 3, split_k=4, pdl=True),
    TileConfig(16, 64, 128, 4, 4, swap_ab=True, pdl=True),
    TileConfig(64, 32, 64, 4, 4, tma=True, pdl=True),
    TileConfig(128, 128, 64, 8, 3, tma=True, persistent=True, pdl=True),
)


def _skip_without_pdl():
    if HAS_CUDA and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or later")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_a_pdl_tile_computes_what_the_same_tile_does(dtype):
    # on an sm_90 GPU launched with programmatic dependent launch; under the interpreter the
    # option is off (no gdc_wait there). Either way: bitwise the same tile's result.
    _skip_without_pdl()
    hidden, weight, bias = make_inputs(37, 2, 200, 88, dtype)
    for cfg in PDL_TILES:
        out = run_checked(hidden, weight, bias, cfg)
        assert torch.equal(out, run_checked(hidden, weight, bias, cfg._replace(pdl=False)))
        assert_close_rel(out, reference64(hidden, weight, bias), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_a_pdl_launch_reads_what_the_kernel_before_it_wrote_gpu(dtype):
    # Each pooler launch follows, on its stream, kernels (elementwise, so kernels and not copy-
    # engine transfers) that rewrite its rows and its weight, the one or the other last: the
    # wait before the first read must see both. Eagerly and replayed from a CUDA graph (captured
    # launches keep the attribute as a programmatic edge). Bitwise against the same tile without
    # PDL. A missing wait would race only for the producer's last writes, so this checks the
    # launch path and its results, not every interleaving.
    _skip_without_pdl()
    hidden, weight, bias = make_inputs(300, 8, 768, 768, dtype, device="cuda")
    sources = [make_inputs(300, 8, 768, 768, dtype, device="cuda")[:2] for _ in range(4)]

    def produce(h, w, rows_last):
        if rows_last:
            torch.mul(w, 1.0, out=weight)
            torch.mul(h, 1.0, out=hidden)
        else:
            torch.mul(h, 1.0, out=hidden)
            torch.mul(w, 1.0, out=weight)

    for cfg in PDL_TILES:
        expected = []
        for h, w in sources:
            expected.append(pooler_fwd(h, w, bias, "tanh", config=cfg._replace(pdl=False)))
        out = poisoned((300, 768), dtype, "cuda")
        for i, ((h, w), want) in enumerate(zip(sources, expected)):
            produce(h, w, rows_last=i % 2 == 1)
            pooler_fwd(hidden, weight, bias, "tanh", out=out, config=cfg)
            torch.cuda.synchronize()
            assert torch.equal(out, want), config_label(cfg)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            produce(*sources[0], rows_last=True)
            pooler_fwd(hidden, weight, bias, "tanh", out=out, config=cfg)
        for _ in range(3):
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, expected[0]), f"{config_label(cfg)} (graph replay)"


def test_candidates_are_wgmma_shaped_where_they_claim():
    # The reasoning in kernels/pooler_candidates.py: every half-precision candidate with 64 MMA
    # rows runs in whole warpgroups, and only 16- and 32-row non-swapped tiles fall back to
    # mma.sync.
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
    cases = [c for c in inspection_cases() if c.tags["table"] == "candidate"]
    only = [c.tags["only_arch"] for c in cases if "only_arch" in c.tags]
    assert len(only) == sum(len(e) for by in ARCH_CANDIDATES.values() for e in by.values())
    assert set(only) == {f"sm_{arch[2:]}" for arch in ARCH_CANDIDATES}


def test_architecture_tables_are_inspected_on_their_architecture():
    # the runtime reads an architecture's table on that architecture alone: inspect compiles its
    # tiles for it alone (an sm_90 table's TMA tile would compile into spilling pointer loads for
    # sm_80), and the default and batch-invariant tables for every target
    for c in inspection_cases():
        table = c.tags["table"]
        if table in POOLER_TABLES and table != "default":
            assert c.tags["only_arch"] == f"sm_{table[2:]}", c.name
        elif table in ("default", "batch_invariant"):
            assert "only_arch" not in c.tags, c.name


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


@pytest.mark.parametrize(
    "dtype,tma",
    [(d, False) for d in DTYPES] + [(torch.float16, True), (torch.bfloat16, True)],
    ids=DTYPE_IDS + ["fp16-tma", "bf16-tma"],
)
def test_persistent_result_does_not_depend_on_the_grid_interpreter(dtype, tma, monkeypatch):
    # The persistent kernels' grid is the device's SM count; each tile is computed the same way
    # whatever the program count, so any count gives the same bits. They add the bias after the
    # K loop (see bias_accumulator), so only fp32 has the plain kernel's bits; fp16/bf16 are as
    # close to the reference as the plain kernel. Small tiles (18 of them, tails in M, N and K)
    # make every program walk several tiles. The TMA kernel's persistent loop must also launch
    # as TMA (rows 800 bytes apart, K = 200: describable).
    hidden, weight, bias = make_inputs(37, 2, 200, 88, dtype)
    cfg = TileConfig(16, 32, 32, 4, 2, persistent=True, tma=tma)
    plain = run_checked(hidden, weight, bias, cfg._replace(persistent=False))
    assert_close_rel(plain, reference64(hidden, weight, bias), dtype)
    if dtype is not torch.float32:
        plain = None  # the first program count's result is the one the others must equal
    tma_launch = LaunchSpy(pooler_module.launch_pooler_fwd_tma)
    monkeypatch.setattr(pooler_module, "launch_pooler_fwd_tma", tma_launch)
    try:
        for programs in (1, 4, 7, 64):
            monkeypatch.setattr(pooler_module, "INTERPRETER_PROGRAMS", programs)
            pooler_module.persistent_programs.cache_clear()
            out = run_checked(hidden, weight, bias, cfg)
            if plain is None:
                assert_close_rel(out, reference64(hidden, weight, bias), dtype)
                plain = out
            assert torch.equal(out, plain), f"{programs} programs"
    finally:
        pooler_module.persistent_programs.cache_clear()  # no count cached past the patch
    describable = not HAS_CUDA or pooler_module.has_tma(hidden.device)  # the interpreter, sm_90+
    assert tma_launch.calls == (8 if tma and describable else 0)  # 4 grids, run_checked's 2 each


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


# ---- TMA tiles (pooler_fwd_tma_kernel): descriptor loads; the pointer kernel where TMA can't ---


def _tma_candidates() -> list[TileConfig]:
    configs = [cfg for _, _, cfg in tune_candidates(torch.float16, "sm90") if cfg.tma]
    assert configs, "no TMA tuning candidate"
    return configs


class LaunchSpy:
    """Wraps a CachedLaunch: counts the calls (into ``counted``'s count, if given), then launches
    as before."""

    def __init__(self, launch, counted=None):
        self.launch, self.calls = launch, 0
        self.counted = self if counted is None else counted

    def __call__(self, *args):
        self.counted.calls += 1
        return self.launch(*args)


@pytest.fixture
def spies(monkeypatch):
    """(TMA launches, the stream-K kernel's included; pointer-kernel launches), counted."""
    tma = LaunchSpy(pooler_module.launch_pooler_fwd_tma)
    plain = LaunchSpy(pooler_module.launch_pooler_fwd)
    monkeypatch.setattr(pooler_module, "launch_pooler_fwd_tma", tma)
    stream_k = LaunchSpy(pooler_module.launch_pooler_fwd_stream_k, counted=tma)
    monkeypatch.setattr(pooler_module, "launch_pooler_fwd_stream_k", stream_k)
    monkeypatch.setattr(pooler_module, "launch_pooler_fwd", plain)
    return tma, plain


def _check_tma_case(hidden, weight, bias, activation, cfg, spies, expect_tma=True):
    """The tile with and without tma=True into NaN-filled outputs: both within the element-wise
    bound of the float64 result, each through the launch it should take. Under the interpreter
    both compute the same zero-padded tile products in the same K order: the same bits (not so a
    stream-K tile, whose programs sum partial K runs: the same terms, grouped otherwise). A tile
    of n_parts column blocks is compared with the pointer kernel's tile of one."""
    from bertpool_fast.reference import pooler_reference
    from conftest import gemm_error_bound

    tma, plain = spies
    if HAS_CUDA and not pooler_module.has_tma(hidden.device):
        expect_tma = False  # a GPU before sm_90 runs every TMA tile through the pointer kernel
    m, n = hidden.shape[0], weight.shape[0]
    out = poisoned((m, n), hidden.dtype, hidden.device)
    pooler_fwd(hidden, weight, bias, activation, out=out, config=cfg)
    assert (tma.calls, plain.calls) == ((1, 0) if expect_tma else (0, 1)), config_label(cfg)
    ref_out = poisoned((m, n), hidden.dtype, hidden.device)
    pointer_cfg = cfg._replace(tma=False, warp_specialize=False, stream_k=False, n_parts=1,
                               x_in_registers=False)  # fmt: skip
    pooler_fwd(hidden, weight, bias, activation, out=ref_out, config=pointer_cfg)
    x = hidden[:, 0] if hidden.dim() == 3 else hidden
    b64 = None if bias is None else bias.double()
    ref = pooler_reference(x.double(), weight.double(), b64, activation)
    bound = gemm_error_bound(x, weight, bias, activation)
    try:
        assert_close_rel(out, ref, hidden.dtype, bound=bound)
        assert_close_rel(ref_out, ref, hidden.dtype, bound=bound)
    except AssertionError as exc:
        raise AssertionError(f"{config_label(cfg)}: {exc}") from None
    if not HAS_CUDA and not cfg.stream_k:
        assert torch.equal(out, ref_out), f"{config_label(cfg)}: not the pointer kernel's bits"
    tma.calls = plain.calls = 0


HALF = [torch.float16, torch.bfloat16]
HALF_IDS = ["fp16", "bf16"]


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_every_tma_candidate_interpreter(dtype, spies):
    # Tails everywhere: M = 37 (< BLOCK_M), K = 136 (two full chunks of 64 and 8 more), N = 96
    # (!= K, < BLOCK_N), rows 2 * K apart (S = 2); and M = 1.
    for b in (37, 1):
        hidden, weight, bias = make_inputs(b, 2, 136, 96, dtype)
        for cfg in _tma_candidates():
            _check_tma_case(hidden, weight, bias, "tanh", cfg, spies)


# (B, S, H_in, H_out, bias, activation): two M tiles with a 2-row tail, N past one BLOCK_N, K a
# multiple of BLOCK_K, K below one BLOCK_K; each activation once; bias on and off.
TMA_SHAPES = [
    pytest.param(66, 3, 128, 160, True, "gelu", id="two-M-tiles-N-tail-gelu"),
    pytest.param(5, 1, 200, 72, False, "relu", id="S1-no-bias-relu"),
    pytest.param(9, 4, 40, 136, True, "gelu_tanh", id="K-below-one-chunk-gelu_tanh"),
    pytest.param(3, 2, 96, 96, False, "identity", id="no-bias-identity"),
]


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("b,s,h_in,h_out,bias_on,activation", TMA_SHAPES)
def test_tma_tile_shapes_interpreter(b, s, h_in, h_out, bias_on, activation, dtype, spies):
    hidden, weight, bias = make_inputs(b, s, h_in, h_out, dtype)
    cfg = TileConfig(64, 128, 64, 4, 3, tma=True)
    _check_tma_case(hidden, weight, bias if bias_on else None, activation, cfg, spies)


# (B, H_in, H_out, bias, activation) for tiles of 2 and 3 column blocks of 16 (32 and 48 wide):
# N inside the first part, inside the last, on a part's edge, past a tile's whole last parts (those
# parts' W blocks are out of bounds altogether: zeros from the copy engine, nothing stored).
N_PARTS_SHAPES = [
    pytest.param(37, 136, 40, True, "tanh", id="N40-last-part-partial-tanh"),
    pytest.param(5, 64, 72, True, "gelu", id="N72-second-tile-parts-past-N-gelu"),
    pytest.param(17, 40, 16, False, "relu", id="N16-one-part-of-three-no-bias"),
    pytest.param(1, 96, 96, True, "identity", id="N96-M1-identity"),
]


@pytest.mark.parametrize("n_parts", [2, 3])
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("b,h_in,h_out,bias_on,activation", N_PARTS_SHAPES)
def test_tma_tiles_of_column_parts_interpreter(b, h_in, h_out, bias_on, activation, dtype,
                                               n_parts, spies):  # fmt: skip
    # within the float64 bound, fully written, the pointer tile's bits; and the grid is one
    # program per BLOCK_N * n_parts columns
    hidden, weight, bias = make_inputs(b, 2, h_in, h_out, dtype)
    cfg = TileConfig(16, 16, 32, 4, 2, tma=True, n_parts=n_parts)
    _check_tma_case(hidden, weight, bias if bias_on else None, activation, cfg, spies)
    out = torch.empty(b, h_out, dtype=dtype)
    _, grid, _, _ = pooler_module.launch_args(hidden, weight, bias, activation, out, cfg,
                                              hidden.device)  # fmt: skip
    assert grid == (-(-h_out // (16 * n_parts)), -(-b // 16))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_tma_tiles_of_column_parts_on_the_gpu(dtype, spies):
    # The part candidates as compiled, X from shared memory and from registers, at BERT-base
    # and BERT-large widths
    # (768 = 4 x 192; 1024 leaves a last tile whose two last parts lie past N), M with a tail
    tma, plain = spies
    cases = [(m, h, cfg) for m in (1000, 4096) for h in (768, 1024)
             for parts in (TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3),
                           TileConfig(64, 64, 64, 4, 4, tma=True, n_parts=3),
                           TileConfig(64, 32, 64, 4, 4, tma=True, n_parts=3))
             for cfg in (parts, parts._replace(x_in_registers=True))]  # fmt: skip
    for m, h, cfg in cases:
        hidden, weight, bias = make_inputs(m, 3, h, h, dtype)
        out = run_checked(hidden, weight, bias, cfg)
        try:
            assert_close_rel(out, reference64(hidden, weight, bias), dtype)
        except AssertionError as exc:
            raise AssertionError(f"M = {m}, H = {h}, {config_label(cfg)}: {exc}") from None
    launches = 2 * len(cases)
    expected = (launches, 0) if pooler_module.has_tma(hidden.device) else (0, launches)
    assert (tma.calls, plain.calls) == expected


def test_x_in_registers_is_a_launch_form_of_the_same_tile(spies, monkeypatch):
    # The interpreter runs no PTX: there an x_in_registers tile launches as the tile without it
    # and gives its bits. On a GPU the form is launched with Triton 3.6 only (3.9 spills it).
    hidden, weight, bias = make_inputs(37, 2, 136, 40, torch.float16)
    parts = TileConfig(16, 16, 32, 4, 2, tma=True, n_parts=3)
    xreg = parts._replace(x_in_registers=True)
    _check_tma_case(hidden, weight, bias, "tanh", xreg, spies)  # the pointer tile's bits
    flag = pooler_module.x_in_registers_launched
    assert not flag(xreg) and not flag(parts)  # this process: the interpreter
    monkeypatch.setattr(pooler_module, "_INTERPRETED", False)
    for version, launched in (((3, 6), True), ((3, 7), False), ((3, 9), False)):
        monkeypatch.setattr(pooler_module, "triton_version", lambda v=version: v)
        assert flag(xreg) is launched and not flag(parts), version


def test_column_parts_config_is_validated():
    hidden, weight, bias = make_inputs(2, 1, 32, 16, torch.float16)
    for cfg in (TileConfig(16, 16, 16, 4, 1, n_parts=3),
                TileConfig(16, 16, 16, 4, 1, tma=True, persistent=True, n_parts=3),
                TileConfig(64, 16, 16, 4, 1, tma=True, warp_specialize=True, n_parts=2),
                TileConfig(16, 16, 16, 4, 1, tma=True, stream_k=True, n_parts=2)):  # fmt: skip
        with pytest.raises(ValueError, match="config.n_parts needs config.tma"):
            pooler_fwd(hidden, weight, bias, "tanh", config=cfg)
    for n_parts in (0, 4):
        with pytest.raises(ValueError, match="config.n_parts must be 1, 2 or 3, got"):
            pooler_fwd(hidden, weight, bias, "tanh",
                       config=TileConfig(16, 16, 16, 4, 1, tma=True, n_parts=n_parts))  # fmt: skip
    assert (config_label(TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3, pdl=True))
            == "128x(3x64)x64 w8 s4 tma pdl")  # fmt: skip
    with pytest.raises(ValueError, match="config.x_in_registers needs config.n_parts of 2 or 3"):
        pooler_fwd(hidden, weight, bias, "tanh",
                   config=TileConfig(16, 16, 16, 4, 1, tma=True, x_in_registers=True))  # fmt: skip
    assert (config_label(TileConfig(64, 32, 64, 4, 4, tma=True, n_parts=3, x_in_registers=True,
                                    pdl=True)) == "64x(3x32)x64 w4 s4 tma xreg pdl")  # fmt: skip


# (B, H_in, H_out, bias, activation) for the stream-K tile 16x32x32: its programs each take an
# equal run of all tiles' K chunks, so the program counts below split tiles in every way: a
# program inside one tile, runs across two or three tiles, a tile over three programs, a tile
# whole within a run, more programs than chunks (capped), one program (no tile split).
STREAM_K_SHAPES = [
    pytest.param(37, 136, 88, True, "tanh", id="M-N-K-tails-tanh"),  # 3x3 tiles, 5 chunks each
    pytest.param(16, 64, 32, True, "tanh", id="one-tile-two-chunks"),
    pytest.param(50, 96, 40, False, "gelu", id="no-bias-gelu"),
    pytest.param(1, 200, 72, True, "identity", id="M1-identity"),
]


@pytest.mark.parametrize("bias_early", [False, True], ids=["bias-late", "bias-early"])
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("b,h_in,h_out,bias_on,activation", STREAM_K_SHAPES)
def test_stream_k_tiles_split_between_programs_interpreter(b, h_in, h_out, bias_on, activation,
                                                           dtype, bias_early, spies,
                                                           monkeypatch):  # fmt: skip
    # Every program count: within the element-wise bound of the float64 result (the same K + 1
    # fp32 terms as the plain tile, grouped by runs), NaN-poisoned outputs fully written, the
    # same bits on a second launch (the tickets re-armed, the sum's order fixed), through the
    # stream-K kernel; and every count's program runs as the launcher sizes them. Both places
    # the bias may be added (STREAM_K_BIAS_EARLY: it depends on the Triton release).
    from bertpool_fast.reference import pooler_reference
    from conftest import gemm_error_bound

    monkeypatch.setattr(pooler_module, "STREAM_K_BIAS_EARLY", bias_early)
    hidden, weight, bias = make_inputs(b, 2, h_in, h_out, dtype)
    bias = bias if bias_on else None
    cfg = TileConfig(16, 32, 32, 4, 2, tma=True, stream_k=True)
    x = hidden[:, 0]
    ref = pooler_reference(x.double(), weight.double(), None if bias is None else bias.double(),
                           activation)  # fmt: skip
    bound = gemm_error_bound(x, weight, bias, activation)
    chunks = -(-b // 16) * -(-h_out // 32) * -(-h_in // 32)
    tma, plain = spies
    try:
        for programs in (1, 2, 3, 5, 7, 64):
            monkeypatch.setattr(pooler_module, "INTERPRETER_PROGRAMS", programs)
            pooler_module.persistent_programs.cache_clear()
            _, grid, _, _ = pooler_module.launch_args(hidden, weight, bias, activation,
                                                      torch.empty(b, h_out, dtype=dtype), cfg,
                                                      hidden.device)  # fmt: skip
            assert grid == (min(programs, chunks),)
            outs = []
            for _ in range(2):
                out = poisoned((b, h_out), dtype, hidden.device)
                pooler_fwd(hidden, weight, bias, activation, out=out, config=cfg)
                assert_close_rel(out, ref, dtype, bound=bound)
                outs.append(out)
            assert torch.equal(outs[0], outs[1]), f"{programs} programs: not deterministic"
    finally:
        pooler_module.persistent_programs.cache_clear()  # no count cached past the patch
    assert (tma.calls, plain.calls) == (12, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_stream_k_on_the_gpu(dtype, spies):
    # What the interpreter cannot show: one program per SM, all running at once, handing their
    # partial tiles over through L2 (publish_partial's acq_rel ticket, read_partial's .cg loads).
    # BERT-base sizes where programs split tiles (M = 1000, 2048: under two 128x128 tiles a
    # program) and where runs also hold whole tiles (8192); each within the float64 bound,
    # fully written, the tickets re-armed (run_checked), and the same bits over ten launches.
    cfg = TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True)
    tma, plain = spies
    for m in (1000, 2048, 8192):
        hidden, weight, bias = make_inputs(m, 3, 768, 768, dtype)
        out = run_checked(hidden, weight, bias, cfg)
        assert_close_rel(out, reference64(hidden, weight, bias), dtype)
        for _ in range(8):
            again = pooler_fwd(hidden, weight, bias, "tanh", config=cfg)
            assert torch.equal(again, out), f"M = {m}: another launch gave other bits"
    launches = 3 * 10
    expected = (launches, 0) if pooler_module.has_tma(hidden.device) else (0, launches)
    assert (tma.calls, plain.calls) == expected


def test_stream_k_config_is_validated():
    hidden, weight, bias = make_inputs(2, 1, 32, 16, torch.float16)
    for cfg in (TileConfig(16, 16, 16, 4, 1, stream_k=True),
                TileConfig(16, 16, 16, 4, 1, tma=True, persistent=True, stream_k=True),
                TileConfig(64, 16, 16, 4, 1, tma=True, warp_specialize=True, stream_k=True)):  # fmt: skip
        with pytest.raises(ValueError, match="config.stream_k needs config.tma"):
            pooler_fwd(hidden, weight, bias, "tanh", config=cfg)


def _fallback_inputs(case: str, dtype):
    if case == "H-not-multiple-of-8":  # rows 3 * 100 elements apart: not 16 bytes
        return make_inputs(7, 3, 100, 40, dtype)
    if case == "view-offset-by-one":  # data_ptr 2 bytes past a 16-byte boundary
        hidden, weight, bias = make_inputs(7, 2, 96, 40, dtype)
        flat = torch.empty(hidden.numel() + 1, dtype=dtype, device=hidden.device)
        shifted = flat[1:].view(hidden.shape)
        shifted.copy_(hidden)
        return shifted, weight, bias
    if case == "transposed-weight":  # weight.stride(1) != 1
        hidden, weight, bias = make_inputs(7, 2, 96, 40, dtype)
        return hidden, weight.t().contiguous().t(), bias
    if case == "weight-rows-misaligned":  # weight [N, 100] rows: 200 bytes apart
        hidden, weight, bias = make_inputs(7, 4, 100, 40, dtype)  # x rows 400 apart: fine
        return hidden, weight, bias
    raise ValueError(case)


FALLBACKS = ["H-not-multiple-of-8", "view-offset-by-one", "transposed-weight",
             "weight-rows-misaligned"]  # fmt: skip


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("case", FALLBACKS)
def test_tma_tile_falls_back_to_the_pointer_kernel(case, dtype, spies):
    # What a descriptor cannot describe runs the same tile through the pointer kernel: the same
    # result, never an error.
    hidden, weight, bias = _fallback_inputs(case, dtype)
    cfg = TileConfig(64, 128, 64, 4, 3, tma=True)
    _check_tma_case(hidden, weight, bias, "tanh", cfg, spies, expect_tma=False)


def test_tma_tile_falls_back_for_fp32_and_empty_k(spies):
    cfg = TileConfig(64, 128, 32, 4, 3, tma=True)
    hidden, weight, bias = make_inputs(5, 2, 64, 40, torch.float32)
    out = pooler_fwd(hidden, weight, bias, "tanh", config=cfg)
    assert spies[0].calls == 0 and spies[1].calls == 1
    assert_close_rel(out, reference64(hidden, weight, bias), torch.float32)
    # K = 0: a descriptor's sizes must be positive; the pointer kernel gives act(bias)
    hidden = torch.empty(3, 2, 0, dtype=torch.float16, device=KERNEL_DEVICE)
    weight = torch.empty(40, 0, dtype=torch.float16, device=KERNEL_DEVICE)
    bias = randn(40, dtype=torch.float16)
    out = pooler_fwd(hidden, weight, bias, "tanh", config=cfg._replace(block_k=64))
    assert spies[0].calls == 0 and spies[1].calls == 2
    assert_close_rel(out, torch.tanh(bias.double()).expand(3, 40), torch.float16)


def test_launch_path_descriptor_is_tritons_descriptor():
    # built without __post_init__'s checks (tma_describable made them), it must be the very
    # object the constructor makes: same class, same fields, same Triton type
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.tools.tensor_descriptor import TensorDescriptor

    x = randn(4, 2, 96, dtype=torch.bfloat16)
    fast = pooler_module.tensor_descriptor(x, [4, 96], [192, 1], [64, 64])
    real = TensorDescriptor(x, [4, 96], [192, 1], [64, 64])
    assert type(fast) is TensorDescriptor and vars(fast).keys() == vars(real).keys()
    assert fast.base is x and all(vars(fast)[k] == vars(real)[k] for k in vars(real) if k != "base")

    def spec(d):
        return native_specialize_impl(BaseBackend, d, False, True, True)

    assert spec(fast) == spec(real) == ("tensordesc<bf16[64, 64]>", None)


def test_tma_describable(monkeypatch):
    # CPU tensors, the interpreter's answer first (the kernel runs there), then a real launch's
    monkeypatch.setattr(pooler_module, "_INTERPRETED", True)
    hidden, weight, _ = make_inputs(4, 2, 96, 40, torch.float16, device="cpu")
    device = hidden.device

    def ok(x, w, dtype=torch.float16, k=96):
        return pooler_module.tma_describable(x, w, x.stride(), w.stride(), dtype, device, k)

    assert ok(hidden, weight) and ok(hidden[:, 0], weight)
    assert ok(hidden[:, :, 8:], weight), "16 bytes in: base and strides still aligned"
    assert not ok(hidden[:, :, 1:], weight), "2 bytes in: base misaligned"
    assert not ok(hidden, weight, torch.float32)
    assert not ok(hidden, weight, k=0)
    monkeypatch.setattr(pooler_module, "_INTERPRETED", False)
    assert not ok(hidden, weight), "off the interpreter, only an sm_90+ GPU has TMA"


def test_tma_config_is_validated_and_labelled():
    hidden, weight, bias = make_inputs(2, 1, 32, 16, torch.float16)
    for bad in (dict(split_k=2), dict(swap_ab=True)):
        with pytest.raises(ValueError, match="config.tma takes neither"):
            pooler_fwd(
                hidden, weight, bias, "tanh", config=TileConfig(64, 64, 64, 4, 3, tma=True, **bad)
            )
    with pytest.raises(ValueError, match="at most 256 elements a side"):
        pooler_fwd(hidden, weight, bias, "tanh", config=TileConfig(512, 64, 64, 8, 3, tma=True))
    with pytest.raises(ValueError, match="warp_specialize needs config.tma"):
        pooler_fwd(hidden, weight, bias, "tanh", config=TileConfig(64, 64, 64, 4, 3,
                                                                   warp_specialize=True))  # fmt: skip
    with pytest.raises(ValueError, match="warp_specialize needs config.tma"):
        pooler_fwd(hidden, weight, bias, "tanh", config=TileConfig(
            64, 64, 64, 4, 3, persistent=True, warp_specialize=True))  # fmt: skip
    assert (config_label(TileConfig(128, 128, 64, 8, 3, persistent=True, tma=True))
            == "128x128x64 w8 s3 persistent tma")  # fmt: skip
    assert config_label(TileConfig(128, 128, 64, 8, 3, tma=True)) == "128x128x64 w8 s3 tma"
    assert (
        config_label(TileConfig(64, 128, 64, 4, 3, tma=True, warp_specialize=True))
        == "64x128x64 w4 s3 tma ws"
    )
    # positional uses of TileConfig keep their meaning: tma, warp_specialize, pdl, stream_k,
    # n_parts and x_in_registers are the last fields, off (1) by default
    assert TileConfig(16, 32, 64, 4, 3, 4, True, False) == TileConfig(
        16, 32, 64, 4, 3, split_k=4, swap_ab=True
    )
    assert TileConfig._fields[-6:] == ("tma", "warp_specialize", "pdl", "stream_k", "n_parts",
                                       "x_in_registers")  # fmt: skip
    assert (config_label(TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True, pdl=True))
            == "128x128x64 w8 s4 tma stream-k pdl")  # fmt: skip
    assert (
        config_label(TileConfig(64, 32, 128, 4, 4, tma=True, pdl=True)) == "64x32x128 w4 s4 tma pdl"
    )
    assert not TileConfig(16, 32, 64, 4, 3).tma and not TileConfig(16, 32, 64, 4, 3).warp_specialize


def test_tma_candidates_are_sm90_inspection_cases():
    # inspect compiles each TMA candidate for sm_90 alone, its descriptors typed as Triton's
    # launcher types them
    cases = [
        c for c in inspection_cases() if c.tags["config"].tma and c.tags["table"] == "candidate"
    ]
    assert len(cases) == 2 * len(_tma_candidates())
    for c in cases:
        cfg = c.tags["config"]
        assert c.tags["only_arch"] == "sm_90" and " tma" in c.name
        if cfg.stream_k:  # its own kernel, with its scratch after the output
            assert c.kernel is pooler_module.pooler_fwd_stream_k_kernel
            assert (c.signature["ws_ptr"], c.signature["ticket_ptr"]) == ("*fp32", "*i32")
        else:
            assert c.kernel is pooler_module.pooler_fwd_tma_kernel
            assert c.constexprs["WARP_SPECIALIZE"] is cfg.warp_specialize
        t = {torch.float16: "fp16", torch.bfloat16: "bf16"}[c.dtype]
        assert c.signature["x_desc"] == f"tensordesc<{t}[{cfg.block_m}, {cfg.block_k}]>"
        assert c.signature["w_desc"] == f"tensordesc<{t}[{cfg.block_n}, {cfg.block_k}]>"
