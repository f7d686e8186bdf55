"""Deprecated: these predicates live in :mod:`bertpool_fast.proof` (what a module computes)."""

import warnings

from .proof import activation_name, has_hooks, hf_activation_name, is_overridden, is_plain_linear

warnings.warn(
    "bertpool_fast.activation_modules is now part of bertpool_fast.proof",
    DeprecationWarning,
    stacklevel=2,
)
__all__ = ["activation_name", "has_hooks", "hf_activation_name", "is_overridden", "is_plain_linear"]
