"""torch.autocast: the fused pooler casts and returns what eager nn.Linear + activation does.

Eager autocast puts ``linear`` in its lower-precision list (floating inputs other than float64 go
to the autocast dtype) and runs tanh in whatever dtype it gets; gradients flow back through the
casts to the fp32 parameters. The fused path must match in dtype, value and gradient, on the
inference shortcut (no grad) and on the custom-op path (grad) alike.
"""

import pytest
import torch
import torch.nn.functional as F

from bertpool_fast import FastBertPooler, fused_pooler
from conftest import HAS_CUDA, KERNEL_DEVICE, assert_close_rel, randn

CPU_AUTOCAST = [torch.bfloat16, torch.float16]


def make_fp32(b=6, s=3, h_in=40, h_out=24, device=KERNEL_DEVICE):
    return (
        randn(b, s, h_in, device=device),
        randn(h_out, h_in, device=device, scale=h_in**-0.5),
        randn(h_out, device=device, scale=0.5),
    )


def eager_pooler(h, w, b):
    return torch.tanh(F.linear(h[:, 0], w, b))


def run(fn, device_type, dtype, tensors, dy=None):
    leaves = [t.detach().clone().requires_grad_(dy is not None) for t in tensors]
    with torch.autocast(device_type, dtype=dtype):
        if dy is None:
            with torch.no_grad():
                return fn(*leaves), None
        y = fn(*leaves)
    y.backward(dy)
    return y, [t.grad for t in leaves]


def check_against_eager(device_type, dtype, tensors):
    # inference shortcut
    y_fast, _ = run(fused_pooler, device_type, dtype, tensors)
    y_eager, _ = run(eager_pooler, device_type, dtype, tensors)
    assert y_fast.dtype == y_eager.dtype == dtype
    assert_close_rel(y_fast, y_eager, dtype, scale=2.0)  # both carry one rounding to dtype
    # training path: same dtype out, fp32 gradients on the fp32 leaves, equal to eager's
    dy = randn(*y_eager.shape, device=y_eager.device)
    y_fast, g_fast = run(fused_pooler, device_type, dtype, tensors, dy)
    y_eager, g_eager = run(eager_pooler, device_type, dtype, tensors, dy)
    assert y_fast.dtype == dtype
    for name, gf, ge, t in zip(("hidden_states", "weight", "bias"), g_fast, g_eager, tensors):
        assert gf.dtype == ge.dtype == t.dtype, name
        # each side rounds dZ and its result to the autocast dtype before the fp32 upcast
        assert_close_rel(gf, ge, dtype, scale=2.0)


@pytest.mark.parametrize("dtype", CPU_AUTOCAST, ids=["bf16", "fp16"])
def test_cpu_autocast_matches_eager_linear(dtype):
    check_against_eager("cpu", dtype, make_fp32(device="cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_matches_eager_linear(dtype):
    check_against_eager("cuda", dtype, make_fp32(16, 8, 768, 768, device="cuda"))


def test_autocast_on_the_kernel_path_runs_the_kernel_dtype():
    # The cast happens before backend selection, so under CPU autocast the Triton kernel runs in
    # bf16 (interpreter here) rather than the torch path in fp32.
    h, w, b = make_fp32(device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_pooler(h, w, b, backend="triton" if KERNEL_DEVICE == "cpu" else "torch")
    expected = eager_pooler(h.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double())
    assert y.dtype == torch.bfloat16
    assert_close_rel(y, expected, torch.bfloat16)


def test_autocast_unifies_mixed_input_dtypes():
    # fp16 activations with fp32 parameters raise without autocast; under it both become bf16.
    h, w, b = make_fp32(device="cpu")
    with pytest.raises(TypeError, match="share one dtype"):
        fused_pooler(h.half(), w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_pooler(h.half(), w, b)
        y_eager = eager_pooler(h.half(), w, b)
    assert y.dtype == y_eager.dtype == torch.bfloat16
    assert_close_rel(y, y_eager, torch.bfloat16, scale=2.0)


def test_float64_is_not_cast():
    h, w, b = (t.double() for t in make_fp32(device="cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_pooler(h, w, b)
        y_eager = eager_pooler(h, w, b)
    assert y.dtype == y_eager.dtype == torch.float64
    assert_close_rel(y, y_eager, torch.float64)


def test_disabled_autocast_region_casts_nothing():
    h, w, b = make_fp32(device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            y = fused_pooler(h, w, b)
    assert y.dtype == torch.float32
    assert_close_rel(y, eager_pooler(h.double(), w.double(), b.double()), torch.float32)


def test_backward_inside_autocast_region():
    # loss.backward() called inside the autocast block (common in CPU scripts): the backward must
    # not re-cast its fp32 reference GEMMs to bf16; gradients as eager's under the same pattern.
    h, w, b = make_fp32(device="cpu")
    dy = randn(6, 24, device="cpu")
    grads = []
    for fn in (fused_pooler, eager_pooler):
        leaves = [t.clone().requires_grad_() for t in (h, w, b)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn(*leaves).backward(dy.bfloat16())
        grads.append([t.grad for t in leaves])
    for gf, ge in zip(*grads):
        assert gf.dtype == torch.float32
        assert_close_rel(gf, ge, torch.bfloat16, scale=2.0)


def test_module_under_autocast_matches_bert_pooler():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertPooler

    eager = BertPooler(BertConfig(hidden_size=32))
    fast = FastBertPooler.from_pooler(eager)
    hidden = randn(5, 4, 32, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_fast, y_eager = fast(hidden), eager(hidden)
    assert y_fast.dtype == y_eager.dtype == torch.bfloat16
    assert_close_rel(y_fast, y_eager, torch.bfloat16, scale=2.0)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only build's behaviour")
def test_cuda_autocast_context_leaves_cpu_tensors_alone():
    # Autocast is per device type: a CUDA autocast region does not cast CPU tensors (eager neither).
    h, w, b = make_fp32(device="cpu")
    with pytest.warns(UserWarning):  # a CPU-only build warns that CUDA autocast is unavailable
        with torch.autocast("cuda", dtype=torch.float16):
            y = fused_pooler(h, w, b)
    assert y.dtype == torch.float32
