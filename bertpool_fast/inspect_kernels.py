"""``python -m bertpool_fast inspect``: compile every shipped kernel configuration for a GPU this
machine may not have, and print what the compiler made of it.

Triton compiles for a named target (``GPUTarget("cuda", 90, 32)``) with no driver, and its wheel
carries ptxas and cuobjdump, so a kernel developer can see registers, spills, shared memory and
tensor-core use on a laptop. Each kernel module in ``bertpool_fast.kernels`` that defines
``inspection_cases()`` is found and compiled; nothing here lists kernels by name.

Where the numbers come from:
  * registers: the cubin's resource table (``cuobjdump --dump-resource-usage``), i.e. the binary
    Triton would load;
  * spills: ``ptxas -v`` run again on Triton's PTX for the same target (the cubin records only the
    stack frame, which spills land in);
  * shared memory: Triton's metadata (dynamic shared memory is Triton's own allocation; ptxas
    sees none of it);
  * tensor cores: ``mma.sync`` (sm_80 and small tiles on sm_90) or ``wgmma.mma_async`` (sm_90)
    in the PTX;
  * TMA copies: ``cp.async.bulk.tensor`` in the PTX (a case tagged with a TMA config must have
    them: a descriptor load lowered to plain loads is a problem, like a missing tensor core);
  * CTAs per SM: from the registers (allocated per warp in units of 256), shared memory (+1 KiB
    per CTA) and warps, against the target's limits (``SM_LIMITS``), with what limits it;
  * programs and waves at the edges of the batch sizes a case serves (where its module tags it
    with ``programs_at``): the grid's size, and that over what the target's reference GPU holds
    at once (its SMs, ``kernels.inspection.REFERENCE_SMS``, times the CTAs per SM above). A wave
    count just over a whole number leaves most SMs idle for the last wave.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

ARCHS = {"sm_80": 80, "sm_90": 90}
# What an SM holds, per target (CUDA C Programming Guide, "Compute capabilities" table): 32-bit
# registers, shared memory (bytes; the runtime reserves 1 KiB more per CTA), warps and CTAs.
# Registers are allocated per warp in units of 256, i.e. a thread's count rounded up to 8.
SM_LIMITS = {
    "sm_80": {"registers": 65536, "shared": 164 * 1024, "warps": 64, "ctas": 32},
    "sm_90": {"registers": 65536, "shared": 228 * 1024, "warps": 64, "ctas": 32},
}
_CTA_RESERVED_SHARED = 1024
DTYPE_NAMES = ("fp16", "bf16", "fp32")


@dataclass
class InspectResult:
    name: str
    arch: str
    dtype: str
    num_warps: int
    num_stages: int
    expects_tensor_cores: bool
    tags: dict = field(default_factory=dict)
    registers: Optional[int] = None
    spill_stores: Optional[int] = None  # bytes
    spill_loads: Optional[int] = None  # bytes
    stack_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    tensor_cores: str = ""  # "wgmma", "mma" or "" (none)
    tma_copies: Optional[int] = None  # cp.async.bulk.tensor instructions in the PTX
    compile_s: float = 0.0
    error: Optional[str] = None

    @property
    def spills(self) -> Optional[int]:
        if self.spill_stores is None:
            return None
        return self.spill_stores + (self.spill_loads or 0)

    def ctas_per_sm(self) -> tuple[int, str]:
        """(CTAs of this kernel one SM holds at once, what limits it: "regs", "smem", "warps" or
        "ctas", comma-separated where several do), from the compiled registers, shared memory and
        warps and the target's limits. Two CTAs per SM let one's epilogue run under the other's
        main loop."""
        limits = SM_LIMITS[self.arch]
        per_warp = -(-self.registers // 8) * 8 * 32
        bounds = {
            "regs": limits["registers"] // per_warp // self.num_warps,
            "smem": limits["shared"] // (self.shared_bytes + _CTA_RESERVED_SHARED),
            "warps": limits["warps"] // self.num_warps,
            "ctas": limits["ctas"],
        }
        least = min(bounds.values())
        return least, ", ".join(k for k, v in bounds.items() if v == least)

    def waves(self) -> list[tuple[int, int, float]]:
        """(M, programs, waves) at the edges of the batch sizes the case serves, on the target's
        reference GPU (empty where the case has no ``programs_at`` tag for this target)."""
        from .kernels.inspection import REFERENCE_SMS

        held = REFERENCE_SMS[self.arch] * self.ctas_per_sm()[0]
        at = self.tags.get("programs_at", {}).get(self.arch, ())
        return [(m, programs, programs / held) for m, programs in at]


def discover_cases() -> list:
    """Every ``KernelCase`` of every module in ``bertpool_fast.kernels`` with ``inspection_cases``."""
    from . import kernels

    cases = []
    for info in sorted(pkgutil.iter_modules(kernels.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        make_cases = getattr(module, "inspection_cases", None)
        if callable(make_cases):
            cases.extend(make_cases())
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"inspection case names must be unique; repeated: {duplicates}")
    return cases


def select_cases(cases: list, dtypes: Optional[list[str]], name_filter: Optional[str]) -> list:
    from .kernels.inspection import TRITON_DTYPE

    return [
        c
        for c in cases
        if (not dtypes or TRITON_DTYPE[c.dtype] in dtypes)
        and (not name_filter or name_filter in c.name)
    ]


def _jit_function(kernel):
    # Under TRITON_INTERPRET=1 @triton.jit returns an InterpretedFunction, which cannot be compiled,
    # and so are the @triton.jit helpers it calls: the whole process must run without the switch.
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise RuntimeError(
            "kernel inspection compiles for a GPU target and cannot run with TRITON_INTERPRET=1 "
            "(Triton's CPU interpreter replaces every @triton.jit function); unset it"
        )
    return kernel


def compile_options(case) -> dict:
    """Triton's compile options for a case, as its launch sets them."""
    from .kernels.launch import COMPILE_OPTIONS

    options = {"num_warps": case.num_warps, "num_stages": case.num_stages, **COMPILE_OPTIONS}
    if case.launch_pdl:  # only when set: every other case compiles as it always has
        options["launch_pdl"] = True
    return options


