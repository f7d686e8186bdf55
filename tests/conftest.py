"""Test setup: where kernels run, the tolerance table, fresh inputs and poisoned outputs.

On a machine without CUDA the Triton kernels run through Triton's CPU interpreter, which must be
switched on before triton is imported - hence at the top of this file, before any import of it.
"""

import os
import zlib

import torch

if "triton" not in __import__("sys").modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bertpool_fast.kernels import interpreter_enabled  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
# Where the kernel tests put their tensors: the GPU when there is one, else the CPU (interpreter).
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"

# Relative error allowed against a float64 reference computed from the same (already rounded)
# inputs: ||y - y_ref|| / ||y_ref||. The inputs are exact in every dtype and accumulation is fp32,
# so the error is dominated by the single rounding of the output to its dtype: unit roundoff u =
# 2^-11 (fp16), 2^-8 (bf16), 2^-24 (fp32), and a norm-relative rounding error of about u / sqrt(3).
# The table allows 2u, with fp32 raised to cover the fp32 accumulation over K <= 4096 terms
# (~sqrt(K) u) and the activation's own few ulps.
REL_TOL = {
    torch.float16: 2 * 2.0**-11,  # 9.8e-4
    torch.bfloat16: 2 * 2.0**-8,  # 7.8e-3
    torch.float32: 2e-5,
    torch.float64: 1e-12,
}


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-relative error in float64 over the non-NaN positions; inf unless NaNs match exactly."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    # NaN must sit exactly where the reference has NaN: an extra NaN fails, and so does a NaN the
    # kernel swallowed (a finite value where the reference propagates NaN).
    if not torch.equal(torch.isnan(a), torch.isnan(e)):
        return float("inf")
    mask = ~torch.isnan(e)
    a, e = a[mask], e[mask]
    denom = e.norm().item()
    return (a - e).norm().item() / (denom if denom > 0 else 1.0)


# Unit roundoff of each output dtype: a correctly rounded result is within u * |y| of y.
UNIT_ROUNDOFF = {
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.float32: 2.0**-24,
    torch.float64: 2.0**-53,
}
# Half the spacing of the dtype's subnormals: the absolute rounding error of results below its
# normal range, where the relative bound u * |y| no longer holds.
SUBNORMAL_HALF_SPACING = {
    torch.float16: 2.0**-25,
    torch.bfloat16: 2.0**-134,
    torch.float32: 2.0**-150,
    torch.float64: 2.0**-1075,
}
# Lipschitz constant of each activation: the factor by which an error in the pre-activation can
# grow through it. GELU's derivative peaks at 1.1289 (x ~ 1.4); tanh, relu and identity have 1.
ACTIVATION_LIPSCHITZ = {"tanh": 1.0, "relu": 1.0, "identity": 1.0, "gelu": 1.13, "gelu_tanh": 1.13}
# The kernels evaluate the activation in fp32, so the evaluation adds at most this relative error
# before the final rounding, by the dtype rounded to. fp32: tanh_f32 (kernels/activations.py) at
# most ~6.3 ulps where its exponential form starts (2 ulps of exp2 times 1.9, 2 of the division,
# 0.5 of 1 + t), less above, ~2 in its series; GELU's erf (libdevice erff, 2 ulps documented) and
# tanh scaled by its factors: 8 ulps. fp16 / bf16: tanh_to_half, a rational function whose
# relative error is below 2^-20 everywhere (fit 2^-25.1 plus ~11 ulps of evaluation), 1/512 of
# fp16's unit roundoff; |x| clamped at TANH_TO_HALF_CLAMP (the other activations are as accurate
# as for fp32).
TANH_TO_HALF_REL = 2.0**-20
TANH_TO_HALF_CLAMP = 4.6
ACTIVATION_EVAL_RTOL = {
    torch.float32: 8 * 2.0**-24,
    torch.float16: TANH_TO_HALF_REL,
    torch.bfloat16: TANH_TO_HALF_REL,
    torch.float64: 8 * 2.0**-24,
}


def gemm_error_bound(x, weight, bias=None, activation="identity", operand_unit=0.0) -> torch.Tensor:
    """Per-element bound on |kernel - exact| for act(x @ weight.T + bias), before output rounding.

    The kernels sum K products (and the bias) in fp32; whatever the order, the computed sum differs
    from the exact one by at most gamma_n * sum_k |x_k| |w_k| (+ |b|), gamma_n = n u / (1 - n u)
    with u = 2^-24 and n = K + 1 terms (Higham, Accuracy and Stability, 3.1). The products are exact
    in fp32 for fp16/bf16 inputs. The activation then multiplies the error by at most its Lipschitz
    constant. ``operand_unit``: when the dot first rounds each fp32 operand to a shorter format
    (TF32: 10 explicit mantissa bits, relative change below 2^-10 whether the conversion rounds or
    truncates), each product carries a further relative error of at most 2 v + v^2.
    x: [M, K] rows the kernel read, weight: [N, K]. Returns [M, N] float64.
    """
    x64, w64 = x.detach().double().cpu(), weight.detach().double().cpu()
    n = x64.shape[-1] + 1
    u32 = 2.0**-24
    v = operand_unit
    gamma = n * u32 / (1 - n * u32) + (2 * v + v * v) * (1 + n * u32)
    mag = x64.abs() @ w64.abs().T
    if bias is not None:
        mag = mag + bias.detach().double().cpu().abs()
    return ACTIVATION_LIPSCHITZ[activation] * gamma * mag


