"""The persistent tiles' flattened tile x K loop stays software-pipelined (sm_90, Triton's TTGIR).

pooler_fwd_tma_kernel (PERSISTENT) and pooler_fwd_persistent_kernel flatten the tile loop with the
K loop so that the next tile's first copies are issued during this tile's epilogue. Triton 3.6's
pipeliner can only expand that loop while the accumulator's per-tile start is a constant: a
bias-first start, computed at the top of each tile, tied the accumulator to the loop's first
stage, the pipeliner gave up, and every K step waited for its own copy (copy; wait; MMA; wait 0),
2x the time on an H100 (run 7). Pipelined, the copies of the first stages are issued before the
loop (more than the loop body's own two), and the wgmma wait keeps one MMA in flight.
The stream-K kernel's K loop sits inside its loop over runs (not flattened: a run's length is
only known at run time) and must be pipelined the same way; and so must a tile of three column
parts (TileConfig.n_parts), whose K step issues four copies and three MMAs, one per part kept in
flight, or with its X chunk in registers (TileConfig.x_in_registers, as launched: Triton 3.6
only) twelve, one per part and 16-wide K slice, all but one kept in flight.
Compiling runs in a subprocess, without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

COPY = re.compile(r"ttng\.async_tma_copy_global_to_local|ttg\.async_copy_global_to_local")


def _cases():
    from bertpool_fast.kernels.tiles import TileConfig

    return (
        TileConfig(128, 128, 64, 8, 4, tma=True, persistent=True),
        TileConfig(128, 128, 64, 8, 3, tma=True, persistent=True),
        TileConfig(128, 128, 64, 8, 4, persistent=True),
        TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True),
        TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3),
        TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3, x_in_registers=True),
    )


def _compile_and_read() -> dict:
    # runs in the subprocess
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from bertpool_fast.inspect_kernels import _ast_source, compile_options
    from bertpool_fast.kernels.pooler_candidates import inspection_case
    from bertpool_fast.kernels.tiles import config_label

    report = {}
    for cfg in _cases():
        case = inspection_case(config_label(cfg), torch.float16, cfg, {})
        ttgir = triton.compile(_ast_source(case), target=GPUTarget("cuda", 90, 32),
                               options=compile_options(case)).asm["ttgir"]  # fmt: skip
        report[case.name] = {
            "copies": len(COPY.findall(ttgir)),
            "pendings": sorted(set(int(p) for p in re.findall(r"pendings = (\d+)", ttgir))),
            "parts": cfg.n_parts,
            # the MMAs of one K step: a dot a part, split into 16-wide K slices where its A
            # operand is in registers
            "dots": len(re.findall(r"ttng\.warp_group_dot ", ttgir)),
        }
    return report


@pytest.fixture(scope="module")
def compiled() -> dict:
    from conftest import compiled_in_subprocess

    return compiled_in_subprocess(__file__)


def test_persistent_tiles_are_pipelined(compiled):
    assert len(compiled) == 6
    # a K step's own copies: X and one W block a part; its MMAs: one a part, or one a part and
    # K slice with X in registers, all but one of them left in flight at each wait
    serial = {name: r for name, r in compiled.items()
              if r["copies"] <= 1 + r["parts"]
              or max(r["parts"], r["dots"] - 1) not in r["pendings"]}  # fmt: skip
    assert not serial, f"tile loop's K loop not software-pipelined: {serial}"
    xreg = next(r for name, r in compiled.items() if name.endswith("xreg"))
    from bertpool_fast.kernels.runtime import triton_version

    # the register-A form where it is launched (kernels/pooler.py: x_in_registers_launched)
    assert xreg["dots"] == (12 if triton_version() < (3, 7) else 3)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_and_read()))