def _ast_source(case):
    from triton.compiler import ASTSource

    fn = _jit_function(case.kernel)
    signature = dict(case.signature)
    signature.update({name: "constexpr" for name in case.constexprs})
    unknown = [n for n in signature if n not in fn.arg_names]
    if unknown:
        raise ValueError(f"{case.name}: {unknown} are not arguments of {fn.__name__}")
    missing = [n for n in fn.arg_names if n not in signature]
    if missing:
        raise ValueError(f"{case.name}: no type or constexpr value given for {missing}")
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
    try:
        return ASTSource(fn=fn, signature=signature, constexprs=dict(case.constexprs), attrs=attrs)
    except (AssertionError, TypeError, ValueError):
        # Releases that key constants only by argument-index path, e.g. {(3,): 64}.
        constexprs = {(fn.arg_names.index(n),): v for n, v in case.constexprs.items()}
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _nvidia_tool(name: str, capability: int) -> str:
    import triton.backends.nvidia as nvidia

    if name == "ptxas":
        try:  # triton >= 3.4 picks a newer ptxas for sm_90+ ("ptxas-blackwell")
            from triton.backends.nvidia.compiler import get_ptxas

            return get_ptxas(capability).path
        except (ImportError, AttributeError, TypeError):
            pass
    return os.path.join(os.path.dirname(nvidia.__file__), "bin", name)


def _ptxas_spills(ptx: str, arch: str, capability: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_nvidia_tool("ptxas", capability), "-v", f"--gpu-name={arch}", src, "-o", os.devnull]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({' '.join(cmd)}):\n{run.stderr.strip()}")
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", run.stderr)
    if m is None:
        raise RuntimeError(f"no spill line in ptxas -v output:\n{run.stderr.strip()}")
    return int(m.group(1)), int(m.group(2))


