"""The plain-PyTorch reference: what every kernel computes, written once.

The CPU fallback (``backend="torch"``), the reference backward and the tests all use these, so a
kernel is always compared against one definition of the op.
"""

from __future__ import annotations

from typing import Callable, Optional

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


def activation_grad(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    preactivation: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """dL/dz in fp32 (fp64 for fp64 inputs) from dL/dy and the saved output y = act(z).

    tanh, relu and identity need only y; the GELUs need z, recomputed by ``preactivation()``.
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
    z = preactivation().to(acc_dtype).detach().requires_grad_(True)
    with torch.enable_grad():
        out = apply_activation_torch(z, activation)
        (dz,) = torch.autograd.grad(out, z, dy)
    return dz


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
    dz = activation_grad(
        grad_out, y, activation, lambda: F.linear(x_cls.float(), weight.float(), _float(bias))
    )
    need_x, need_w, need_b = needs_input_grad
    dx = (dz @ weight.to(dz.dtype)).to(x_cls.dtype) if need_x else None
    dw = (dz.t() @ x_cls.to(dz.dtype)).to(weight.dtype) if need_w else None
    db = dz.sum(0).to(bias.dtype) if need_b and bias is not None else None
    return dx, dw, db


def _float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()
