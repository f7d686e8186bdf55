"""The public functional op ``fused_pooler``: validation, backend choice, custom op, autograd.

Inference calls (no gradient needed, not being traced by torch.compile) go straight to the kernel
launcher: the ``torch.library`` dispatch costs several microseconds per call, which is as much as
the kernel itself at small batch. Everything else goes through the registered custom op, which is
what lets ``torch.compile(fullgraph=True)`` trace it and autograd differentiate it.

Training: with backend "triton" the backward is two more custom ops around the Triton backward
kernels (kernels/pooler_bwd.py), opaque to torch.compile like the forward; with backend "torch" it
is the plain-PyTorch reference, itself differentiable (double backward, gradgradcheck).
Under ``torch.autocast`` the inputs are cast first, exactly as eager ``nn.Linear`` casts them.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F

from .kernels import (
    ACTIVATIONS,
    BWD_ACTIVATIONS,
    interpreter_enabled,
    plan_pooler_fwd,
    pooler_bwd_dw,
    pooler_bwd_dx,
    pooler_fwd,
)
from .kernels import pooler as _pooler
from .kernels.pooler import device_arch, eager_measured_faster, square_width
from .reference import activation_grad_reference, pooler_backward_reference, pooler_reference
from .validation import (
    AUTOCAST_DEVICE_TYPES,
    BACKENDS,
    GEMM_AUTO_GPU_DTYPES,
    KERNEL_DTYPES,
    PLAIN_TENSOR_TYPES,
    REFERENCE_DTYPES,
    autocast_inputs,
    named,
    plain_tensors,
    resolve_backend,
    validate_pooler_args,
)

# Re-exported: the ops layer's public vocabulary (bertpool_fast.ops.BACKENDS has always been here).
__all__ = [
    "BACKENDS",
    "KERNEL_DTYPES",
    "REFERENCE_DTYPES",
    "fused_pooler",
    "pooler_grad_hidden_op",
    "pooler_grad_params_op",
    "pooler_op",
    "resolve_backend",
    "validate_pooler_args",
]


def _forward(
    hidden_states, weight, bias, activation: str, backend: str, batch_invariant: bool = False
) -> torch.Tensor:
    # hidden_states: [B, S, H] (position 0 is read) or [M, K] rows
    if backend == "triton":
        return pooler_fwd(hidden_states, weight, bias, activation, batch_invariant=batch_invariant)
    return pooler_reference(_first_rows(hidden_states), weight, bias, activation)


# The op takes the whole hidden_states, not the hidden_states[:, 0] view, so that its backward can
# return the [B, S, H] gradient itself: the dX kernel writes its rows straight into row 0 of one
# zeroed buffer. Through a view, autograd's SelectBackward would allocate that same zeroed buffer
# and copy a separate [B, H] dX into it: one more allocation, one more launch, 2 * B * H more
# elements moved. The zeros themselves cannot be avoided: autograd needs a dense gradient of the
# input's shape, dtype, device and layout (an expanded or sparse tensor cannot have row 0 non-zero
# and the rest zero, and the producer's backward - LayerNorm in BERT - reads it densely anyway).
# A 2-D [M, K] input is also accepted and taken as the first-token rows themselves.
@torch.library.custom_op("bertpool_fast::pooler", mutates_args=())
def pooler_op(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    backend: str,
    batch_invariant: bool = False,
) -> torch.Tensor:
    """act(hidden_states[:, 0] @ weight.T + bias); the first-token rows are read in place."""
    return _forward(hidden_states, weight, bias, activation, backend, batch_invariant)


@pooler_op.register_fake
def _pooler_fake(hidden_states, weight, bias, activation, backend, batch_invariant=False):
    return hidden_states.new_empty((hidden_states.shape[0], weight.shape[0]))


@torch.library.custom_op("bertpool_fast::pooler_grad_hidden", mutates_args=())
def pooler_grad_hidden_op(
    grad_out: torch.Tensor, hidden_states: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
    activation: str,
) -> torch.Tensor:  # fmt: skip
    """d loss / d hidden_states: zeros, with dZ @ weight written by the kernel into row 0.

    ``activation`` is one the kernel differentiates from y (tanh, relu, identity); for the GELUs
    the caller passes dZ as ``grad_out`` with activation "identity".
    """
    grad = hidden_states.new_zeros(hidden_states.shape)
    pooler_bwd_dx(grad_out, y, weight, activation, out=_first_rows(grad))
    return grad


@pooler_grad_hidden_op.register_fake
def _grad_hidden_fake(grad_out, hidden_states, weight, y, activation):
    return hidden_states.new_empty(hidden_states.shape)


@torch.library.custom_op("bertpool_fast::pooler_grad_params", mutates_args=())
def pooler_grad_params_op(
    grad_out: torch.Tensor, hidden_states: torch.Tensor, y: torch.Tensor, activation: str,
    out_features: int, need_weight: bool, need_bias: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """[dW] + [db], each present only when asked for: both from one pass over dZ."""
    dw, db = pooler_bwd_dw(
        grad_out, y, _first_rows(hidden_states), activation, need_weight, need_bias, out_features
    )
    return [t for t in (dw, db) if t is not None]


@pooler_grad_params_op.register_fake
def _grad_params_fake(grad_out, hidden_states, y, activation, out_features, need_weight, need_bias):
    k = hidden_states.shape[-1]
    shapes = [(out_features, k)] * need_weight + [(out_features,)] * need_bias
    return [hidden_states.new_empty(shape) for shape in shapes]


def _first_rows(hidden_states: torch.Tensor) -> torch.Tensor:
    # [B, S, H] -> the strided [B, H] view of position 0; [M, K] is taken as those rows already
    return hidden_states[:, 0] if hidden_states.dim() == 3 else hidden_states


def _pooler_setup_context(ctx, inputs, output):
    hidden_states, weight, bias, activation, backend = inputs[:5]
    ctx.activation = activation
    ctx.backend = backend
    # y is saved rather than z: tanh' = 1 - y^2 needs nothing else. hidden_states costs no memory
    # of its own: the x_cls view eager nn.Linear saves keeps the same storage alive.
    ctx.save_for_backward(hidden_states, weight, bias, output)


def _pooler_backward(ctx, grad_out):
    hidden_states, weight, bias, y = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and bias is not None
    # A loss.backward() made inside an autocast region must not re-cast anything: the gradients
    # are computed in the dtypes the forward ran in, as eager autograd does.
    with torch.autocast(hidden_states.device.type, enabled=False):
        if ctx.backend == "triton":
            dh, dw, db = _backward_triton(
                grad_out, hidden_states, weight, bias, y, ctx.activation, need_h, need_w, need_b
            )
        else:
            dx, dw, db = pooler_backward_reference(
                grad_out, _first_rows(hidden_states), weight, bias, y, ctx.activation,
                (need_h, need_w, need_b),
            )  # fmt: skip
            # select_scatter rather than an in-place write: stays differentiable (double backward)
            dh = dx
            if dx is not None and hidden_states.dim() == 3:
                dh = torch.select_scatter(hidden_states.new_zeros(hidden_states.shape), dx, 1, 0)
    return dh, dw, db, None, None, None  # no gradient for activation, backend, batch_invariant


def _backward_triton(grad_out, hidden_states, weight, bias, y, activation, need_h, need_w, need_b):
    # batch_invariant is a forward property and changes nothing here: dW and db are reductions
    # over the batch by definition; the dX tiles reduce over N in block_n steps, a single value
    # per dtype, but that is not promised bitwise across batch sizes the way the forward is.
    if activation not in BWD_ACTIVATIONS:
        # The GELUs' derivative needs z, which is not saved: recompute z (one fp32 GEMM) and form
        # dZ [B, N] in torch; the Triton GEMMs then run on dZ as the "identity" activation.
        x_cls = _first_rows(hidden_states)

        def preactivation():
            b = None if bias is None else bias.float()
            return F.linear(x_cls.float(), weight.float(), b)

        grad_out = activation_grad_reference(grad_out, y, activation, preactivation)
        activation = "identity"
    dh = dw = db = None
    if need_h:
        dh = pooler_grad_hidden_op(grad_out, hidden_states, weight, y, activation)
    if need_w or need_b:
        grads = pooler_grad_params_op(
            grad_out, hidden_states, y, activation, weight.shape[0], need_w, need_b
        )
        dw = grads[0] if need_w else None
        db = grads[-1] if need_b else None
    return dh, dw, db


pooler_op.register_autograd(_pooler_backward, setup_context=_pooler_setup_context)


def fused_pooler(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    activation: str = "tanh",
    backend: str = "auto",
    batch_invariant: bool = False,
) -> torch.Tensor:
    """``act(hidden_states[:, 0] @ weight.T + bias)`` in one fused kernel launch.

    hidden_states: [B, S, H_in], any strides (the first-token rows are read in place, never copied).
    weight: [H_out, H_in] (``nn.Linear`` layout). bias: [H_out] or None.
    activation: one of ``"tanh"`` (BertPooler), ``"gelu"``, ``"gelu_tanh"``, ``"relu"``,
    ``"identity"``; applied to the fp32 accumulator.
    backend: ``"auto"`` runs the Triton kernel on CUDA fp16/bf16 tensors (float32 ones go to
    cuBLAS and the activation, which the H100 measured 2-5x faster than the kernel's fp32 path;
    so do the batch sizes at which this GPU's tune measured that faster than every tile,
    ``EAGER_TABLES`` in kernels/pooler_tables.py) and on CPU tensors when ``TRITON_INTERPRET=1``,
    the torch path otherwise; ``"triton"`` always runs the kernel or raises; ``"torch"`` is the
    plain-PyTorch reference.
    batch_invariant: tiles chosen so each row's output is bitwise the same whatever the batch
    size (cuBLAS does not promise this); Triton kernel only, so ``backend="torch"`` raises.
    Returns [B, H_out] in the input dtype. Under ``torch.autocast`` the inputs are first cast as
    eager ``nn.Linear``'s are, so the result has the autocast dtype, as eager ``linear`` + ``tanh``.
    """
    if batch_invariant is False and (backend == "auto" or backend == "triton"):
        return pooler_inference(hidden_states, weight, bias, activation, backend)
    return _fused_pooler(hidden_states, weight, bias, activation, backend, batch_invariant)


def pooler_inference(hidden_states, weight, bias, activation, backend="auto") -> torch.Tensor:
    """``fused_pooler(hidden_states, weight, bias, activation=activation, backend=backend)``
    for ``backend`` "auto" or "triton", thin per call.

    The common inference call (plain tensors of a dtype the backend runs on the kernel, on one
    device the kernel runs on, the expected ranks and sizes, a known activation, no autocast, no
    gradient needed, not being traced) goes straight to the launcher after one run of comparisons
    that implies every check of the full path. Anything else takes the full path, whose messages
    and behaviour are the reference: this is only a shortcut to its own answer.
    """
    if not _is_compiling():
        plans = _PLANS.get(id(weight))
        if plans is not None and plans[0]() is weight and type(hidden_states) in _PLAIN:
            plan = plans[1].get(hidden_states.shape[0]) if hidden_states.dim() == 3 else None
            if (
                plan is not None
                # plans are per weight, not per backend: a float32 plan a "triton" call made is
                # not for "auto", which leaves float32 on a GPU to cuBLAS
                and plan.dtype in _kernel_dtypes(hidden_states, backend)
                and _plan_applies(plan, hidden_states, weight, bias, activation)
            ):
                try:
                    out = plan.run(hidden_states, weight, bias)
                except Exception:  # noqa: BLE001 - e.g. a .data swapped to a sparse tensor:
                    out = None  # not the planned call; the full path below says what it is
                if out is not None:
                    return out
    b = bias
    if (
        type(hidden_states) in _PLAIN
        and type(weight) in _PLAIN
        and (b is None or type(b) in _PLAIN)
        and not _is_compiling()
        and not _needs_grad(hidden_states, weight, b)
        and _on_kernel_device(hidden_states, weight, b)
        and hidden_states.dtype in _kernel_dtypes(hidden_states, backend)
        and weight.dtype is hidden_states.dtype
        and (b is None or b.dtype is hidden_states.dtype)
        and hidden_states.layout is _STRIDED
        and weight.layout is _STRIDED
        and (b is None or b.layout is _STRIDED)
        and hidden_states.dim() == 3
        and weight.dim() == 2
        and (b is None or b.dim() == 1)
        and hidden_states.shape[1] >= 1
        and weight.shape[1] == hidden_states.shape[2]
        and (b is None or b.shape[0] == weight.shape[0])
        and activation in ACTIVATIONS
    ):
        if _eager_faster(hidden_states, weight):
            if backend == "auto":
                return _forward(hidden_states, weight, bias, activation, "torch")
            return pooler_fwd(hidden_states, weight, bias, activation)  # no plan: "auto" takes them
        out = pooler_fwd(hidden_states, weight, bias, activation)
        _remember_plan(hidden_states, weight, bias, activation)
        return out
    return _fused_pooler(hidden_states, weight, bias, activation, backend, False)


def _eager_faster(hidden_states, weight) -> bool:
    # where this GPU's tune measured eager faster than every tile for these rows and this weight
    # (kernels.pooler.eager_measured_faster): backend "auto" runs eager there. Two attribute
    # reads first: with no such rows anywhere (no tune wrote one) the call costs nothing more.
    if not _pooler.POOLER_EAGER_TABLES and not _pooler.POOLER_EAGER_WIDTH_TABLES:
        return False
    return eager_measured_faster(
        hidden_states.shape[0],
        hidden_states.dtype,
        device_arch(hidden_states.device),
        square_width(weight.shape[0], weight.shape[1]),
    )


def _kernel_dtypes(hidden_states, backend) -> tuple:
    # the dtypes ``backend`` runs on the kernel for these (plain) rows: resolve_backend's rule
    if backend == "auto" and hidden_states.is_cuda:
        return GEMM_AUTO_GPU_DTYPES
    return KERNEL_DTYPES


def _plan_applies(plan, hidden_states, weight, bias, activation) -> bool:
    # pooler_inference's conditions that a plan does not check itself (it compares the launch's
    # arguments: dtypes, shapes, strides, addresses, the device)
    return (
        activation == plan.activation
        and hidden_states.layout is _STRIDED
        and (bias is None or (type(bias) in _PLAIN and bias.layout is _STRIDED))
        and weight.layout is _STRIDED
        and not _needs_grad(hidden_states, weight, bias)
        and not _is_autocast_enabled(plan.device_type)
    )


def _needs_grad(hidden_states, weight, bias) -> bool:
    """Whether autograd must record this call (then it goes through the custom op)."""
    return _is_grad_enabled() and (
        hidden_states.requires_grad
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
    )


# Launches worked out once (kernels.pooler_plan.PoolerPlan) per weight tensor and batch size:
# id(weight) -> (weak reference to the weight, {M: plan}). Nothing holds the weight or bias alive;
# the entry goes with the weight. A serving loop sees a handful of batch sizes per weight; past
# _PLANS_PER_WEIGHT distinct ones the oldest are forgotten.
_PLANS: dict = {}
_PLANS_PER_WEIGHT = 64


def _remember_plan(hidden_states, weight, bias, activation) -> None:
    key = id(weight)
    entry = _PLANS.get(key)
    if entry is None or entry[0]() is not weight:

        def forget(ref, key=key):
            if _PLANS.get(key, (None,))[0] is ref:
                _PLANS.pop(key, None)

        try:
            entry = _PLANS[key] = (weakref.ref(weight, forget), {})
        except TypeError:  # not weakly referenceable: no plan
            return
    plan = plan_pooler_fwd(hidden_states, weight, bias, activation)
    if plan is None:
        return
    plans = entry[1]
    if len(plans) >= _PLANS_PER_WEIGHT:
        plans.pop(next(iter(plans)), None)
    plans[hidden_states.shape[0]] = plan


def _on_kernel_device(hidden_states, weight, bias) -> bool:
    # One CUDA device (get_device: its index, an int, no torch.device built), or the CPU under the
    # interpreter; and autocast off for that device type, so autocast_inputs would change nothing.
    if hidden_states.is_cuda:
        index = hidden_states.get_device()
        return (
            _CUDA_AUTOCAST_KNOWN
            and weight.is_cuda
            and weight.get_device() == index
            and (bias is None or (bias.is_cuda and bias.get_device() == index))
            and not _is_autocast_enabled("cuda")
        )
    return (
        _CPU_KERNEL
        and hidden_states.is_cpu
        and weight.is_cpu
        and (bias is None or bias.is_cpu)
        and not _is_autocast_enabled("cpu")
    )


# Hoisted once: the names the shortcut reads on every call. torch.compile recognises
# is_compiling by identity, so the bound name traces as the original does.
_PLAIN = PLAIN_TENSOR_TYPES
_STRIDED = torch.strided
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
_is_autocast_enabled = torch.is_autocast_enabled
_CUDA_AUTOCAST_KNOWN = "cuda" in AUTOCAST_DEVICE_TYPES
_CPU_KERNEL = interpreter_enabled() and "cpu" in AUTOCAST_DEVICE_TYPES


def _fused_pooler(hidden_states, weight, bias, activation, backend, batch_invariant):
    # the full path: every check with its message, autocast, backend choice, custom op
    hidden_states, weight, bias = autocast_inputs(hidden_states, weight, bias)
    validate_pooler_args(hidden_states, weight, bias, activation, backend)
    if not isinstance(batch_invariant, bool):
        raise TypeError(f"batch_invariant must be a bool, got {batch_invariant!r}")
    # batch invariance is the kernel's property: "auto" keeps float32 on the kernel for it
    chosen = resolve_backend(
        backend, hidden_states.device, hidden_states.dtype, gemm=not batch_invariant
    )
    compiling = torch.compiler.is_compiling()
    if (chosen == "triton" and backend == "auto" and not batch_invariant and not compiling
            and _eager_faster(hidden_states, weight)):  # fmt: skip
        chosen = "torch"  # this GPU's tune measured eager faster at this M (traced: the kernel)
    if chosen == "triton" and not compiling and not plain_tensors(hidden_states, weight, bias):
        # A tensor subclass (a quantized weight, say) means what its own dispatch says, not what
        # its storage holds: the kernel must not read it. Under torch.compile the tracer's fake
        # tensors are subclasses too, hence the check only outside it.
        if backend == "triton":
            pairs = named(hidden_states=hidden_states, weight=weight, bias=bias)
            got = ", ".join(f"{k}: {type(v).__name__}" for k, v in pairs)
            raise TypeError(f"backend='triton' reads plain tensors only, got {got}")
        chosen = "torch"
    if batch_invariant and chosen != "triton":
        raise ValueError(
            "batch_invariant=True is a property of the Triton kernel's tiles; the torch path "
            f"(backend={backend!r} on {hidden_states.device}, {hidden_states.dtype}) cannot give it"
        )
    if _needs_grad(hidden_states, weight, bias) or compiling:
        return pooler_op(hidden_states, weight, bias, activation, chosen, batch_invariant)
    return _forward(hidden_states, weight, bias, activation, chosen, batch_invariant)