def cuobjdump(cubin: bytes, capability: int, option: str) -> str:
    """What the wheel's cuobjdump prints for a compiled kernel with ``option`` (e.g. "-sass")."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        cmd = [_nvidia_tool("cuobjdump", capability), option, path]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"cuobjdump failed ({' '.join(cmd)}):\n{run.stderr.strip()}")
    return run.stdout


def _cubin_resources(cubin: bytes, capability: int) -> dict[str, int]:
    out = cuobjdump(cubin, capability, "--dump-resource-usage")
    found = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out))
    if "REG" not in found:
        raise RuntimeError(f"no register count in cuobjdump output:\n{out.strip()}")
    return {k: int(v) for k, v in found.items()}


def _results_cache_dir() -> str:
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".triton", "cache"
    )
    return os.path.join(root, "bertpool_fast_inspect")


TMA_COPY = re.compile(r"\bcp\.async\.bulk\.tensor\.")


def tensor_core_instructions(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync\.", ptx):
        return "mma"
    return ""


@contextlib.contextmanager
def _mlir_diagnostics():
    """Capture file descriptor 2 (where MLIR prints) for the block; yields a list that holds the
    captured lines once the block ends."""
    captured_lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured_lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            captured_lines += captured.read().decode(errors="replace").splitlines()


def compile_case(case, arch: str) -> InspectResult:
    """Compile one case for ``arch`` ("sm_80" / "sm_90") and read its resources; never raises."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .kernels.inspection import TRITON_DTYPE

    result = InspectResult(
        name=case.name,
        arch=arch,
        dtype=TRITON_DTYPE[case.dtype],
        num_warps=case.num_warps,
        num_stages=case.num_stages,
        expects_tensor_cores=case.expects_tensor_cores,
        tags=dict(case.tags),
    )
    capability = ARCHS[arch]
    start = time.perf_counter()
    diagnostics: list[str] = []  # what MLIR printed while compiling (below)
    try:
        with _mlir_diagnostics() as diagnostics:
            compiled = triton.compile(
                _ast_source(case),
                target=GPUTarget("cuda", capability, 32),
                options=compile_options(case),
            )
        if diagnostics:  # warnings of a compile that worked: passed on
            sys.stderr.write("\n".join(diagnostics) + "\n")
        # Triton caches the compile; the readings are cached beside it under the same kernel hash
        # (source, options, target and Triton version), so a second run costs no ptxas call.
        cache_file = os.path.join(_results_cache_dir(), f"{compiled.metadata.hash}.json")
        # num_warps as compiled: warp specialization adds a producer and a consumer warpgroup
        readings = ("registers", "stack_bytes", "spill_stores", "spill_loads", "shared_bytes",
                    "tensor_cores", "tma_copies", "num_warps")  # fmt: skip
        cached = {}
        if os.path.exists(cache_file):
            with open(cache_file) as f:
                cached = json.load(f)
        if set(readings) <= set(cached):  # a file from before a reading was added is redone
            for key in readings:
                setattr(result, key, cached[key])
            result.compile_s = time.perf_counter() - start
            return result
        ptx = compiled.asm["ptx"]
        ptx_arch = re.search(r"^\s*\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
        resources = _cubin_resources(compiled.asm["cubin"], capability)
        result.registers = resources["REG"]
        result.stack_bytes = resources.get("STACK", 0)
        result.spill_stores, result.spill_loads = _ptxas_spills(ptx, ptx_arch, capability)
        result.shared_bytes = int(compiled.metadata.shared)
        result.tensor_cores = tensor_core_instructions(ptx)
        result.tma_copies = len(TMA_COPY.findall(ptx))
        result.num_warps = int(compiled.metadata.num_warps)
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        with open(cache_file + f".{os.getpid()}", "w") as f:
            json.dump({k: getattr(result, k) for k in readings}, f)
        os.replace(cache_file + f".{os.getpid()}", cache_file)  # atomic: workers race here
    except Exception as exc:  # reported per configuration; one bad config must not hide the rest
        # MLIR writes what failed to stderr, not into the exception ("PassManager::run failed"):
        # its first error lines go with it
        errors = [line.strip() for line in diagnostics if " error: " in line][:2]
        result.error = "; ".join([f"{type(exc).__name__}: {exc}", *errors])
    result.compile_s = time.perf_counter() - start
    return result


def _compile_indexed(job: tuple[int, str]) -> InspectResult:
    # Runs in a worker process: cases hold @triton.jit functions, which do not pickle, so the
    # worker rediscovers them and compiles the one at this index.
    index, arch = job
    return compile_case(discover_cases()[index], arch)


def inspect_all(cases: list, archs: list[str], jobs: int = 1) -> list[InspectResult]:
    all_cases = discover_cases()
    index = {c.name: i for i, c in enumerate(all_cases)}
    # a case tagged only_arch (an architecture's own table or tuning candidate) compiles for it alone
    work = [(index[c.name], arch) for c in cases for arch in archs
            if c.tags.get("only_arch", arch) == arch]  # fmt: skip
    if jobs <= 1 or len(work) <= 1:
        return [compile_case(all_cases[i], arch) for i, arch in work]
    import multiprocessing

    # fork: the workers inherit the imported kernels; there is no CUDA context to inherit badly
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_indexed, work))


