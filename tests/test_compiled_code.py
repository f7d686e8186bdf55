"""The compiled fp32 GEMM tiles are free of the miscompile that gave a wrong fp32 result on an H100.

What went wrong (Triton 3.6, its bundled LLVM, sm_90; NOTES.md, "fp32 wrong result"): in the fp32
tiles with 4 pipeline stages, compiled for the launch where hidden_states' row stride is a multiple
of 16 and K is not, LLVM's SLP vectoriser packs two index computations into one <2 x i32>
``shl nuw nsw <tid, tid & 7>, <31, 2>``. Lane 0 (tid << 31) overflows for tid >= 2, which the
``nuw`` flag declares impossible; the NVPTX backend then lowers the pair as one 64-bit multiply
(``mul.wide.u32 %rd, %tid, 2147483648``), so lane 0's overflow lands in lane 1: each thread's
K offset into x becomes (tid >> 1) | ((tid & 7) << 2) instead of (tid & 7) << 2, whatever K is.
The wrong x columns are read; the result is garbage (relative error 1.1 on the GPU).

The check needs no GPU: it compiles each fp32 tile of the GEMM kernels for sm_90 with the
installed Triton, in that specialization, and looks for the packed shift in the LLVM IR and for a
32-bit multiply by 2^16 or more in the PTX (a lane shifted into its neighbour). Under Triton 3.9 the
pattern never appears; under 3.6 it did in the pooler's 4-stage M <= 64 tile and the classifier
head's fp32 tiles, which now take 3 stages. Compiling runs in a subprocess, without
TRITON_INTERPRET (which this process has on a CPU machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import pytest

GEMM_KERNELS = ("pooler_fwd", "pooler_fwd_candidate", "pooler_bwd_dx", "pooler_bwd_dw", "classifier_head_fwd",
                "classifier_head_split")  # fmt: skip
PACKED_SHIFT = re.compile(r"shl nuw[^\n]*<2 x i32>")
WIDE_MUL = re.compile(r"mul\.wide\.u32\s+%rd\d+, %r\d+, (\d+);")


def lane_overflow(llir: str, ptx: str) -> list[str]:
    """What in the compiled code shows the packed-lane fault; empty when none."""
    found = [f"LLVM IR: {m}" for m in PACKED_SHIFT.findall(llir)]
    found += [f"PTX: mul.wide.u32 by {v}" for v in WIDE_MUL.findall(ptx) if int(v) >= 1 << 16]
    return found


def row_stride_aligned_k_tail(case):
    """The case as launched with K % 16 != 0 and a row stride of hidden_states still a multiple
    of 16 (e.g. K = 72, S = 2): pointers and the x row stride keep their hint, the rest lose it."""
    keep = tuple(n for n in case.divisible_by_16
                 if case.signature.get(n, "").startswith("*") or n.startswith("stride_x"))  # fmt: skip
    return dataclasses.replace(case, divisible_by_16=keep)


def _compile_and_scan() -> dict:
    # runs in the subprocess: compile every fp32 GEMM case in the specialization that went wrong
    # (the shipped one, every size a multiple of 16, compiled clean under 3.6 in every tile)
    import triton
    from triton.backends.compiler import GPUTarget

    from bertpool_fast.inspect_kernels import _ast_source, compile_options, discover_cases

    report = {}
    for case in discover_cases():
        if case.name.split()[0] not in GEMM_KERNELS or "fp32" not in case.name:
            continue
        c = row_stride_aligned_k_tail(case)
        compiled = triton.compile(
            _ast_source(c),
            target=GPUTarget("cuda", 90, 32),
            options=compile_options(c),
        )
        report[f"{case.name} (K tail)"] = lane_overflow(compiled.asm["llir"], compiled.asm["ptx"])
    return report


@pytest.fixture(scope="module")
def scan() -> dict:
    from conftest import compiled_in_subprocess

    return compiled_in_subprocess(__file__)


def test_no_packed_lane_overflow_in_fp32_gemm_tiles(scan):
    assert scan, "no fp32 GEMM case was compiled"
    bad = {name: found for name, found in scan.items() if found}
    assert not bad, f"compiled code carries the packed-lane fault: {bad}"


def test_detector_finds_the_fault_it_was_written_for():
    # The lines read in the Triton 3.6 build of the retired pooler tile (32, 64, 32, 4 warps,
    # 4 stages), abridged: the detector must flag them, and not flag the 3-stage build's.
    llir = "%187 = shl nuw nsw <2 x i32> %185, <i32 31, i32 2>, !dbg !10"
    ptx = "mul.wide.u32 \t%rd189, %r2, 2147483648;\n\tshl.b64 \t%rd191, %rd190, 34;"
    assert len(lane_overflow(llir, ptx)) == 2
    fixed_ptx = "and.b32 \t%r4, %r2, 7;\n\tshl.b32 \t%r5, %r4, 2;\n\tmul.wide.u32 \t%rd132, %r5, 4;"
    assert lane_overflow("%5 = shl nuw nsw i32 %4, 2", fixed_ptx) == []


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_and_scan()))