def elementwise_excess(actual, expected, atol, rtol) -> tuple[float, tuple]:
    """max over elements of |a - e| - (atol + rtol |e|) and where it is; NaN positions must match."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if not torch.equal(torch.isnan(a), torch.isnan(e)):
        where = torch.nonzero(torch.isnan(a) != torch.isnan(e))[0].tolist()
        return float("inf"), tuple(where)
    ok = ~torch.isnan(e)
    atol = torch.as_tensor(atol, dtype=torch.float64).expand_as(e)
    excess = torch.where(ok, (a - e).abs() - (atol + rtol * e.abs()), torch.zeros_like(e))
    # inf == inf passes (saturated outputs); an inf where the reference is finite does not
    excess = torch.where(ok & (a == e), torch.zeros_like(e), excess)
    excess = torch.nan_to_num(excess, nan=float("inf"))
    if excess.numel() == 0:
        return float("-inf"), ()
    flat = int(excess.argmax())
    where = tuple(torch.unravel_index(torch.tensor(flat), excess.shape))
    return float(excess.flatten()[flat]), tuple(int(i) for i in where)


def assert_close_rel(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale=1.0, *, bound=None
):
    """The norm-relative check, and every element checked too; a NaN never passes.

    Norm: ||a - e|| / ||e|| <= REL_TOL[dtype] * scale.
    Elements: |a - e| <= atol + rtol |e|, where
      * with ``bound`` (per-element accumulation bound from ``gemm_error_bound``, for callers that
        have the kernel's inputs): atol = bound * (1 + u) + subnormal half-spacing, and
        rtol = u (the one rounding to ``dtype``) + the fp32 activation's own error, scaled by
        ``scale`` like the norm tolerance;
      * without it: atol = REL_TOL[dtype] * scale * max|e| - no element may be off by more than the
        norm tolerance relative to the largest output, so a single wrong element cannot hide in
        the norm of a large tensor.
    """
    err = rel_error(actual, expected)
    tol = REL_TOL[dtype] * scale
    assert err <= tol, f"relative error {err:.3e} > tolerance {tol:.3e} for {dtype}"
    u = UNIT_ROUNDOFF[dtype]
    e = expected.detach().double().cpu()
    if bound is not None:
        atol = bound.double().cpu() * (1 + u) + SUBNORMAL_HALF_SPACING[dtype]
        rtol = (u + ACTIVATION_EVAL_RTOL[dtype]) * scale
        how = "derived per element"
    else:
        finite = e[torch.isfinite(e)]
        peak = finite.abs().max().item() if finite.numel() else 0.0
        atol, rtol = tol * peak + SUBNORMAL_HALF_SPACING[dtype], 0.0
        how = f"{tol:.1e} x max|ref|"
    excess, where = elementwise_excess(actual, expected, atol, rtol)
    if excess > 0:
        a = actual.detach().double().cpu()[where].item() if where else float("nan")
        r = e[where].item() if where else float("nan")
        raise AssertionError(
            f"element {where}: {a!r} vs reference {r!r} is outside the bound ({how}) by "
            f"{excess:.3e}, for {dtype}"
        )


def compiled_in_subprocess(test_file: str) -> dict:
    """Run ``test_file`` as a script without TRITON_INTERPRET (which this process has on a CPU
    machine, and under which nothing compiles for a GPU target) from the repository root; return
    the JSON its last line prints."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(test_file)],
        capture_output=True, text=True, env=env, cwd=root, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel fails to write fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def randn(*shape, dtype=torch.float32, device=KERNEL_DEVICE, scale=1.0) -> torch.Tensor:
    """Fresh random normal data (never zeros), generated in fp32 then rounded to ``dtype``."""
    return (torch.randn(*shape, device=device) * scale).to(dtype)


SEED_ENV = "BERTPOOL_TEST_SEED"


def seed_for(nodeid: str) -> int:
    """The test's seed: crc32 of its id, so every run of a test draws the same inputs, or the
    value of $BERTPOOL_TEST_SEED when set (to replay a seed printed by another run)."""
    override = os.environ.get(SEED_ENV)
    return int(override) if override else zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _test_seed(request):
    seed = seed_for(request.node.nodeid)
    torch.manual_seed(seed)
    # shown with the captured output of a failing test
    print(f"torch seed {seed} (replay: {SEED_ENV}={seed} pytest '{request.node.nodeid}')")
    yield seed


def pytest_report_header(config):
    where = "CUDA " + torch.cuda.get_device_name() if HAS_CUDA else "CPU"
    import triton

    return (
        f"bertpool_fast kernels on {where}; TRITON_INTERPRET={int(interpreter_enabled())}; "
        f"torch {torch.__version__}, triton {triton.__version__}"
    )


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
