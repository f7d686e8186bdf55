"""Backward of the fused pooler: gradcheck on the reference path, Triton backward kernels against
float64 and against eager autograd, needs_input_grad, unwritten outputs, determinism.

Gradient tolerances are the forward's REL_TOL, unscaled: inputs are exact in their dtype and dZ is
formed in fp32 and rounded once to the operand dtype (as eager's tanh_backward does), so each
gradient carries two roundings (dZ, then the output), about sqrt(2) u / sqrt(3) norm-relative,
under the table's 2u. The fp32 accumulation over N (dX) or the batch (dW, db) adds ~sqrt(len) fp32
ulps, which the small shapes here keep far below the fp32 entry.
"""

import pytest
import torch
import torch.nn.functional as F

from bertpool_fast import fused_pooler
from bertpool_fast.kernels import ACTIVATIONS, pooler_bwd_dw, pooler_bwd_dx
from bertpool_fast.reference import apply_activation_torch, pooler_backward_reference
from conftest import KERNEL_DEVICE, REL_TOL, assert_close_rel, poisoned, randn, rel_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

# (B, S, H_in, H_out): N != K both ways, odd sizes (masked edge tiles in every dimension), and
# batches in each row of the backward tile tables (<= 16, <= 64, <= 256, > 256).
SHAPES = [
    pytest.param((3, 4, 48, 40), id="B3-K48-N40"),
    pytest.param((9, 2, 41, 70), id="B9-K41-N70-odd"),
    pytest.param((37, 3, 72, 33), id="B37-K72-N33"),
]
LARGE_BATCH = [
    pytest.param((100, 1, 40, 24), id="B100-bucket<=256"),
    pytest.param((261, 1, 24, 40), id="B261-bucket>256"),
]


def make_inputs(b, s, h_in, h_out, dtype, device=KERNEL_DEVICE):
    # Pre-activations of order 1, so tanh's derivative is neither ~1 nor ~0 everywhere.
    hidden = randn(b, s, h_in, dtype=dtype, device=device)
    weight = randn(h_out, h_in, dtype=dtype, device=device, scale=h_in**-0.5)
    bias = randn(h_out, dtype=dtype, device=device, scale=0.5)
    return hidden, weight, bias


def leaves(*tensors, grad=(True, True, True)):
    return [
        None if t is None else t.detach().clone().requires_grad_(g) for t, g in zip(tensors, grad)
    ]


def grads64(dy, hidden, weight, bias, y, activation):
    """float64 gradients of the pooler given the same rounded (dY, inputs, saved y) as the kernel."""
    d = [None if t is None else t.detach().double() for t in (dy, hidden, weight, bias, y)]
    dx, dw, db = pooler_backward_reference(
        d[0], d[1][:, 0], d[2], d[3], d[4], activation, (True, True, bias is not None)
    )
    dh = torch.zeros_like(d[1])
    dh[:, 0] = dx
    return dh, dw, db


# ---------------------------------------------------------------------------------------------
# gradcheck: the reference path in float64 (analytic backward against finite differences)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck_reference_float64(activation, has_bias):
    hidden, weight, bias = make_inputs(3, 4, 7, 5, torch.float64, device="cpu")
    if activation == "relu":
        # finite differences straddling relu's kink at z = 0 are meaningless: keep |z| away from it
        bias = bias + torch.where(bias >= 0, 3.0, -3.0).double()
    h, w, b = leaves(hidden, weight, bias if has_bias else None)
    fn = lambda h, w, b: fused_pooler(h, w, b, activation=activation, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_gradgradcheck_reference_float64(activation):
    # The torch path's backward is plain differentiable torch, so second derivatives work there.
    h, w, b = leaves(*make_inputs(2, 3, 6, 4, torch.float64, device="cpu"))
    fn = lambda h, w, b: fused_pooler(h, w, b, activation=activation, backend="torch")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (h, w, b))


def test_gradcheck_noncontiguous_hidden_states():
    # hidden_states laid out [S, B, H] in memory: the first-token rows are strided by H, not S * H
    hidden = randn(4, 3, 6, dtype=torch.float64, device="cpu").transpose(0, 1)
    _, weight, bias = make_inputs(1, 1, 6, 5, torch.float64, device="cpu")
    h, w, b = leaves(hidden, weight, bias)
    assert torch.autograd.gradcheck(
        lambda h, w, b: fused_pooler(h, w, b, backend="torch"), (h, w, b)
    )


# ---------------------------------------------------------------------------------------------
# The Triton backward kernels (CPU interpreter here) against float64 and eager autograd


