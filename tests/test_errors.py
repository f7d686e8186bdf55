"""Bad input raises ValueError/TypeError naming the argument, before anything reaches Triton."""

import re

import pytest
import torch

import bertpool_fast
from conftest import KERNEL_DEVICE


def good(dtype=torch.float32, device=KERNEL_DEVICE):
    return (
        torch.randn(2, 3, 16, device=device).to(dtype),
        torch.randn(8, 16, device=device).to(dtype),
        torch.randn(8, device=device).to(dtype),
    )


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        pytest.param(
            lambda h, w, b: (h[0], w, b), ValueError, "hidden_states must be 3-D", id="hidden-2d"
        ),
        pytest.param(
            lambda h, w, b: (h[None], w, b), ValueError, "hidden_states must be 3-D", id="hidden-4d"
        ),
        pytest.param(
            lambda h, w, b: (h, w[0], b), ValueError, "weight must be 2-D", id="weight-1d"
        ),
        pytest.param(
            lambda h, w, b: (h, w[:, :15], b), ValueError, "weight.shape[1] (15)", id="H-mismatch"
        ),
        pytest.param(lambda h, w, b: (h, w, b[:7]), ValueError, "bias must have", id="bias-length"),
        pytest.param(lambda h, w, b: (h, w, b[None]), ValueError, "bias must be 1-D", id="bias-2d"),
        pytest.param(lambda h, w, b: (h[:, :0], w, b), ValueError, "seq >= 1", id="empty-seq"),
        pytest.param(
            lambda h, w, b: (h.long(), w, b),
            TypeError,
            "hidden_states must be float16",
            id="int-hidden",
        ),
        pytest.param(
            lambda h, w, b: (h, w.int(), b), TypeError, "weight must be float16", id="int-weight"
        ),
        pytest.param(
            lambda h, w, b: (h, w, b.to(torch.int8)),
            TypeError,
            "bias must be float16",
            id="int-bias",
        ),
        pytest.param(
            lambda h, w, b: (h, w.half(), b), TypeError, "share one dtype", id="mixed-dtypes"
        ),
        pytest.param(
            lambda h, w, b: (h, w, b.bfloat16()), TypeError, "share one dtype", id="mixed-bias"
        ),
        pytest.param(
            lambda h, w, b: (h.numpy(), w, b),
            TypeError,
            "hidden_states must be a torch.Tensor",
            id="numpy",
        ),
        pytest.param(
            lambda h, w, b: (h, [[1.0]], b),
            TypeError,
            "weight must be a torch.Tensor",
            id="list-weight",
        ),
        pytest.param(lambda h, w, b: (h, w, b.to("meta")), ValueError, "one device", id="devices"),
    ],
)
def test_bad_tensor_arguments(mutate, exc, words):
    h, w, b = mutate(*good(device="cpu"))
    with pytest.raises(exc, match=re.escape(words)):
        bertpool_fast.fused_pooler(h, w, b)


def test_sparse_hidden_states():
    h, w, b = good(device="cpu")
    with pytest.raises(TypeError, match="hidden_states must be a dense"):
        bertpool_fast.fused_pooler(h.to_sparse(), w, b)


def test_batch_invariant_must_be_a_bool():
    with pytest.raises(TypeError, match="batch_invariant must be a bool"):
        bertpool_fast.fused_pooler(*good(), batch_invariant="no")


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        bertpool_fast.fused_pooler(*good(), activation="swish")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        bertpool_fast.fused_pooler(*good(), backend="cuda")


def test_triton_backend_rejects_float64():
    h, w, b = good(torch.float64)
    with pytest.raises(TypeError, match="backend='triton' runs float16, bfloat16 and float32"):
        bertpool_fast.fused_pooler(h, w, b, backend="triton")


def test_triton_backend_on_meta_device_is_a_clear_error():
    # Tensors on a device the kernel cannot run on: a ValueError, not a crash inside Triton.
    h, w, b = (t.to("meta") for t in good(device="cpu"))
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        bertpool_fast.fused_pooler(h, w, b, backend="triton")


def test_fast_pooler_needs_hidden_size():
    with pytest.raises(ValueError, match="hidden_size"):
        bertpool_fast.FastBertPooler(object())


def test_from_pooler_rejects_unknown_module():
    with pytest.raises(TypeError, match="from_pooler needs a module with `dense`"):
        bertpool_fast.FastBertPooler.from_pooler(torch.nn.Linear(4, 4))


def test_patch_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        bertpool_fast.patch("bert-base-uncased")


def test_the_parity_check_itself_fails_on_nan_mismatch():
    # The tests' rel_error must never let a NaN through, either way round.
    from conftest import rel_error

    clean = torch.tensor([1.0, 2.0, 3.0])
    with_nan = torch.tensor([1.0, float("nan"), 3.0])
    assert rel_error(with_nan, clean) == float("inf")  # a NaN the kernel produced
    assert rel_error(clean, with_nan) == float("inf")  # a NaN the kernel swallowed
    assert rel_error(with_nan, with_nan) == 0.0


class _TaggedTensor(torch.Tensor):
    """A tensor subclass: its meaning is its dispatch's, so the kernel must not read its storage."""


def test_tensor_subclass_takes_the_torch_path_or_is_refused():
    h, w, b = good()
    tagged = w.as_subclass(_TaggedTensor)
    expected = torch.tanh(torch.nn.functional.linear(h[:, 0], w, b))
    out = bertpool_fast.fused_pooler(h, tagged, b)  # auto: the torch path, via the subclass
    assert torch.allclose(out.as_subclass(torch.Tensor), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="backend='triton' reads plain tensors only"):
        bertpool_fast.fused_pooler(h, tagged, b, backend="triton")
