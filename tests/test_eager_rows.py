"""Where this GPU's tune measured eager faster than every tile (kernels/pooler_tables.py's
EAGER_TABLES), ``backend="auto"`` runs eager (cuBLAS linear, then the activation: the torch
path); ``backend="triton"`` still runs the kernel, and ``batch_invariant=True`` its own tiles.
The rows are patched in for this device's table key; everything else is the real call path.
"""

from __future__ import annotations

import pytest
import torch

import bertpool_fast
from bertpool_fast import ops
from bertpool_fast.kernels import pooler, pooler_tables
from bertpool_fast.kernels.tiles import TileConfig, pick_tile
from bertpool_fast.reference import pooler_reference
from conftest import KERNEL_DEVICE, assert_close_rel, randn

H = 96
ARCH = pooler.device_arch(torch.device(KERNEL_DEVICE))


@pytest.fixture
def eager_rows(monkeypatch):
    """``set_rows(main, width)``: fp16 rows of this device's EAGER_TABLES and of its H = 96
    EAGER_WIDTH_TABLES (None: no rows); and a count of the kernel launches ops makes."""
    launches = []

    def counted(*args, **kwargs):
        launches.append(args[0].shape[0])
        return pooler.pooler_fwd(*args, **kwargs)

    monkeypatch.setattr(ops, "pooler_fwd", counted)

    def set_rows(main=None, width=None):
        monkeypatch.setattr(pooler, "POOLER_EAGER_TABLES",
                            {ARCH: {torch.float16: main}} if main else {})  # fmt: skip
        monkeypatch.setattr(pooler, "POOLER_EAGER_WIDTH_TABLES",
                            {ARCH: {H: {torch.float16: width}}} if width else {})  # fmt: skip
        pooler.eager_measured_faster.cache_clear()
        ops._PLANS.clear()

    yield set_rows, launches
    pooler.eager_measured_faster.cache_clear()  # nothing cached from the patched rows
    ops._PLANS.clear()


def _inputs(m, n=H, dtype=torch.float16, requires_grad=False):
    hidden = randn(m, 3, H, dtype=dtype)
    weight = randn(n, H, dtype=dtype, scale=H**-0.5)
    bias = randn(n, dtype=dtype, scale=0.5)
    if requires_grad:
        hidden.requires_grad_(True)
    return hidden, weight, bias


def _eager(hidden, weight, bias):
    return pooler_reference(hidden[:, 0], weight, bias, "tanh")


def test_auto_runs_eager_at_the_m_the_tune_marked(eager_rows):
    set_rows, launches = eager_rows
    set_rows(main=((8, False), (16, True), (None, False)))
    for m, eager in ((4, False), (12, True), (16, True), (40, False)):
        hidden, weight, bias = _inputs(m)
        for _ in range(2):  # a second call, after any plan the first one made
            launches.clear()
            out = bertpool_fast.fused_pooler(hidden, weight, bias)
            assert launches == ([] if eager else [m]), f"M = {m}"
            if eager:  # the torch path itself: the same bits
                assert torch.equal(out, _eager(hidden, weight, bias))
            else:
                assert_close_rel(out, _eager(hidden, weight, bias).double(), torch.float16)


def test_triton_and_batch_invariant_still_run_the_kernel_there(eager_rows, monkeypatch):
    set_rows, launches = eager_rows
    set_rows(main=((None, True),))
    remembered = []
    monkeypatch.setattr(ops, "_remember_plan", lambda *a: remembered.append(a))
    hidden, weight, bias = _inputs(12)
    bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    bertpool_fast.fused_pooler(hidden, weight, bias, batch_invariant=True)
    assert launches == [12, 12]
    # no plan is kept for M the tune sent to eager: "auto" would take it
    assert remembered == []
    launches.clear()
    assert torch.equal(
        bertpool_fast.fused_pooler(hidden, weight, bias), _eager(hidden, weight, bias)
    )
    assert launches == []


