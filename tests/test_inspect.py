"""Kernel inspection: every shipped configuration compiles for sm_80 and sm_90 on this machine, GPU or
not, with no register spills, and fp16/bf16 configurations run on the tensor cores.

Compiling runs in one subprocess per test session (``python -m bertpool_fast inspect --json``):
kernels can only be compiled for a GPU target without ``TRITON_INTERPRET=1``, which this test
process has on a CPU machine. Cold, every configuration of every kernel takes minutes on two CPU
cores, so the tests compile all forward-pooler configurations (both tile tables) and, of every
other kernel, the first and last configuration per dtype (the smallest and largest tiles; spills
come with the largest). ``BERTPOOL_INSPECT_ALL=1`` tests them all; the CLI always covers all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from bertpool_fast.inspect_kernels import ARCHS, InspectResult, discover_cases
from bertpool_fast.kernels.inspection import TRITON_DTYPE
from bertpool_fast.kernels.tiles import TileConfig, config_label


def _kernel_name(case) -> str:
    return case.name.split()[0]


def _tested_cases() -> list:
    cases = discover_cases()
    if os.environ.get("BERTPOOL_INSPECT_ALL") == "1":
        return cases
    groups = defaultdict(list)
    for c in cases:
        groups[(_kernel_name(c), c.dtype)].append(c)
    chosen = set()
    for (kernel, _dtype), group in groups.items():
        chosen.update(c.name for c in (group if kernel == "pooler_fwd" else (group[0], group[-1])))
    # every TMA candidate: inspect compiles all pooler candidates for the fixture anyway
    chosen.update(c.name for c in cases if _is_tma(c))
    return [c for c in cases if c.name in chosen]


def _is_tma(case) -> bool:
    return getattr(case.tags.get("config"), "tma", False)


CASES = _tested_cases()
CASE_IDS = [c.name.replace(" ", "_") for c in CASES]
# (case, arch) pairs: a case tagged only_arch (an architecture's own table or candidate) is compiled
# and checked for that target alone, as inspect does.
CASE_ARCHS = [
    pytest.param(c, arch, id=f"{i}-{arch}")
    for c, i in zip(CASES, CASE_IDS)
    for arch in sorted(ARCHS)
    if c.tags.get("only_arch", arch) == arch
]


def _run_inspect(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "bertpool_fast", "inspect", *args],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip


@pytest.fixture(scope="module")
def inspected() -> dict:
    """{(case name, arch): result dict}, every tested case compiled once per arch."""
    results = {}
    # One call per kernel name keeps the command line short; --kernel matches by substring, so
    # the tested names are picked out of its output.
    for kernel in sorted({_kernel_name(c) for c in CASES}):
        run = _run_inspect("--json", "--kernel", kernel + " ")
        assert run.returncode == 0, f"inspect --kernel {kernel!r} failed:\n{run.stderr[-3000:]}"
        for r in json.loads(run.stdout):
            results[(r["name"], r["arch"])] = r
    return results


def _result(inspected, case, arch) -> dict:
    r = inspected.get((case.name, arch))
    assert r is not None, f"{case.name} was not compiled for {arch}"
    assert r["error"] is None, f"{case.name} ({arch}) does not compile: {r['error']}"
    return r


@pytest.mark.parametrize(("case", "arch"), CASE_ARCHS)
def test_compiles_without_spills(inspected, case, arch):
    r = _result(inspected, case, arch)
    assert r["registers"] is not None and 0 < r["registers"] <= 255
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (
        f"{case.name} ({arch}) spills {r['spill_stores']} B stores / {r['spill_loads']} B loads "
        f"at {r['registers']} registers"
    )
    # warps as compiled: the config's, plus a producer and a consumer warpgroup where Triton
    # warp-specializes the loop (TMA tiles with warp_specialize, sm_90: 4 -> 12), and a config
    # asking for it must get it
    cfg = case.tags.get("config")
    specialized = bool(getattr(cfg, "warp_specialize", False))
    assert r["num_warps"] == (case.num_warps + 8 if specialized else case.num_warps)
    assert r["num_stages"] == case.num_stages
    if case.tags.get("uses_shared_memory", True):  # false for elementwise kernels (head reduce)
        assert r["shared_bytes"] > 0  # every GEMM kernel stages its tiles through shared memory


@pytest.mark.parametrize(
    ("case", "arch"), [p for p in CASE_ARCHS if p.values[0].expects_tensor_cores]
)
def test_half_precision_uses_tensor_cores(inspected, case, arch):
    r = _result(inspected, case, arch)
    allowed = {"sm_80": {"mma"}, "sm_90": {"mma", "wgmma"}}[arch]
    assert r["tensor_cores"] in allowed, (
        f"{case.name} ({arch}) uses {r['tensor_cores'] or 'no'} tensor-core instructions"
    )


TMA_CASE_ARCHS = [p for p in CASE_ARCHS if _is_tma(p.values[0])]


@pytest.mark.parametrize(("case", "arch"), TMA_CASE_ARCHS)
def test_tma_configs_compile_to_tma_copies(inspected, case, arch):
    # descriptor loads lowered to bulk tensor copies (not to pointer loads), feeding wgmma
    assert arch == "sm_90", "TMA candidates are sm_90-only"
    r = _result(inspected, case, arch)
    assert r["tma_copies"] > 0 and r["tensor_cores"] == "wgmma", (case.name, r)


def test_tma_cases_are_inspected():
    assert len(TMA_CASE_ARCHS) >= 2


def _invariant_pooler_cases():
    return [c for c in CASES if c.tags.get("table") == "batch_invariant"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_batch_invariant_tiles_share_one_instruction(inspected, arch):
    # The batch-invariance argument in kernels/pooler.py: all tiles of a dtype lower the dot to one
    # instruction family, and on sm_90 that is wgmma for fp16/bf16.
    by_dtype = defaultdict(set)
    for case in _invariant_pooler_cases():
        by_dtype[case.dtype].add(_result(inspected, case, arch)["tensor_cores"])
    assert by_dtype, "no batch-invariant configurations found"
    for dtype, instructions in by_dtype.items():
        name = TRITON_DTYPE[dtype]
        assert len(instructions) == 1, f"{name} {arch}: mixed {sorted(instructions)}"
        # fp32 ("ieee") is FMA in K order, no tensor core, on both targets
        expected = "" if name == "fp32" else {"sm_80": "mma", "sm_90": "wgmma"}[arch]
        assert instructions == {expected}, f"{name} {arch}: {sorted(instructions)}"


def test_every_kernel_module_is_discovered():
    import pkgutil

    from bertpool_fast import kernels

    found = {c.kernel.__name__ for c in discover_cases()}
    assert "pooler_fwd_kernel" in found
    for info in pkgutil.iter_modules(kernels.__path__):
        module = __import__(f"{kernels.__name__}.{info.name}", fromlist=["_"])
        if hasattr(module, "inspection_cases"):
            assert {c.kernel.__name__ for c in module.inspection_cases()} <= found


def test_cli_prints_a_table(inspected):
    import torch

    from bertpool_fast.kernels.pooler import POOLER_TABLES

    # the default table's first bf16 row, a 16-row mma tile
    name = f"pooler_fwd bf16 M<={POOLER_TABLES['default'][torch.bfloat16][0][0]}"
    run = _run_inspect("--arch", "sm_90", "--dtype", "bf16", "--kernel", name)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split()[:3] == ["config", "arch", "regs"]
    row = [ln for ln in lines if ln.startswith(name + " ")]
    assert len(row) == 1 and " sm_90 " in row[0]
    expected = inspected[(name, "sm_90")]
    assert f" {expected['registers']} " in row[0] and " mma " in row[0]
    assert "CTAs/SM" in lines[1] and re.search(r" \d+ \((regs|smem|warps|ctas)", row[0])
    # the first row serves M = 1 up to its bound: the grid and waves at both ends (one if equal)
    assert "M: programs (waves)" in lines[1]
    assert re.search(r"  1: \d+ \(\d+\.\d\d\)(; \d+: \d+ \(\d+\.\d\d\))?$", row[0]), row[0]


def test_waves_are_programs_over_what_the_reference_gpu_holds():
    from bertpool_fast.kernels.inspection import REFERENCE_SMS

    at = {"sm_90": ((2049, 198), (4096, 384)), "sm_80": ((2049, 198),)}
    r = InspectResult("x", "sm_90", "fp16", 4, 3, True, tags={"programs_at": at}, registers=104,
                      shared_bytes=72 * 1024)  # fmt: skip
    assert r.ctas_per_sm() == (3, "smem")  # 3 x 73 KiB of 228
    held = 3 * REFERENCE_SMS["sm_90"]
    assert r.waves() == [(2049, 198, 198 / held), (4096, 384, 384 / held)]
    assert InspectResult("y", "sm_90", "fp16", 4, 3, True, registers=104,
                         shared_bytes=72 * 1024).waves() == []  # fmt: skip


def test_programs_at_follow_each_kernel_s_grid():
    # at H = 768 (N = K = 768; 12 K chunks of 64) on 132 (sm_90) and 108 (sm_80) SMs; a TMA tile
    # runs the pointer kernel on sm_80, one 64-wide column block a program
    from bertpool_fast.kernels.pooler_candidates import LARGEST_M, programs_at
    from bertpool_fast.kernels.tiles import TileConfig

    parts = TileConfig(128, 64, 64, 8, 4, tma=True, n_parts=3)
    assert programs_at(parts, 2048, 4096) == {
        "sm_80": ((2048, 16 * 12), (4096, 32 * 12)),
        "sm_90": ((2048, 16 * 4), (4096, 32 * 4)),
    }
    assert programs_at(parts, 9000, None)["sm_90"] == ((9000, 71 * 4),)  # past the largest M
    stream_k = TileConfig(128, 128, 64, 8, 4, tma=True, stream_k=True)
    assert programs_at(stream_k, 1, None)["sm_90"] == ((1, 6 * 12), (LARGEST_M, 132))
    persistent = TileConfig(128, 128, 64, 8, 4, persistent=True)
    assert programs_at(persistent, 1024, 8192)["sm_80"] == ((1024, 48), (8192, 108))
    split = TileConfig(16, 32, 64, 4, 3, split_k=4)
    assert programs_at(split, 1, 1) == {"sm_80": ((1, 24 * 4),), "sm_90": ((1, 24 * 4),)}
    assert programs_at(split._replace(split_k=20), 1, 1)["sm_90"] == ((1, 24 * 12),)  # <= chunks


def test_ctas_per_sm_follow_registers_shared_memory_and_warps():
    # the occupancy column: registers are allocated per warp in units of 256 (a thread's count
    # rounded up to 8), and each CTA's shared memory carries 1 KiB the runtime reserves
    def result(arch, registers, warps, shared_kib):
        return InspectResult("x", arch, "fp16", warps, 3, True, registers=registers,
                             shared_bytes=int(shared_kib * 1024))  # fmt: skip

    assert result("sm_90", 128, 8, 96).ctas_per_sm() == (2, "regs, smem")  # 2 x 97 KiB of 228
    assert result("sm_90", 130, 8, 96).ctas_per_sm() == (1, "regs")  # 136 x 256 x 2 > 65536
    assert result("sm_90", 128, 8, 114).ctas_per_sm() == (1, "smem")  # 2 x 115 KiB > 228
    assert result("sm_80", 48, 4, 24).ctas_per_sm() == (6, "smem")  # 164 KiB / 25 KiB
    assert result("sm_90", 24, 4, 0).ctas_per_sm() == (16, "warps")
    assert result("sm_90", 16, 1, 0).ctas_per_sm() == (32, "ctas")


def test_cli_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run(
        [sys.executable, "-m", "bertpool_fast", "inspect", "--kernel", "pooler_fwd"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert "TRITON_INTERPRET" in run.stderr


def test_cli_rejects_unknown_arch_and_empty_selection():
    run = _run_inspect("--arch", "sm_75")
    assert run.returncode == 2 and "invalid choice: 'sm_75'" in run.stderr
    run = _run_inspect("--kernel", "no such kernel")
    assert run.returncode == 2 and "no kernel configuration matches" in run.stderr


@pytest.mark.parametrize(
    "cfg",
    [TileConfig(16, 16, 128, 4, 4), TileConfig(16, 32, 64, 4, 3, split_k=4),
     TileConfig(128, 128, 64, 8, 4, persistent=True), TileConfig(64, 32, 128, 4, 4, tma=True)],
    ids=lambda cfg: config_label(cfg).replace(" ", "_"),
)  # fmt: skip
def test_pooler_cases_are_compiled_as_a_bert_call_launches_them(cfg):
    # Triton's launcher turns an integer argument equal to 1 into the constant 1 and marks one
    # divisible by 16 (and a 16-aligned pointer) with a divisibility hint; a case compiled
    # otherwise is another kernel: a run-time bias stride once made every inspected bias load
    # scalar (130 registers in the large TMA tile, 99 as launched). M is do_not_specialize.
    import torch

    from bertpool_fast.kernels import pooler, pooler_candidates

    hidden = torch.randn(4, 3, 768, dtype=torch.float16)  # [B, S, H]: rows S * H apart
    x, weight = hidden[:, 0], torch.randn(768, 768, dtype=torch.float16)
    bias, out = torch.randn(768, dtype=torch.float16), torch.empty(4, 768, dtype=torch.float16)
    if cfg.tma:  # the CPU takes the pointer kernel; the arguments an H100 launch passes
        launch, _, args, _ = pooler._tma_launch_args(x, weight, bias, "tanh", out, cfg, (24, 1),
                                                     x.stride(0), weight.stride(0), False,
                                                     x.device)  # fmt: skip
    else:
        launch, _, args, _ = pooler.launch_args(x, weight, bias, "tanh", out, cfg, x.device)
    case = pooler_candidates.inspection_case("x", torch.float16, cfg, {})
    checked = 0
    for name, value in zip(launch.kernel.arg_names, args):
        if name == "M" or not isinstance(value, (int, torch.Tensor)):
            continue
        checked += 1
        if isinstance(value, torch.Tensor):
            assert name in case.divisible_by_16, f"{name}: a 16-aligned pointer, compiled without"
        elif value == 1:
            assert case.constexprs.get(name) == 1, f"{name} = 1 at launch, compiled as a variable"
        else:
            assert (name in case.divisible_by_16) == (value % 16 == 0), f"{name} = {value}"
            assert name in case.signature
    assert checked >= 6
