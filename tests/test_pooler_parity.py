"""Parity of the fused pooler kernel against a float64 reference, over shapes, dtypes and layouts."""

import pytest
import torch

import bertpool_fast
from bertpool_fast.kernels import pooler_fwd
from bertpool_fast.kernels.pooler import POOLER_TABLES
from conftest import (
    KERNEL_DEVICE,
    REL_TOL,
    assert_close_rel,
    gemm_error_bound,
    poisoned,
    randn,
    rel_error,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def make_inputs(b, s, h_in, h_out, dtype, bias=True, device=KERNEL_DEVICE):
    # Scaled like a trained pooler: pre-activations of order 1, so tanh is neither linear nor flat.
    hidden = randn(b, s, h_in, dtype=dtype, device=device)
    weight = randn(h_out, h_in, dtype=dtype, device=device, scale=h_in**-0.5)
    b_ = randn(h_out, dtype=dtype, device=device, scale=0.5) if bias else None
    return hidden, weight, b_


def reference64(hidden, weight, bias, activation="tanh"):
    from bertpool_fast.reference import pooler_reference

    return pooler_reference(
        hidden[:, 0].double(), weight.double(), None if bias is None else bias.double(), activation
    )


# (B, S, H_in, H_out): the BERT-family hidden sizes, odd sizes, N != K, and every batch bucket edge of
# the tile table (16/17, 64/65, 256/257) so each config and its masked edge tiles run.
SHAPES = [
    pytest.param(1, 1, 128, 128, id="B1-S1-H128"),
    pytest.param(2, 3, 384, 384, id="B2-H384"),
    pytest.param(1, 5, 768, 768, id="B1-H768"),
    pytest.param(3, 2, 1024, 1024, id="B3-H1024"),
    pytest.param(5, 4, 33, 33, id="B5-H33-odd"),
    pytest.param(7, 3, 312, 312, id="B7-H312-odd"),
    pytest.param(16, 2, 40, 72, id="B16-bucket-edge-N>K"),
    pytest.param(17, 2, 72, 40, id="B17-bucket-edge-N<K"),
    pytest.param(65, 2, 48, 33, id="B65-bucket-edge"),
    pytest.param(257, 2, 40, 24, id="B257-large-tiles"),
    pytest.param(2, 2, 4096, 96, id="K4096-N96"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("b,s,h_in,h_out", SHAPES)
def test_parity_against_float64(b, s, h_in, h_out, dtype):
    hidden, weight, bias = make_inputs(b, s, h_in, h_out, dtype)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert out.shape == (b, h_out) and out.dtype == dtype and out.device == hidden.device
    bound = gemm_error_bound(hidden[:, 0], weight, bias, "tanh")
    assert_close_rel(out, reference64(hidden, weight, bias), dtype, bound=bound)


def test_parity_square_4096_bf16():
    # The largest hidden size the issue names, square; one dtype only because the interpreter
    # takes ~10 s for it (bf16, the dtype the interpreter needs a workaround for).
    hidden, weight, bias = make_inputs(1, 2, 4096, 4096, torch.bfloat16)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert_close_rel(out, reference64(hidden, weight, bias), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_element_written(dtype):
    # The output starts as NaN; a tile the grid misses or a mask that drops a column fails here.
    b, h_in, h_out = 37, 70, 50
    hidden, weight, bias = make_inputs(b, 3, h_in, h_out, dtype)
    out = poisoned((b, h_out), dtype, hidden.device)
    pooler_fwd(hidden[:, 0], weight, bias, "tanh", out=out)
    assert not torch.isnan(out).any()
    assert_close_rel(out, reference64(hidden, weight, bias), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_without_bias(dtype):
    hidden, weight, _ = make_inputs(4, 2, 64, 48, dtype, bias=False)
    out = bertpool_fast.fused_pooler(hidden, weight, None, backend="triton")
    assert_close_rel(out, reference64(hidden, weight, None), dtype)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "gelu_tanh", "relu", "identity"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_activations(activation, dtype):
    hidden, weight, bias = make_inputs(6, 2, 64, 40, dtype)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, activation=activation, backend="triton")
    bound = gemm_error_bound(hidden[:, 0], weight, bias, activation)
    assert_close_rel(out, reference64(hidden, weight, bias, activation), dtype, bound=bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transposed_hidden_states(dtype):
    # (S, B, H) storage seen as (B, S, H): row stride is H, token stride is B*H - no copy made.
    s, b, h = 5, 6, 96
    hidden = randn(s, b, h, dtype=dtype).transpose(0, 1)
    assert not hidden.is_contiguous()
    _, weight, bias = make_inputs(1, 1, h, 80, dtype)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert_close_rel(out, reference64(hidden, weight, bias), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hidden_slice_of_wider_tensor(dtype):
    # An H-slice of a wider buffer, and a non-contiguous weight (a column slice).
    wide = randn(4, 3, 160, dtype=dtype)
    hidden = wide[:, :, 16:112]
    weight = randn(72, 200, dtype=dtype, scale=96**-0.5)[:, 50:146]
    bias = randn(72, dtype=dtype)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert_close_rel(out, reference64(hidden, weight, bias), dtype)


def test_transposed_weight_storage():
    # weight given as the transpose of a [K, N] buffer: read through its strides, never copied.
    h_in, h_out = 64, 48
    weight = randn(h_in, h_out, dtype=torch.float16, scale=h_in**-0.5).t()
    hidden = randn(3, 2, h_in, dtype=torch.float16)
    out = bertpool_fast.fused_pooler(hidden, weight, None, backend="triton")
    assert_close_rel(out, reference64(hidden, weight, None), torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_empty_batch(dtype):
    hidden, weight, bias = make_inputs(0, 3, 32, 24, dtype)
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert out.shape == (0, 24) and out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tanh_saturates_exactly(dtype):
    # Pre-activations of +-1e4 (and +-1e30 in fp32) must give exactly +-1, never NaN or inf.
    h = 32
    hidden = torch.ones(2, 1, h, dtype=dtype, device=KERNEL_DEVICE)
    hidden[1] = -1
    weight = torch.full((16, h), 300.0, dtype=dtype, device=KERNEL_DEVICE)
    weight[8:] *= -1
    bias = None
    if dtype == torch.float32:
        bias = torch.full((16,), 1e30, device=KERNEL_DEVICE)
        bias[8:] *= -1
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    expected = torch.sign(reference64(hidden, weight, bias))
    assert torch.equal(out.double().cpu(), expected.cpu())


@pytest.mark.parametrize("value", [1e-3, -1e-3, 0.03, -0.05, 0.0625, 0.2, 0.2499, 0.25, -0.2501,
                                   0.4, -3.0])  # fmt: skip
def test_tanh_accuracy_near_zero(value):
    # An fp32 result: tanh_f32 switches from a Taylor series to the exponential form at |x| = 1/4;
    # both sides of the switch must be within the activation's own error (ACTIVATION_EVAL_RTOL,
    # kernels/activations.py) and the output's rounding.
    from conftest import ACTIVATION_EVAL_RTOL

    hidden = torch.full((1, 1, 16), 1.0, device=KERNEL_DEVICE)
    weight = torch.zeros(16, 16, device=KERNEL_DEVICE)
    weight[:, 0] = value
    out = bertpool_fast.fused_pooler(hidden, weight, None, backend="triton")
    expected = torch.tanh(torch.tensor(value, dtype=torch.float64))
    bound = (ACTIVATION_EVAL_RTOL[torch.float32] + 2.0**-24) * abs(expected.item())
    assert abs(out[0, 0].item() - expected.item()) <= bound


def _tanh_through_identity(x: torch.Tensor) -> torch.Tensor:
    """The pooler's tanh epilogue on each element of x alone: rows of x through an identity
    weight, so the dot is exact (x * 1 plus zeros, IEEE fp32) and output i is tanh(x[i])."""
    h = 16
    hidden = x.view(-1, 1, h).to(KERNEL_DEVICE)
    eye = torch.eye(h, device=KERNEL_DEVICE, dtype=x.dtype)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # IEEE fp32 dots for an fp32 x
    try:
        return bertpool_fast.fused_pooler(hidden, eye, None, backend="triton").flatten().cpu()
    finally:
        torch.set_float32_matmul_precision(prev)


def _both_signs_dense_at(switch: float, n: int) -> torch.Tensor:
    """Magnitudes 1e-6 .. 20 of both signs, half of them within 20% of ``switch``, in float64."""
    mags = torch.cat([torch.logspace(-6, 1.3, n // 2, dtype=torch.float64),
                      torch.linspace(0.8 * switch, 1.2 * switch, n // 2, dtype=torch.float64)])  # fmt: skip
    return torch.cat([mags, -mags])


def test_tanh_epilogue_over_its_whole_range():
    # An fp32 result (tanh_f32), every element checked against the activation's own error
    # (ACTIVATION_EVAL_RTOL) plus the output's rounding, dense around the series/exponential
    # switch at 1/4. On a GPU this is the compiled epilogue (libdevice exp2 and fast division);
    # the interpreter has numpy's.
    from conftest import ACTIVATION_EVAL_RTOL

    x = _both_signs_dense_at(0.25, 1 << 18 if KERNEL_DEVICE != "cpu" else 1 << 13).float()
    out = _tanh_through_identity(x).double()
    expected = torch.tanh(x.double())
    err = (out - expected).abs() / expected.abs()
    worst = int(err.argmax())
    assert err.max() <= ACTIVATION_EVAL_RTOL[torch.float32] + 2.0**-24, (
        f"tanh({x[worst].item():.9g}) off by {err.max().item() / 2.0**-24:.1f} fp32 ulps"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tanh_to_half_rounds_like_exact_tanh(dtype):
    # A result rounded to fp16 / bf16 takes tanh_to_half, whose own relative error is below
    # TANH_TO_HALF_REL everywhere. Sharper than a bound of u |y|: each output must be the exact
    # tanh correctly rounded, except where the exact value lies within the activation's own error
    # of the midpoint between two representable neighbours - there either neighbour is right.
    # Every element is checked, densely around the clamp (beyond it the result must round to
    # exactly +-1) and over 1e-6 .. 20.
    from conftest import TANH_TO_HALF_CLAMP, TANH_TO_HALF_REL

    x = _both_signs_dense_at(TANH_TO_HALF_CLAMP, 1 << 18 if KERNEL_DEVICE != "cpu" else 1 << 13)
    x = x.to(dtype)  # inputs exact in the dtype, so x * 1 is exact in fp32
    out = _tanh_through_identity(x).double()
    exact = torch.tanh(x.double())
    nearest = exact.to(dtype).double()
    own_error = TANH_TO_HALF_REL * exact.abs()
    # where the output is not the nearest value, exact must lie within own_error of the midpoint
    # between the two (which also makes them neighbours: own_error is far below half a spacing)
    distance_to_midpoint = (exact - (out + nearest) / 2).abs()
    bad = (out != nearest) & (distance_to_midpoint > own_error)
    assert not torch.isnan(out).any()
    assert not bad.any(), (
        f"{int(bad.sum())} outputs are not a correct rounding of tanh; first: tanh("
        f"{x[bad.nonzero()[0, 0]].item()!r}) = {out[bad][0].item()!r}, nearest {nearest[bad][0].item()!r}"
    )
    assert (out[x.abs() >= TANH_TO_HALF_CLAMP].abs() == 1).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_stays_in_its_row(dtype):
    hidden, weight, bias = make_inputs(5, 2, 48, 40, dtype)
    hidden[2, 0, 7] = float("nan")
    hidden[3, 1, 0] = float("nan")  # not a first-token row: must not matter
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    assert torch.isnan(out[2]).all()
    clean = [0, 1, 3, 4]
    assert not torch.isnan(out[clean]).any()
    assert_close_rel(out[clean], reference64(hidden, weight, bias)[clean], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_deterministic(dtype):
    hidden, weight, bias = make_inputs(20, 2, 96, 64, dtype)
    first = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    for _ in range(2):
        again = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
        assert torch.equal(first, again)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_auto_backend_matches_torch_backend(dtype):
    hidden, weight, bias = make_inputs(3, 2, 64, 64, dtype)
    auto = bertpool_fast.fused_pooler(hidden, weight, bias)
    torch_path = bertpool_fast.fused_pooler(hidden, weight, bias, backend="torch")
    ref = reference64(hidden, weight, bias)
    assert_close_rel(auto, ref, dtype)
    assert_close_rel(torch_path, ref, dtype)


def test_auto_leaves_float32_poolers_on_a_gpu_to_cublas():
    # the pooler's "auto" on CUDA: fp16/bf16 run the kernel, float32 goes to cuBLAS (measured
    # faster); the interpreter runs every kernel dtype; other ops' "auto" keeps float32
    from bertpool_fast.validation import resolve_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for dtype in (torch.float16, torch.bfloat16):
        assert resolve_backend("auto", cuda, dtype, gemm=True) == "triton"
    assert resolve_backend("auto", cuda, torch.float32, gemm=True) == "torch"
    assert resolve_backend("auto", cuda, torch.float32) == "triton"
    assert resolve_backend("triton", cuda, torch.float32, gemm=True) == "triton"
    interpreted = KERNEL_DEVICE == "cpu"
    assert resolve_backend("auto", cpu, torch.float32, gemm=True) == (
        "triton" if interpreted else "torch"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA auto path needs a GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_auto_on_a_gpu_runs_the_kernel_for_half_types_only(dtype, monkeypatch):
    from bertpool_fast import ops

    launched = []
    real = ops.pooler_fwd
    monkeypatch.setattr(ops, "pooler_fwd", lambda *a, **k: launched.append(1) or real(*a, **k))
    monkeypatch.setattr(ops, "_PLANS", {})
    hidden, weight, bias = make_inputs(5, 3, 96, 64, dtype)
    with torch.inference_mode():
        out = bertpool_fast.fused_pooler(hidden, weight, bias)  # the thin inference path
    with torch.enable_grad():
        weight.requires_grad_(True)
        graded = bertpool_fast.fused_pooler(hidden, weight, bias)  # the full path, autograd
    assert bool(launched) == (dtype is not torch.float32)
    ref = reference64(hidden, weight, bias)
    assert_close_rel(out, ref, dtype)
    assert_close_rel(graded.detach(), ref, dtype)
    if dtype is torch.float32:  # bitwise what the torch backend computes
        torch.testing.assert_close(
            out, bertpool_fast.fused_pooler(hidden, weight, bias, backend="torch"), rtol=0, atol=0
        )


def test_torch_backend_float64():
    hidden, weight, bias = make_inputs(3, 2, 16, 8, torch.float64, device="cpu")
    out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="torch")
    assert rel_error(out, reference64(hidden, weight, bias)) <= REL_TOL[torch.float64]


def test_tile_tables_cover_every_batch():
    # Every architecture's table for every dtype ends in an open bucket, its bounds increasing.
    # (One K order for every batch is batch_invariant's table's property, tested with it; the
    # speed tables choose BLOCK_K per bucket.)
    for arch, tables in POOLER_TABLES.items():
        for dtype, table in tables.items():
            assert table[-1][0] is None, (arch, dtype)
            bounds = [m for m, _ in table[:-1]]
            assert bounds == sorted(set(bounds)) and bounds[0] >= 1, (arch, dtype)


@pytest.mark.parametrize("setting", ["tf32", "ieee"])
def test_fp32_with_the_new_precision_api(setting):
    # Once torch.backends.cuda.matmul.fp32_precision is set, torch.get_float32_matmul_precision()
    # raises; the kernel must read the new switch, not crash.
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy precision API")
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = setting
        hidden, weight, bias = make_inputs(3, 2, 64, 32, torch.float32)
        out = bertpool_fast.fused_pooler(hidden, weight, bias, backend="triton")
    finally:
        matmul.fp32_precision = before
    # TF32 keeps 10 explicit mantissa bits of each operand: the per-element bound adds the operand
    # rounding (gemm_error_bound's operand_unit), and the norm tolerance is that bound's own norm
    # relative to the output's (the interpreter computes in fp32 either way, far inside it).
    expected = reference64(hidden, weight, bias)
    unit = 2.0**-10 if setting == "tf32" else 0.0
    bound = gemm_error_bound(hidden[:, 0], weight, bias, "tanh", operand_unit=unit)
    scale = (bound.norm() / expected.norm()).item() / REL_TOL[torch.float32]
    assert_close_rel(out, expected, torch.float32, scale=max(scale, 1.0), bound=bound)