def test_autograd_takes_eager_there_too(eager_rows):
    set_rows, launches = eager_rows
    set_rows(main=((None, True),))
    hidden, weight, bias = _inputs(12, requires_grad=True)
    out = bertpool_fast.fused_pooler(hidden, weight, bias)
    out.float().sum().backward()
    assert launches == []
    # the op's torch path, forward and backward: what backend="torch" computes
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    ref = bertpool_fast.fused_pooler(ref_hidden, weight, bias, backend="torch")
    ref.float().sum().backward()
    assert torch.equal(out, ref) and torch.equal(out, _eager(hidden.detach(), weight, bias))
    assert torch.equal(hidden.grad, ref_hidden.grad)


def test_a_widths_tune_decides_the_m_it_measured(eager_rows, monkeypatch):
    set_rows, launches = eager_rows
    # H = 96's own tune measured from M = 9 (its tile table hands M <= 8 back with a None row):
    # eager won at M = 9-16 there, not above, where the main rows would say eager
    tile = TileConfig(16, 32, 64, 4, 2)
    monkeypatch.setattr(pooler, "POOLER_WIDTH_TABLES",
                        {ARCH: {H: {torch.float16: ((8, None), (None, tile))}}})  # fmt: skip
    pooler.pick_config.cache_clear()
    try:
        set_rows(main=((None, True),), width=((8, None), (16, True), (None, False)))
        # [40, 96] is not square: the main rows
        for m, n, eager in ((4, H, True), (12, H, True), (40, H, False), (40, 40, True)):
            hidden, weight, bias = _inputs(m, n)
            launches.clear()
            bertpool_fast.fused_pooler(hidden, weight, bias)
            assert launches == ([] if eager else [m]), f"M = {m}, N = {n}"
        # a width tune that wrote no eager rows (the tile won everywhere) is not overruled by
        # the main rows at the M it measured
        set_rows(main=((None, True),))
        assert not pooler.eager_measured_faster(40, torch.float16, ARCH, H)
        assert pooler.eager_measured_faster(4, torch.float16, ARCH, H)
    finally:
        pooler.pick_config.cache_clear()


def test_other_dtypes_and_untuned_tables_run_the_kernel(eager_rows):
    set_rows, launches = eager_rows
    set_rows(main=((None, True),))
    hidden, weight, bias = _inputs(12, dtype=torch.bfloat16)  # rows for fp16 only
    bertpool_fast.fused_pooler(hidden, weight, bias)
    assert launches == [12]
    set_rows()  # no rows at all: as every table is until a GPU's tune writes some
    assert not pooler.eager_measured_faster(12, torch.float16, ARCH, H)
    hidden, weight, bias = _inputs(12)
    bertpool_fast.fused_pooler(hidden, weight, bias)
    assert launches == [12, 12]


def eager_rows_faults(eager_tables: dict, eager_width_tables: dict, width_tables: dict) -> list:
    """What is wrong with a module's EAGER_TABLES / EAGER_WIDTH_TABLES (empty when nothing): rows
    as the tile tables' (bounds increasing, the last None) of True / False, None only where a
    width hands M back to the main table, and a width's rows only where its tile table covers
    the M they mark (elsewhere nothing reads them)."""
    faults = []
    sources = [(arch, None, d, rows) for arch, t in eager_tables.items() for d, rows in t.items()]
    sources += [(arch, h, d, rows) for arch, by_width in eager_width_tables.items()
                for h, t in by_width.items() for d, rows in t.items()]  # fmt: skip
    for arch, h, dtype_name, rows in sources:
        where = f"{arch} H={h} {dtype_name}"
        if arch not in pooler_tables.TABLES or arch == "default":
            faults.append(f"{where}: eager rows need a GPU architecture with a main table")
        if dtype_name not in pooler.DTYPE_NAMES.values():
            faults.append(f"{where}: unknown dtype")
        bounds = [m for m, _ in rows]
        if not rows or bounds[-1] is not None or bounds[:-1] != sorted(set(bounds[:-1])):
            faults.append(f"{where}: bounds must increase to a last None")
        allowed = (True, False) if h is None else (True, False, None)
        if any(value not in allowed or not isinstance(value, (bool, type(None)))
               for _, value in rows):  # fmt: skip
            faults.append(f"{where}: values must be {allowed}")
        if h is not None:
            tiles = width_tables.get(arch, {}).get(h, {}).get(dtype_name)
            marked = [m for m, value in rows if value]
            largest = 1 << 30  # a None bound: any M above the others
            if tiles is None or any(pick_tile(tiles, m or largest) is None
                                    for m in marked):  # fmt: skip
                faults.append(f"{where}: True where the width's tile table does not cover M")
    return faults


