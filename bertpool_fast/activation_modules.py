"""Which activation ``nn.Module``s the kernels reproduce exactly, and under which kernel name."""

from __future__ import annotations

from typing import Optional

from torch import nn


def _transformers_activation_names() -> dict[type, str]:
    try:
        from transformers import activations as hf
    except ImportError:  # transformers is optional for the functional op
        return {}
    names: dict[type, str] = {}
    # NewGELUActivation and the PyTorch tanh-approximation wrapper compute the same formula:
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    for cls_name in ("NewGELUActivation", "PytorchGELUTanh", "GELUTanh"):
        cls = getattr(hf, cls_name, None)
        if cls is not None:
            names[cls] = "gelu_tanh"
    return names


def activation_name(module: nn.Module) -> Optional[str]:
    """The kernel activation equal to ``module``'s forward, or None when there is none."""
    cls = type(module)
    if cls is nn.Tanh:
        return "tanh"
    if cls is nn.ReLU:
        return "relu"
    if cls is nn.Identity:
        return "identity"
    if cls is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    hf_gelu = _hf_class("GELUActivation")
    if hf_gelu is not None and cls is hf_gelu:
        # GELUActivation(use_gelu_python=True) uses its own erf formula: same function, but not
        # bitwise what nn.functional.gelu gives, which is still within the kernel's tolerance.
        return "gelu"
    return _transformers_activation_names().get(cls)


def _hf_class(name: str) -> Optional[type]:
    try:
        from transformers import activations as hf
    except ImportError:
        return None
    return getattr(hf, name, None)