def run_fused(hidden, weight, bias, dy, activation, grad=(True, True, True), backend="triton"):
    h, w, b = leaves(hidden, weight, bias, grad=grad)
    y = fused_pooler(h, w, b, activation=activation, backend=backend)
    y.backward(dy)
    return y, h.grad, w.grad, None if b is None else b.grad


def run_eager(hidden, weight, bias, dy, activation):
    h, w, b = leaves(hidden, weight, bias)
    y = apply_activation_torch(F.linear(h[:, 0], w, b), activation)
    y.backward(dy)
    return y, h.grad, w.grad, b.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_triton_backward_matches_float64_and_eager(shape, activation, dtype):
    hidden, weight, bias = make_inputs(*shape, dtype)
    dy = randn(shape[0], shape[3], dtype=dtype)
    y, dh, dw, db = run_fused(hidden, weight, bias, dy, activation)
    expected = grads64(dy, hidden, weight, bias, y, activation)
    _, *eager = run_eager(hidden, weight, bias, dy, activation)
    for name, got, ref, eag in zip(
        ("hidden_states", "weight", "bias"), (dh, dw, db), expected, eager
    ):
        assert got.dtype == dtype and got.shape == ref.shape, name
        err = rel_error(got, ref)
        assert err <= REL_TOL[dtype], f"d{name}: {err:.3e} > {REL_TOL[dtype]:.3e} vs float64"
        # eager autograd meets the same bound (the table is fair), and the two agree
        assert rel_error(eag, ref) <= REL_TOL[dtype], f"eager d{name} misses the table"
        assert rel_error(got, eag) <= 2 * REL_TOL[dtype], f"d{name} vs eager"
    # only position 0 has a gradient, and the other positions are exactly zero
    assert torch.count_nonzero(dh[:, 1:]) == 0


@pytest.mark.parametrize("shape", LARGE_BATCH)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_triton_backward_large_batch_tiles(shape, dtype):
    # dW and db reduce over the batch: at B = 261 that is 261 fp32 terms per element, still far
    # inside the table (~sqrt(261) fp32 ulps).
    hidden, weight, bias = make_inputs(*shape, dtype)
    dy = randn(shape[0], shape[3], dtype=dtype)
    y, *got = run_fused(hidden, weight, bias, dy, "tanh")
    for g, ref in zip(got, grads64(dy, hidden, weight, bias, y, "tanh")):
        assert_close_rel(g, ref, dtype)


