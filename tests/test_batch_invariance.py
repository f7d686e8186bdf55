"""Batch invariance: with ``batch_invariant=True`` row i of any batch equals, bitwise, the same row
computed alone. cuBLAS does not promise this (it picks kernels by M); the batch-invariant tile table
in kernels/pooler.py is built so that every M bucket runs the same K order on the same instruction.

Batches straddle every boundary of that table (B = max_m and max_m + 1), where the launcher
switches tile shapes. On CPU the kernel runs through Triton's interpreter (whose dot is numpy's); the
``gpu`` test repeats the check on the compiled kernel, which is where the claim matters.
"""

from __future__ import annotations

import pytest
import torch

from bertpool_fast import fused_pooler
from bertpool_fast.kernels.pooler import BATCH_INVARIANT_CONFIGS, pick_config
from conftest import KERNEL_DEVICE, randn

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DTYPE_IDS = ["fp16", "bf16", "fp32"]


def _boundary_batches(dtype) -> list[int]:
    edges = [max_m for max_m, _ in BATCH_INVARIANT_CONFIGS[dtype] if max_m is not None]
    return sorted({b for m in edges for b in (m, m + 1)})


def _check_rows_alone(batch: int, hidden: int, out_features: int, dtype, device, rows) -> None:
    # seq 3 and a hidden_states sliced from a wider tensor: the kernel reads row 0 through strides
    h = randn(batch, 3, hidden + 8, dtype=dtype, device=device)[:, :, 4 : 4 + hidden]
    w = randn(out_features, hidden, dtype=dtype, device=device, scale=hidden**-0.5)
    b = randn(out_features, dtype=dtype, device=device)
    full = fused_pooler(h, w, b, backend="triton", batch_invariant=True)
    for i in rows:
        alone = fused_pooler(h[i : i + 1], w, b, backend="triton", batch_invariant=True)
        assert torch.equal(full[i : i + 1], alone), (
            f"row {i} of a batch of {batch} differs from the same row alone "
            f"(max |diff| {(full[i] - alone[0]).abs().max().item():.3e}, {dtype})"
        )


def _rows_to_check(batch: int) -> list[int]:
    # first, last, and the rows either side of the first tile edge (64 rows in every table)
    return sorted({0, batch - 1, min(63, batch - 1), min(64, batch - 1)})


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tile_boundaries_are_crossed(dtype):
    # The test below is only worth its name if its batches really run different tiles.
    tiles = {pick_config(b, dtype, batch_invariant=True) for b in _boundary_batches(dtype)}
    assert len(tiles) == len(BATCH_INVARIANT_CONFIGS[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_invariant_table_keeps_k_order_and_instruction(dtype):
    # What the GPU argument rests on (kernels/pooler.py): one BLOCK_K per dtype, and tiles of at
    # least 64 rows in whole warpgroups, so sm_90 lowers every bucket to wgmma.
    configs = [cfg for _, cfg in BATCH_INVARIANT_CONFIGS[dtype]]
    assert len({cfg.block_k for cfg in configs}) == 1
    assert all(cfg.block_m >= 64 and cfg.num_warps % 4 == 0 for cfg in configs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_row_alone_equals_row_in_batch_interpreter(dtype):
    # H = 96 (not a multiple of the fp16 BLOCK_K 64: the K tail is masked) and H_out = 80 (N != K,
    # and a partial N tile); one batch per side of each tile boundary.
    for batch in [1, 2] + _boundary_batches(dtype):
        _check_rows_alone(batch, 96, 80, dtype, KERNEL_DEVICE, _rows_to_check(batch))


def test_torch_backend_refuses_batch_invariant():
    h = randn(2, 3, 16, device="cpu")
    w = randn(8, 16, device="cpu")
    with pytest.raises(ValueError, match="batch_invariant=True is a property of the Triton"):
        fused_pooler(h, w, None, backend="torch", batch_invariant=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hidden", [768, 1024])
def test_row_alone_equals_row_in_batch_gpu(dtype, hidden):
    # The benchmark's batch sizes as well as the boundaries; every 97th row plus the edges.
    batches = sorted(set(_boundary_batches(dtype)) | {1, 8, 32, 128, 512, 2048, 8192})
    for batch in batches:
        rows = sorted(set(_rows_to_check(batch)) | set(range(0, batch, 97)))
        _check_rows_alone(batch, hidden, hidden, dtype, "cuda", rows)
