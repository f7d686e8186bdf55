"""The plain-PyTorch reference: what every kernel computes, written once.

The CPU fallback (``backend="torch"``), the reference backward and the tests all use these, so a
kernel is always compared against one definition of the op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": torch.relu,
    "identity": lambda x: x,
}


def apply_activation_torch(z: torch.Tensor, activation: str) -> torch.Tensor:
    return ACTIVATION_FNS[activation](z)


def pooler_reference(
    x_cls: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str
) -> torch.Tensor:
    """``act(x_cls @ weight.T + bias)`` in the input dtype, exactly as eager ``BertPooler`` does."""
    return apply_activation_torch(F.linear(x_cls, weight, bias), activation)


def activation_grad_reference(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    preactivation: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """dL/dz in fp32 (fp64 for fp64 inputs) from dL/dy and the saved output y = act(z).

    tanh, relu and identity need only y; the GELUs need z, recomputed by ``preactivation()``.
    (``kernels/activations.py``'s ``activation_grad`` is the in-kernel one, for tanh, relu and
    identity only.)
    """
    acc_dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    dy = grad_out.to(acc_dtype)
    if activation == "tanh":
        yf = y.to(acc_dtype)
        return dy * (1.0 - yf * yf)
    if activation == "identity":
        return dy
    if activation == "relu":
        return dy * (y > 0).to(acc_dtype)
    # The derivatives written out (the formulas of torch's gelu_backward) rather than taken with
    # torch.autograd.grad on a detached z: plain differentiable torch, so double backward and
    # gradgradcheck see through them.
    z = preactivation().to(acc_dtype)
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * 0.7071067811865476))
        pdf = torch.exp(-0.5 * z * z) * 0.3989422804014327  # 1 / sqrt(2 pi)
        return dy * (cdf + z * pdf)
    if activation == "gelu_tanh":
        k0, k1 = 0.7978845608028654, 0.044715  # sqrt(2 / pi)
        t = torch.tanh(k0 * (z + k1 * z * z * z))
        return dy * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * k0 * (1.0 + 3.0 * k1 * z * z))
    raise ValueError(f"no derivative for activation {activation!r}")


def classifier_head_reference(x_cls, w1, b1, w2, b2, activation: str) -> torch.Tensor:
    """Eager: pooled in the input dtype (rounded, as BertPooler stores it), then the classifier."""
    pooled = apply_activation_torch(F.linear(x_cls, w1, b1), activation)
    return F.linear(pooled, w2, b2)


def pooler_backward_reference(
    grad_out: torch.Tensor,
    x_cls: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    y: torch.Tensor,
    activation: str,
    needs_input_grad: tuple[bool, bool, bool],
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``pooler_reference`` w.r.t. (x_cls, weight, bias), each None when not needed."""
    dz = activation_grad_reference(
        grad_out, y, activation, lambda: F.linear(_acc(x_cls), _acc(weight), _acc(bias))
    )
    need_x, need_w, need_b = needs_input_grad
    dx = (dz @ weight.to(dz.dtype)).to(x_cls.dtype) if need_x else None
    dw = (dz.t() @ x_cls.to(dz.dtype)).to(weight.dtype) if need_w else None
    db = dz.sum(0).to(bias.dtype) if need_b and bias is not None else None
    return dx, dw, db


def _acc(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # z for the GELU derivative in the accumulation dtype: fp32, or fp64 for fp64 inputs (an fp32 z
    # would cap gradcheck's float64 comparison at fp32 accuracy)
    if t is None:
        return None
    return t if t.dtype == torch.float64 else t.float()


def __getattr__(name: str):
    # activation_grad was renamed: kernels/activations.py has an activation_grad of its own
    if name == "activation_grad":
        warnings.warn(
            "bertpool_fast.reference.activation_grad is now activation_grad_reference",
            DeprecationWarning,
            stacklevel=2,
        )
        return activation_grad_reference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