def test_shipped_eager_rows_are_well_formed():
    assert eager_rows_faults(pooler_tables.EAGER_TABLES, pooler_tables.EAGER_WIDTH_TABLES,
                             pooler_tables.WIDTH_TABLES) == []  # fmt: skip


@pytest.mark.parametrize(
    "main,width,fault",
    [
        ({"sm90": {"fp16": ((None, 1),)}}, {}, "values"),
        ({"sm90": {"fp16": ((4096, True),)}}, {}, "bounds"),
        ({"sm90": {"fp16": ((None, None),)}}, {}, "values"),
        ({"sm77": {"fp16": ((None, True),)}}, {}, "GPU architecture"),
        ({}, {"sm90": {512: {"fp16": ((None, True),)}}}, "does not cover"),
        ({}, {"sm90": {1024: {"fp16": ((1024, True), (None, False))}}}, "does not cover"),
    ],
    ids=["not-bool", "not-open", "main-none", "arch", "no-tiles", "handed-back"],
)
def test_malformed_eager_rows_are_caught(main, width, fault):
    tiles = {"sm90": {1024: {"fp16": ((2048, None), (None, TileConfig(64, 64, 64, 4, 3)))}}}
    assert any(fault in f for f in eager_rows_faults(main, width, tiles))


def test_the_shipped_tables_send_no_tuned_m_to_eager():
    # kernels/pooler_tables.py as the ninth H100 run left it: a tile measured faster than eager at
    # every M it tuned, at H = 768 and 1024 (at H = 1024, M = 4096: 15.62 us against eager's 20.75
    # fp16, 14.97 against 19.39 bf16), so no eager rows at all; an earlier table's hand-written
    # rows sent M = 2049-4096 there because those tiles were never timed at that width
    assert pooler_tables.EAGER_TABLES == {} and pooler_tables.EAGER_WIDTH_TABLES == {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for m in (1, 2048, 3000, 4096, 8192, 20000):
            for h in (None, 768, 1024):
                assert not pooler.eager_measured_faster(m, dtype, "sm90", h), (dtype, m, h)


@pytest.mark.gpu
@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="needs a CUDA GPU; this machine has none")
def test_the_shipped_h1024_rows_route_a_real_call_on_an_sm90_gpu(eager_rows):
    # the shipped tables as they are (no rows patched in), on the device they are for: "auto"
    # runs eager's bits at H = 1024 where the rows say eager measured faster, the kernel
    # elsewhere; "triton" the kernel everywhere
    _, launches = eager_rows
    if pooler.device_arch(torch.device("cuda")) != "sm90":
        pytest.skip("the shipped H = 1024 rows are for sm_90 GPUs; this one is not")
    h = 1024
    for dtype in (torch.float16, torch.bfloat16):
        for m in (1000, 2048, 3000, 6000):
            eager = pooler.eager_measured_faster(m, dtype, "sm90", h)
            hidden = randn(m, 2, h, dtype=dtype)
            weight = randn(h, h, dtype=dtype, scale=h**-0.5)
            bias = randn(h, dtype=dtype, scale=0.5)
            launches.clear()
            out = bertpool_fast.fused_pooler(hidden, weight, bias)
            assert launches == ([] if eager else [m]), f"M = {m}, {dtype}"
            if eager:  # and no prepared launch kept there, so "triton" launches the kernel itself
                assert torch.equal(out, bertpool_fast.fused_pooler(hidden, weight, bias,
                                                                   backend="torch"))  # fmt: skip
                bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
                assert launches == [m]
