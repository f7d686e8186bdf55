"""The public functional op ``fused_pooler``: validation, backend choice, custom op, autograd.

Inference calls (no gradient needed, not being traced by torch.compile) go straight to the kernel
launcher: the ``torch.library`` dispatch costs several microseconds per call, which is as much as
the kernel itself at small batch. Everything else goes through the registered custom op, which is
what lets ``torch.compile(fullgraph=True)`` trace it and autograd differentiate it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels import ACTIVATIONS, interpreter_enabled, pooler_fwd
from .reference import pooler_backward_reference, pooler_reference

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# float64 is served by the torch path only (gradcheck, references); the kernels are for fp16/bf16/fp32
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)


def _check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in REFERENCE_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16 or float32 (float64 on backend='torch'), "
            f"got {t.dtype}"
        )
    return t


def validate_pooler_args(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    backend: str,
) -> None:
    _check_tensor("hidden_states", hidden_states, 3, "[batch, seq, hidden]")
    _check_tensor("weight", weight, 2, "[out_features, in_features] (nn.Linear layout)")
    if hidden_states.shape[1] < 1:
        raise ValueError(
            f"hidden_states needs at least one token (seq >= 1), got shape {tuple(hidden_states.shape)}"
        )
    if weight.shape[1] != hidden_states.shape[2]:
        raise ValueError(
            f"weight.shape[1] ({weight.shape[1]}) must equal the hidden size of hidden_states "
            f"({hidden_states.shape[2]}); hidden_states {tuple(hidden_states.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    tensors = {"hidden_states": hidden_states, "weight": weight}
    if bias is not None:
        _check_tensor("bias", bias, 1, "[out_features]")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias must have weight.shape[0] = {weight.shape[0]} elements, got {bias.shape[0]}"
            )
        tensors["bias"] = bias
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) > 1:
        got = ", ".join(f"{k}={v.dtype}" for k, v in tensors.items())
        raise TypeError(f"hidden_states, weight and bias must share one dtype, got {got}")
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        got = ", ".join(f"{k} on {v.device}" for k, v in tensors.items())
        raise ValueError(f"hidden_states, weight and bias must be on one device, got {got}")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """"triton" or "torch" for these inputs; raises where the kernel cannot run them."""
    kernel_can_run = device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if kernel_can_run and dtype in KERNEL_DTYPES else "torch"
    if not kernel_can_run:
        raise ValueError(
            f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported; got tensors on {device}"
        )
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"backend='triton' runs float16, bfloat16 and float32, got {dtype}")
    return "triton"


def _forward(x_cls, weight, bias, activation: str, backend: str) -> torch.Tensor:
    if backend == "triton":
        return pooler_fwd(x_cls, weight, bias, activation)
    return pooler_reference(x_cls, weight, bias, activation)


@torch.library.custom_op("bertpool_fast::pooler", mutates_args=())
def pooler_op(
    x_cls: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    backend: str,
) -> torch.Tensor:
    """act(x_cls @ weight.T + bias); x_cls may be any strided [M, K] view."""
    return _forward(x_cls, weight, bias, activation, backend)


@pooler_op.register_fake
def _pooler_fake(x_cls, weight, bias, activation, backend):
    return x_cls.new_empty((x_cls.shape[0], weight.shape[0]))


def _pooler_setup_context(ctx, inputs, output):
    x_cls, weight, bias, activation, _backend = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    # y is saved rather than z: tanh' = 1 - y^2 needs nothing else
    ctx.save_for_backward(x_cls, weight, bias, output)


def _pooler_backward(ctx, grad_out):
    x_cls, weight, bias, y = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = pooler_backward_reference(
        grad_out, x_cls, weight, bias, y, ctx.activation, (need_x, need_w, need_b and ctx.has_bias)
    )
    return dx, dw, db, None, None


pooler_op.register_autograd(_pooler_backward, setup_context=_pooler_setup_context)


def fused_pooler(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    activation: str = "tanh",
    backend: str = "auto",
) -> torch.Tensor:
    """``act(hidden_states[:, 0] @ weight.T + bias)`` in one fused kernel launch.

    hidden_states: [B, S, H_in], any strides (the first-token rows are read in place, never copied).
    weight: [H_out, H_in] (``nn.Linear`` layout). bias: [H_out] or None.
    activation: one of ``"tanh"`` (BertPooler), ``"gelu"``, ``"gelu_tanh"``, ``"relu"``,
    ``"identity"``; applied to the fp32 accumulator.
    backend: ``"auto"`` runs the Triton kernel on CUDA tensors (and on CPU tensors when
    ``TRITON_INTERPRET=1``), the torch path otherwise; ``"triton"`` always runs the kernel or
    raises; ``"torch"`` is the plain-PyTorch reference.
    Returns [B, H_out] in the input dtype.
    """
    validate_pooler_args(hidden_states, weight, bias, activation, backend)
    chosen = resolve_backend(backend, hidden_states.device, hidden_states.dtype)
    x_cls = hidden_states[:, 0]  # a strided view: no copy
    needs_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
    )
    if needs_grad or torch.compiler.is_compiling():
        return pooler_op(x_cls, weight, bias, activation, chosen)
    return _forward(x_cls, weight, bias, activation, chosen)
