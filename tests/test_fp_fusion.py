"""Every kernel compiles with contracted multiply-adds, whatever Triton's default.

The epilogues' instruction counts and the activations' error bounds assume fused multiply-adds (the
rational tanh's polynomials are Horner chains of them), and every GPU figure was measured with
them. Triton 3.9 warns that its default turns to no fusion in 3.10, so the launches and
``inspect`` ask for it explicitly (``kernels.launch.COMPILE_OPTIONS``). The check simulates that
default (``TRITON_DEFAULT_FP_FUSION=0``) and compiles the largest sm_90 tile of the fp16 table, and
one sm_80 tile of the default table, as launched and, for contrast, without the option: as
launched the PTX must hold ``fma.rn.f32``; without it, none (so the simulated default reached
Triton, and the check can fail). Compiling runs in a subprocess, without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

FMA = "fma.rn.f32"


def _compile_and_count() -> dict:
    # runs in the subprocess, with TRITON_DEFAULT_FP_FUSION=0
    import triton
    from triton.backends.compiler import GPUTarget

    from bertpool_fast.inspect_kernels import ARCHS, _ast_source, compile_options, discover_cases

    wanted = {"pooler_fwd fp16 sm90 M>4096": "sm_90", "pooler_fwd fp16 M>1024": "sm_80"}
    report = {}
    for case in discover_cases():
        arch = wanted.get(case.name)
        if arch is None:
            continue
        launched = compile_options(case)
        unset = {k: v for k, v in launched.items() if k != "enable_fp_fusion"}
        target = GPUTarget("cuda", ARCHS[arch], 32)
        counts = {}
        for form, opts in (("launched", launched), ("unset", unset)):
            ptx = triton.compile(_ast_source(case), target=target, options=opts).asm["ptx"]
            counts[form] = ptx.count(FMA)
        report[case.name] = counts
    return report


@pytest.fixture(scope="module")
def fma_counts(monkeypatch_module) -> dict:
    from conftest import compiled_in_subprocess

    monkeypatch_module.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    return compiled_in_subprocess(__file__)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_kernels_fuse_multiply_adds_whatever_triton_s_default(fma_counts):
    assert sorted(fma_counts) == ["pooler_fwd fp16 M>1024", "pooler_fwd fp16 sm90 M>4096"]
    for name, counts in fma_counts.items():
        assert counts["launched"] > 0, f"{name}: no {FMA} as launched: {counts}"
        assert counts["unset"] == 0, f"{name}: the simulated default did not reach Triton: {counts}"


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_and_count()))
