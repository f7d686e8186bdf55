"""Which submodules the kernels reproduce exactly: activations (by kernel name) and dense layers.

Membership is by exact class, never ``isinstance``: a subclass may override ``forward``. Modules
with forward hooks are refused too, since the fused path never calls them.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

from torch import nn
from torch.nn.modules import module as _torch_module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _hf_activations():
    try:
        from transformers import activations as hf
    except ImportError:  # transformers is optional for the functional op
        return None
    return hf


def has_hooks(module: nn.Module) -> bool:
    """True when calling ``module`` would run hooks that the fused kernel would skip."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
    )


def is_overridden(module: nn.Module) -> bool:
    """True when calling ``module`` runs something besides its class's ``forward``."""
    return "forward" in module.__dict__ or has_hooks(module)


def is_plain_linear(module: object) -> bool:
    """True when ``module(x)`` is exactly ``F.linear(x, module.weight, module.bias)``.

    ``nn.Linear`` under a parametrization (weight norm, ...) qualifies: its ``weight`` attribute
    computes the parametrized weight, which is what ``forward`` would use.
    """
    return (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward
        and not is_overridden(module)
    )


def _hf_activation_name(module: nn.Module) -> Optional[str]:
    hf = _hf_activations()
    if hf is None:
        return None
    cls = type(module)
    if cls is getattr(hf, "LinearActivation", None):
        return "identity"
    if cls is getattr(hf, "GELUActivation", None):
        # use_gelu_python=True picks its own erf formula: the same function as F.gelu, rounded
        # differently, well inside the kernel's tolerance. Any other `act` is refused.
        act = getattr(module, "act", None)
        if act is nn.functional.gelu or getattr(act, "__func__", None) is cls._gelu_python:
            return "gelu"
        return None
    gelu_tanh = getattr(hf, "GELUTanh", None) or getattr(hf, "PytorchGELUTanh", None)
    if gelu_tanh is not None and cls is gelu_tanh:
        act = getattr(module, "act", None)
        is_torch_tanh_gelu = (
            isinstance(act, functools.partial)
            and act.func is nn.functional.gelu
            and act.keywords == {"approximate": "tanh"}
        )
        if is_torch_tanh_gelu or getattr(act, "__func__", None) is cls._gelu_tanh_python:
            return "gelu_tanh"
        return None
    if cls is getattr(hf, "NewGELUActivation", None):
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the kernel's gelu_tanh formula
        return "gelu_tanh"
    if cls is getattr(hf, "AccurateGELUActivation", None):
        # the same formula with sqrt(2/pi) kept on the instance; refuse it if that was changed
        if getattr(module, "precomputed_constant", None) == _SQRT_2_OVER_PI:
            return "gelu_tanh"
        return None
    if cls is getattr(hf, "FastGELUActivation", None):
        # x * 0.7978845608 * (1 + 0.044715 x^2): the same formula with sqrt(2/pi) written to 10
        # digits, a relative difference of 4e-12, far below one fp32 rounding (6e-8)
        return "gelu_tanh"
    return None


def activation_name(module: nn.Module) -> Optional[str]:
    """The kernel activation equal to ``module``'s forward, or None when there is none."""
    if not isinstance(module, nn.Module) or is_overridden(module):
        return None
    return _activation_kind(module)


def _activation_kind(module: nn.Module) -> Optional[str]:
    cls = type(module)
    if cls is nn.Tanh:
        return "tanh"
    if cls is nn.ReLU:
        # inplace=True writes into the dense output, a fresh tensor either way: same values
        return "relu"
    if cls is nn.Identity:
        return "identity"
    if cls is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return _hf_activation_name(module)


def hf_activation_name(act: object) -> Optional[str]:
    """The kernel activation for ``ACT2FN[act]`` (a config string such as ``"gelu"``), or None."""
    if not isinstance(act, str):
        return None
    # The module ACT2FN builds inside forward would run global hooks; those are checked per call.
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return None
    return _config_activation_kind(act)


@functools.cache
def _config_activation_kind(act: str) -> Optional[str]:
    hf = _hf_activations()
    if hf is None or act not in hf.ACT2FN:
        return None
    return _activation_kind(hf.ACT2FN[act])
