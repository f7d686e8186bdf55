"""The one argument check shared by every op, the backend choice, and autocast's input casts.

``fused_pooler``, ``fused_classifier_head`` and ``masked_pool`` / ``l2_normalize`` all validate
here, so one bad input gets one message whichever op it reaches. The checks run on every inference
call: plain comparisons, with messages built only on failure.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels import ACTIVATIONS, interpreter_enabled
from .kernels.masked_pool import POOL_MODES

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# float64 is served by the torch path only (gradcheck, references); the kernels are for fp16/bf16/fp32
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
MASK_DTYPES = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)  # fmt: skip
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    """``t`` as a dense tensor of ``ndim`` dimensions in an op dtype, or a TypeError/ValueError."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.layout is not torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in REFERENCE_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16 or float32 (float64 on backend='torch'), "
            f"got {t.dtype}"
        )
    return t


def check_hidden_states(hidden_states: object) -> None:
    check_tensor("hidden_states", hidden_states, 3, "[batch, seq, hidden]")
    if hidden_states.shape[1] < 1:
        _no_tokens(hidden_states)


def _no_tokens(hidden_states: torch.Tensor) -> None:
    # an empty sequence has no first token (and no max); sentence-transformers errors too
    raise ValueError(
        f"hidden_states needs at least one token (seq >= 1), got shape {tuple(hidden_states.shape)}"
    )


def check_backend(backend: object) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def named(**tensors: Optional[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs that are not None, for error messages."""
    return [(k, v) for k, v in tensors.items() if v is not None]


def _check_linear(
    w_name: str, w: object, b_name: str, b: object, in_features: int, of: str
) -> None:
    # w: [out, in] as nn.Linear stores it, with in = in_features (the size of what it is applied
    # to, described by `of`); b: [out] or None
    check_tensor(w_name, w, 2, "[out_features, in_features] (nn.Linear layout)")
    if w.shape[1] != in_features:
        _in_features_mismatch(w_name, w, in_features, of)
    if b is not None:
        check_tensor(b_name, b, 1, "[out_features]")
        if b.shape[0] != w.shape[0]:
            _bias_mismatch(w_name, w, b_name, b)


def _in_features_mismatch(w_name: str, w: torch.Tensor, in_features: int, of: str) -> None:
    raise ValueError(
        f"{w_name}.shape[1] ({w.shape[1]}) must equal {of} ({in_features}); "
        f"{w_name} {tuple(w.shape)}"
    )


def _bias_mismatch(w_name: str, w: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    raise ValueError(
        f"{b_name} must have {w_name}.shape[0] = {w.shape[0]} elements, got {b.shape[0]}"
    )


def _check_same_dtype_and_device(hidden_states: torch.Tensor, **others) -> None:
    dtype, device = hidden_states.dtype, hidden_states.device
    for t in others.values():
        if t is not None and t.dtype != dtype:
            got = ", ".join(
                f"{k}={v.dtype}" for k, v in named(hidden_states=hidden_states, **others)
            )
            raise TypeError(
                f"{', '.join(['hidden_states', *others])} must share one dtype, got {got}"
            )
    for t in others.values():
        if t is not None and t.device != device:
            got = ", ".join(
                f"{k} on {v.device}" for k, v in named(hidden_states=hidden_states, **others)
            )
            raise ValueError(
                f"{', '.join(['hidden_states', *others])} must be on one device, got {got}"
            )


def validate_pooler_args(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
    backend: str,
) -> None:
    """``fused_pooler``'s arguments: hidden_states [B, S, H], weight [N, H], bias [N] or None."""
    # On every inference call: the same checks as check_hidden_states and _check_linear, written
    # out so that the common case is a few comparisons and no call beyond check_tensor's.
    check_tensor("hidden_states", hidden_states, 3, "[batch, seq, hidden]")
    if hidden_states.shape[1] < 1:
        _no_tokens(hidden_states)
    check_tensor("weight", weight, 2, "[out_features, in_features] (nn.Linear layout)")
    if weight.shape[1] != hidden_states.shape[2]:
        _in_features_mismatch("weight", weight, hidden_states.shape[2], _HIDDEN_SIZE)
    dtype, device = hidden_states.dtype, hidden_states.device
    if bias is not None:
        check_tensor("bias", bias, 1, "[out_features]")
        if bias.shape[0] != weight.shape[0]:
            _bias_mismatch("weight", weight, "bias", bias)
        if bias.dtype != dtype or bias.device != device:
            _check_same_dtype_and_device(hidden_states, weight=weight, bias=bias)
    if weight.dtype != dtype or weight.device != device:
        _check_same_dtype_and_device(hidden_states, weight=weight, bias=bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if backend not in BACKENDS:
        check_backend(backend)


_HIDDEN_SIZE = "the hidden size of hidden_states"


def validate_head_args(hidden_states, weight, bias, classifier_weight, classifier_bias,
                       activation, backend) -> None:  # fmt: skip
    """``fused_classifier_head``'s: the pooler's arguments, then a classifier [L, N] on its output."""
    validate_pooler_args(hidden_states, weight, bias, activation, backend)
    _check_linear("classifier_weight", classifier_weight, "classifier_bias", classifier_bias,
                  weight.shape[0], "weight.shape[0], the pooler's output size")  # fmt: skip
    _check_same_dtype_and_device(
        hidden_states, weight=weight, bias=bias, classifier_weight=classifier_weight,
        classifier_bias=classifier_bias,
    )  # fmt: skip


def validate_masked_pool_args(
    hidden_states: object, attention_mask: object, mode: object, normalize: object, backend: object
) -> None:
    """``masked_pool``'s: hidden_states [B, S, H], attention_mask [B, S] or None, a Pooling mode."""
    check_hidden_states(hidden_states)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(
                f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}"
            )
        if tuple(attention_mask.shape) != tuple(hidden_states.shape[:2]):
            raise ValueError(
                f"attention_mask must be [batch, seq] = {tuple(hidden_states.shape[:2])}, "
                f"got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.dtype not in MASK_DTYPES:
            raise TypeError(
                f"attention_mask must be a bool, integer or float tensor, got {attention_mask.dtype}"
            )
        if attention_mask.device != hidden_states.device:
            raise ValueError(
                f"attention_mask is on {attention_mask.device}, hidden_states on {hidden_states.device}"
            )
    if not isinstance(mode, str) or mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    check_backend(backend)


def plain_tensors(hidden_states, weight, bias) -> bool:
    """True when none is a tensor subclass (whose meaning is its own dispatch, not its storage)."""
    return (
        type(hidden_states) in PLAIN_TENSOR_TYPES
        and type(weight) in PLAIN_TENSOR_TYPES
        and (bias is None or type(bias) in PLAIN_TENSOR_TYPES)
    )


# The GEMM kernels' dtypes (the pooler's, the classifier head's) under backend="auto" on a GPU:
# float32 is left to cuBLAS, which the H100 measured 2-5x faster than the pooler kernel's fp32 FMA
# loop (NOTES.md, "Known limits"); the head's fp32 tile is the same kind of loop. backend="triton"
# still runs them. The interpreter (CPU) runs every kernel dtype: it exists to test the kernels.
GEMM_AUTO_GPU_DTYPES = (torch.float16, torch.bfloat16)


def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype, gemm: bool = False
) -> str:
    """ "triton" or "torch" for these inputs; raises where the kernel cannot run them. ``gemm``:
    the op's kernel is a GEMM (the pooler, the classifier head), whose "auto" leaves float32 on a
    GPU to cuBLAS."""
    kernel_can_run = device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())
    if backend == "torch":
        return "torch"
    if backend == "auto":
        dtypes = GEMM_AUTO_GPU_DTYPES if gemm and device.type == "cuda" else KERNEL_DTYPES
        return "triton" if kernel_can_run and dtype in dtypes else "torch"
    if not kernel_can_run:
        raise ValueError(
            f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported; got tensors on {device}"
        )
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"backend='triton' runs float16, bfloat16 and float32, got {dtype}")
    return "triton"


