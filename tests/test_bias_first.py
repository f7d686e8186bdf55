"""fp16/bf16 forward tiles load the bias before their first MMA, not after their last.

The sum starts from the bias (``bias_accumulator`` in kernels/pooler.py) so that its load, which
is as cold as the weight, is in flight with the K loop's first copies instead of being a memory
latency every program waits at its end. That is a property of the scheduled machine code, so the
check reads it there: every distinct fp16/bf16 tile of the tables, and one tile of each kernel
branch but the persistent ones (which add the bias after the K loop, as bias_accumulator says why;
tests/test_persistent_pipelined.py checks them) and, with a Triton that compiles it so, the
stream-K one (pooler.STREAM_K_BIAS_EARLY), is compiled (sm_90, and sm_80 for the tiles that run there) and its SASS read: the first
plain global load (LDG; the K loop's copies are LDGSTS or TMA) must come before the first MMA
(HMMA or HGMMA). Compiling runs in a subprocess, without TRITON_INTERPRET (which this process has
on a CPU machine).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

LDG = re.compile(r"\bLDG\.")
MMA = re.compile(r"\b(?:HMMA|HGMMA)\.")
INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4}\*/\s+(.*?)\s*;", re.MULTILINE)


def bias_load_order(sass: str) -> dict:
    """Indexes of the first LDG and the first MMA among the SASS instructions (None: none)."""
    ins = INSTRUCTION.findall(sass)
    ldg = [i for i, s in enumerate(ins) if LDG.search(s)]
    mma = [i for i, s in enumerate(ins) if MMA.search(s)]
    return {"first_ldg": ldg[0] if ldg else None, "first_mma": mma[0] if mma else None}


def _cases():
    # (arch, dtype, config): each distinct non-persistent half tile of the tables on the
    # architecture it runs on, and one tile of each non-persistent kernel branch (the PDL
    # inspection tiles, without PDL)
    import torch

    from bertpool_fast.kernels import pooler, pooler_candidates

    seen, cases = set(), []

    def add(arch, dtype, cfg):
        if (arch, cfg) not in seen:
            seen.add((arch, cfg))
            cases.append((arch, dtype, cfg))

    for table, arch in (("sm90", "sm_90"), ("default", "sm_80"), ("default", "sm_90")):
        for dtype in (torch.float16, torch.bfloat16):
            for _, cfg in pooler.POOLER_TABLES[table][dtype]:
                if not cfg.persistent:
                    add(arch, dtype, cfg)
    for cfg in pooler_candidates.PDL_INSPECTION_TILES:
        if not cfg.persistent and (pooler.STREAM_K_BIAS_EARLY or not cfg.stream_k):
            add("sm_90", torch.float16, cfg._replace(pdl=False))
    return cases


def _compile_and_read() -> dict:
    # runs in the subprocess
    import triton
    from triton.backends.compiler import GPUTarget

    from bertpool_fast.inspect_kernels import ARCHS, _ast_source, compile_options, cuobjdump
    from bertpool_fast.kernels.inspection import TRITON_DTYPE
    from bertpool_fast.kernels.pooler_candidates import inspection_case
    from bertpool_fast.kernels.tiles import config_label

    report = {}
    for arch, dtype, cfg in _cases():
        case = inspection_case(config_label(cfg), dtype, cfg, {})
        capability = ARCHS[arch]
        compiled = triton.compile(_ast_source(case), target=GPUTarget("cuda", capability, 32),
                                  options=compile_options(case))  # fmt: skip
        sass = cuobjdump(compiled.asm["cubin"], capability, "-sass")
        report[f"{case.name} {TRITON_DTYPE[dtype]} {arch}"] = bias_load_order(sass)
    return report


@pytest.fixture(scope="module")
def compiled() -> dict:
    from conftest import compiled_in_subprocess

    return compiled_in_subprocess(__file__)


def test_half_tiles_load_the_bias_before_their_first_mma(compiled):
    assert len(compiled) >= 15, "fewer tiles compiled than the tables and branches hold"
    late = {name: r for name, r in compiled.items()
            if r["first_mma"] is None or r["first_ldg"] is None
            or r["first_ldg"] > r["first_mma"]}  # fmt: skip
    assert not late, f"bias loaded after the first MMA (or no MMA / no load): {late}"


def test_the_reader_tells_an_early_load_from_a_late_one():
    # SASS shapes of a K loop with the bias load before it and after it
    def sass(*instructions):
        return "".join(f"        /*{16 * i:04x}*/  {s} ;  /* 0x0 */\n"
                       for i, s in enumerate(instructions))  # fmt: skip

    early = bias_load_order(sass("@!P0 LDG.E R4, desc[UR4][R2.64]", "LDGSTS.E.BYPASS.128 [R5], "
                                 "desc[UR4][R6.64]", "HMMA.16816.F32 R8, R12, R16, R8",
                                 "STG.E desc[UR4][R2.64], R8"))  # fmt: skip
    late = bias_load_order(sass("UTMALDG.2D [UR8], [UR6]", "HGMMA.64x128x16.F32 R24, gdesc[UR20], "
                                "R24", "@!P0 LDG.E.U16 R107, desc[UR26][R14.64]"))  # fmt: skip
    assert early == {"first_ldg": 0, "first_mma": 2}
    assert late == {"first_ldg": 2, "first_mma": 1}


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_and_read()))
