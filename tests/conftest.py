"""Test setup: where kernels run, the tolerance table, fresh inputs and poisoned outputs.

On a machine without CUDA the Triton kernels run through Triton's CPU interpreter, which must be
switched on before triton is imported - hence at the top of this file, before any import of it.
"""

import os

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


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale=1.0):
    err = rel_error(actual, expected)
    tol = REL_TOL[dtype] * scale
    assert err <= tol, f"relative error {err:.3e} > tolerance {tol:.3e} for {dtype}"


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel fails to write fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def randn(*shape, dtype=torch.float32, device=KERNEL_DEVICE, scale=1.0) -> torch.Tensor:
    """Fresh random normal data (never zeros), generated in fp32 then rounded to ``dtype``."""
    return (torch.randn(*shape, device=device) * scale).to(dtype)


@pytest.fixture(autouse=True)
def _fresh_seed():
    # A different seed every run (fresh inputs), printed on failure so a run can be replayed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")  # shown with the captured output of a failing test
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
