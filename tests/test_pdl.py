"""Programmatic dependent launch (``TileConfig.pdl``) in the compiled forward pooler, for sm_90.

A tile with ``pdl`` is compiled with Triton's ``launch_pdl`` option (its launcher then launches it
with the programmatic-serialization attribute) and starts with ``gdc_wait``: before it, the kernel
may only read its own parameters, since any tensor it reads, the weight included, may be what the
kernel launched before it writes. The check needs no GPU: each kernel branch's PDL tile is
compiled for sm_90 and its PTX read. Compiling runs in a subprocess, without TRITON_INTERPRET
(which this process has on a CPU machine). On a GPU, tests/test_pooler_variants.py runs the
launches themselves.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

# Every PTX instruction that touches memory other than the kernel's parameters
MEMORY_ACCESS = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?(?:(?:ld|st|atom|red)\.(?:global|shared|generic)|ld\.(?!param)|st\."
    r"|atom\.|red\.|cp\.|prefetch|mbarrier|fence\.proxy\.tensormap)[^\n]*",
    re.MULTILINE,
)
WAIT = "griddepcontrol.wait"


def first_access_before_wait(ptx: str) -> str:
    """The first memory access ahead of the kernel body's ``griddepcontrol.wait`` ("" if none);
    "no wait" when there is none at all."""
    body = ptx[ptx.index(".entry") :]
    body = body[body.index("{") :]
    at = body.find(WAIT)
    if at < 0:
        return "no wait"
    found = MEMORY_ACCESS.search(body[:at])
    return found.group(0).strip() if found else ""


def _compile_and_read() -> dict:
    # runs in the subprocess: each PDL tile (fp16; the dtype changes no control flow), and one
    # tile without it
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from bertpool_fast.inspect_kernels import _ast_source, compile_options
    from bertpool_fast.kernels.pooler_candidates import PDL_INSPECTION_TILES, inspection_case
    from bertpool_fast.kernels.tiles import config_label

    report = {}
    tiles = [*PDL_INSPECTION_TILES, PDL_INSPECTION_TILES[0]._replace(pdl=False)]
    for cfg in tiles:
        case = inspection_case(config_label(cfg), torch.float16, cfg, {})
        compiled = triton.compile(_ast_source(case), target=GPUTarget("cuda", 90, 32),
                                  options=compile_options(case))  # fmt: skip
        ptx = compiled.asm["ptx"]
        report[case.name] = {
            "pdl": cfg.pdl,
            "launch_pdl": bool(compiled.metadata.launch_pdl),
            "waits": ptx.count(WAIT),
            "before_wait": first_access_before_wait(ptx),
        }
    return report


@pytest.fixture(scope="module")
def compiled() -> dict:
    from conftest import compiled_in_subprocess

    return compiled_in_subprocess(__file__)


def test_pdl_tiles_wait_before_their_first_memory_access(compiled):
    with_pdl = {name: r for name, r in compiled.items() if r["pdl"]}
    assert len(with_pdl) >= 6, "a kernel branch's PDL tile was not compiled"
    for name, r in with_pdl.items():
        assert r["launch_pdl"], f"{name}: not compiled for programmatic dependent launch"
        assert r["waits"] == 1, f"{name}: {r['waits']} waits"
        assert r["before_wait"] == "", f"{name}: '{r['before_wait']}' runs before the wait"


def test_a_tile_without_pdl_compiles_as_before(compiled):
    (plain,) = [r for r in compiled.values() if not r["pdl"]]
    assert not plain["launch_pdl"] and plain["waits"] == 0


def test_the_reader_finds_an_access_before_the_wait():
    # the PTX shape of a kernel that loads a row before waiting: the check must flag it
    ptx = (".entry k(\n.param .u64 k_param_0\n)\n{\n\tld.param.b64 \t%rd1, [k_param_0];\n"
           "\tld.global.b16 \t%rs1, [%rd1];\n\tgriddepcontrol.wait ;\n\tret;\n}")  # fmt: skip
    assert first_access_before_wait(ptx) == "ld.global.b16 \t%rs1, [%rd1];"
    assert first_access_before_wait(ptx.replace("\tld.global.b16 \t%rs1, [%rd1];\n", "")) == ""
    assert first_access_before_wait(ptx.replace(WAIT, "nop")) == "no wait"


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_and_read()))
