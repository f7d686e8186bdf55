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
from bertpool_fast.kernels import pooler
from bertpool_fast.kernels.tiles import TileConfig
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