def autocast_inputs(hidden_states, weight, bias):
    """The inputs as eager ``nn.Linear`` sees them under ``torch.autocast``, else unchanged.

    Autocast puts ``linear`` in its lower-precision list: every floating-point tensor on the
    autocast device type, except float64, is cast to the autocast dtype (fp16 or bf16); the
    activation then runs in that dtype. The cast is a differentiable ``.to()``, so gradients flow
    back to fp32 master weights as they do through autocast's own casts.
    """
    if not isinstance(hidden_states, torch.Tensor):
        return hidden_states, weight, bias  # the validator names the problem
    device_type = hidden_states.device.type
    if device_type not in AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return hidden_states, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    if isinstance(weight, torch.Tensor) and hidden_states.dim() == 3 and hidden_states.shape[1] > 1:
        # Only the first-token rows are read: cast those ([B, 1, H], a view sliced first), never
        # the whole [B, S, H] tensor - nn.Linear under autocast casts only its [B, H] input too.
        hidden_states = hidden_states[:, :1]

    def cast(t):
        eligible = (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and t.dtype != torch.float64
            and t.device.type == device_type
        )
        return t.to(dtype) if eligible else t

    return cast(hidden_states), cast(weight), cast(bias)


# Device types with an autocast mode; asking is_autocast_enabled about any other raises.
AUTOCAST_DEVICE_TYPES = frozenset(
    t for t in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia") if torch.amp.is_autocast_available(t)
)