def format_table(results: list[InspectResult]) -> str:
    head = (
        "config",
        "arch",
        "regs",
        "spill st/ld B",
        "smem KiB",
        "warps",
        "stages",
        "CTAs/SM",
        "tensor cores",
        "M: programs (waves)",
    )
    rows = []
    for r in results:
        if r.error:
            rows.append(
                (
                    r.name,
                    r.arch,
                    "-",
                    "-",
                    "-",
                    str(r.num_warps),
                    str(r.num_stages),
                    "-",
                    "COMPILE FAILED",
                    "-",
                )
            )
            continue
        cores = r.tensor_cores or "none"
        if r.expects_tensor_cores and not r.tensor_cores:
            cores = "NONE (expected)"
        spill = f"{r.spill_stores}/{r.spill_loads}" + (" SPILLS" if r.spills else "")
        ctas, limiter = r.ctas_per_sm()
        waves = "; ".join(f"{m}: {p} ({w:.2f})" for m, p, w in r.waves()) or "-"
        rows.append((r.name, r.arch, str(r.registers), spill, f"{r.shared_bytes / 1024:g}",
                     str(r.num_warps), str(r.num_stages), f"{ctas} ({limiter})", cores,
                     waves))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]  # fmt: skip
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for r in results:
        if r.error:
            out.append(f"\n{r.name} ({r.arch}) failed to compile:\n  {r.error}")
    return "\n".join(out)


def _json_row(r: InspectResult) -> dict:
    row = asdict(r)
    if not r.error:
        row["ctas_per_sm"], row["ctas_per_sm_limit"] = r.ctas_per_sm()
        row["waves"] = [{"m": m, "programs": p, "waves": w} for m, p, w in r.waves()]
    return row


def problems(results: list[InspectResult]) -> list[str]:
    """What a shipped configuration must not do: fail, spill, or miss the tensor cores."""
    found = []
    for r in results:
        if r.error:
            found.append(f"{r.name} ({r.arch}): does not compile")
        elif r.spills:
            found.append(f"{r.name} ({r.arch}): spills {r.spill_stores} B / {r.spill_loads} B")
        elif r.expects_tensor_cores and not r.tensor_cores:
            found.append(f"{r.name} ({r.arch}): no tensor-core instruction")
        elif getattr(r.tags.get("config"), "tma", False) and not r.tma_copies:
            found.append(f"{r.name} ({r.arch}): a TMA config without TMA copies")
    return found


def summary(results: list[InspectResult]) -> str:
    """One line under the table, e.g. "0 spills in 82 configs (0 failed to compile, ...)"."""
    spilling = sum(1 for r in results if not r.error and r.spills)
    failed = sum(1 for r in results if r.error)
    no_cores = sum(
        1 for r in results if not r.error and r.expects_tensor_cores and not r.tensor_cores
    )
    return (
        f"{spilling} spill{'' if spilling == 1 else 's'} in {len(results)} configs "
        f"({failed} failed to compile, {no_cores} without the tensor-core instructions they need)"
    )


def main(argv: Optional[list[str]] = None, prog: str = "python -m bertpool_fast inspect") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compile every shipped kernel configuration for a GPU target (no GPU needed) "
        "and print registers, spills, shared memory, warps/stages and tensor-core use.",
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=sorted(ARCHS),
        help="target; repeat for several (default: sm_80 and sm_90)",
    )
    parser.add_argument(
        "--dtype",
        action="append",
        choices=DTYPE_NAMES,
        help="only configurations of this dtype; repeatable (default: all)",
    )
    parser.add_argument(
        "--kernel", metavar="TEXT", help="only configurations whose name contains TEXT"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="compile in this many processes (default: CPUs, at most 8)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a configuration spills or misses the tensor cores",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launcher's default; silences 3.9

    from .kernels import interpreter_enabled

    if interpreter_enabled():
        print(
            "error: inspection compiles for a GPU target and cannot run under "
            "TRITON_INTERPRET=1 (Triton's CPU interpreter); unset it and rerun",
            file=sys.stderr,
        )
        return 2
    cases = select_cases(discover_cases(), args.dtype, args.kernel)
    if not cases:
        print("error: no kernel configuration matches --dtype / --kernel", file=sys.stderr)
        return 2
    archs = args.arch or sorted(ARCHS)
    results = inspect_all(cases, archs, jobs=max(1, args.jobs))
    if args.json:
        print(json.dumps([_json_row(r) for r in results], indent=1))
    else:
        import triton

        print(f"triton {triton.__version__}; {len(cases)} configurations x {', '.join(archs)}")
        print(format_table(results))
        print(summary(results))
    failed = [r for r in results if r.error]
    issues = problems(results)
    if issues and not args.json:
        print("\n" + "\n".join(issues), file=sys.stderr)
    return 1 if failed or (args.strict and issues) else 0