@pytest.mark.parametrize(
    "grad",
    [(False, True, True), (True, False, True), (True, True, False), (False, False, True),
     (False, True, False), (True, False, False)],
    ids=["frozen-input", "frozen-weight", "frozen-bias", "bias-only", "weight-only", "input-only"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_needs_input_grad(grad, dtype):
    hidden, weight, bias = make_inputs(5, 3, 24, 40, dtype)
    dy = randn(5, 40, dtype=dtype)
    y, *got = run_fused(hidden, weight, bias, dy, "tanh", grad=grad)
    for needed, g, ref in zip(grad, got, grads64(dy, hidden, weight, bias, y, "tanh")):
        if needed:
            assert_close_rel(g, ref, dtype)
        else:
            assert g is None


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_no_bias(activation):
    hidden, weight, _ = make_inputs(6, 2, 32, 24, torch.float16)
    dy = randn(6, 24, dtype=torch.float16)
    y, dh, dw, db = run_fused(hidden, weight, None, dy, activation)
    assert db is None
    ref = grads64(dy, hidden, weight, None, y, activation)
    assert_close_rel(dh, ref[0], torch.float16)
    assert_close_rel(dw, ref[1], torch.float16)


def test_strided_inputs_and_expanded_grad():
    # hidden_states [S, B, H] in memory, weight transposed in memory, and the stride-0 dY that
    # y.sum().backward() produces: all read through their strides.
    dtype = torch.float16
    hidden = randn(3, 7, 40, dtype=dtype).transpose(0, 1)
    weight = randn(24, 40, dtype=dtype, scale=40**-0.5).t().contiguous().t()
    bias = randn(24, dtype=dtype)
    h, w, b = leaves(hidden, weight, bias)
    y = fused_pooler(h, w, b, backend="triton")
    y.sum().backward()
    dy = torch.ones_like(y)
    for got, ref in zip((h.grad, w.grad, b.grad), grads64(dy, hidden, weight, bias, y, "tanh")):
        assert_close_rel(got, ref, dtype)


# ---------------------------------------------------------------------------------------------
# The launchers directly: every output element written, reproducibility, argument checks


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_launchers_write_every_element(dtype):
    m, n, k = 19, 45, 70
    x = randn(m, 2, k, dtype=dtype)[:, 0]
    w = randn(n, k, dtype=dtype, scale=k**-0.5)
    y = torch.tanh(randn(m, n)).to(dtype)
    dy = randn(m, n, dtype=dtype)
    # dX into row 0 of a NaN-filled [B, S, H] buffer: row 0 must be fully written, nothing else
    grad_h = poisoned((m, 3, k), dtype, KERNEL_DEVICE)
    pooler_bwd_dx(dy, y, w, "tanh", out=grad_h[:, 0])
    assert not torch.isnan(grad_h[:, 0]).any()
    assert torch.isnan(grad_h[:, 1:]).all()
    dw, db = pooler_bwd_dw(
        dy, y, x, "tanh", True, True, n,
        out_weight=poisoned((n, k), dtype, KERNEL_DEVICE), out_bias=poisoned((n,), dtype, KERNEL_DEVICE),
    )  # fmt: skip
    assert not torch.isnan(dw).any() and not torch.isnan(db).any()
    # db alone (frozen weight) runs a single K tile, which must still write all of db
    _, db_only = pooler_bwd_dw(
        dy, y, x, "tanh", False, True, n, out_bias=poisoned((n,), dtype, KERNEL_DEVICE)
    )
    assert torch.equal(db_only, db)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_is_bitwise_deterministic(dtype):
    # No atomics: the dW / db reduction over the batch runs in one fixed order.
    hidden, weight, bias = make_inputs(40, 2, 48, 56, dtype)
    dy = randn(40, 56, dtype=dtype)
    first = run_fused(hidden, weight, bias, dy, "tanh")
    second = run_fused(hidden, weight, bias, dy, "tanh")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_batch():
    hidden, weight, bias = make_inputs(0, 3, 16, 16, torch.float32)
    dy = torch.empty(0, 16, device=KERNEL_DEVICE)
    _, dh, dw, db = run_fused(hidden, weight, bias, dy, "tanh")
    assert dh.shape == (0, 3, 16)
    assert torch.count_nonzero(dw) == 0 and torch.count_nonzero(db) == 0


def test_launcher_rejects_activation_needing_z():
    x = randn(4, 8)
    with pytest.raises(ValueError, match="identity"):
        pooler_bwd_dx(x, x, randn(8, 8), "gelu", out=torch.empty(4, 8, device=KERNEL_DEVICE))


def test_double_backward_through_kernels_raises():
    # The kernel backward is not itself differentiable; it must say so, never return a wrong zero.
    h, w, b = leaves(*make_inputs(2, 2, 16, 16, torch.float32))
    y = fused_pooler(h, w, b, backend="triton")
    (gw,) = torch.autograd.grad(y.sum(), w, create_graph=True)
    with pytest.raises(RuntimeError):
        gw.sum().backward()


def test_opcheck_backward_ops():
    # Schema, fake-tensor and functionalization checks for the two backward ops, which is what
    # torch.compile's AOTAutograd relies on to trace a training step through them; and for the
    # forward op taking the whole [B, S, H] hidden_states (the training path's form).
    from bertpool_fast.ops import pooler_grad_hidden_op, pooler_grad_params_op, pooler_op

    hidden, weight, bias = make_inputs(4, 3, 32, 24, torch.float32)
    y = torch.tanh(F.linear(hidden[:, 0], weight, bias))
    dy = randn(4, 24)
    torch.library.opcheck(pooler_grad_hidden_op, (dy, hidden, weight, y, "tanh"))
    for need_w, need_b in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(pooler_grad_params_op, (dy, hidden, y, "tanh", 24, need_w, need_b))
    h, w, b = leaves(hidden, weight, bias)
    torch.library.opcheck(pooler_op, (h, w, b, "tanh", "triton"))
    torch.library.opcheck(pooler_op, (h, w, None, "gelu", "triton"))


def test_training_step_traces_with_torch_compile():
    # aot_eager: AOTAutograd traces forward and backward through the fake impls (no graph break
    # with fullgraph=True) and then runs the real kernels, so no GPU compiler is needed.
    hidden, weight, bias = make_inputs(5, 2, 32, 24, torch.float32)
    dy = randn(5, 24)

    def step(h, w, b):
        return (fused_pooler(h, w, b, backend="triton") * dy).sum()

    h, w, b = leaves(hidden, weight, bias)
    torch.compile(step, backend="aot_eager", fullgraph=True)(h, w, b).backward()
    y = torch.tanh(F.linear(hidden[:, 0], weight, bias))
    for got, ref in zip((h.grad, w.grad, b.grad), grads64(dy, hidden, weight, bias, y, "tanh")):
        assert_close_rel(got, ref, torch.float32)
