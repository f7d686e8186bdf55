"""The pooler swap: every provable first-token pooler in a model becomes a fast one, undoably.

Only the given model's tree changes, through :mod:`bertpool_fast.install` (one ``Change`` per
swap, recorded on the pooler's parent). The proof that a pooler may be swapped is
:mod:`bertpool_fast.proof`'s; the drop-in modules are :mod:`bertpool_fast.module`'s.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .install import Change, install
from .module import FAST_POOLERS, MAKE_FAST
from .proof import form_of_class, pooler_refusal


def refusal(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be swapped for a fused pooler, or None when it provably can."""
    if isinstance(module, FAST_POOLERS):
        return "already a fast pooler"
    return pooler_refusal(module)


def is_bert_pooler_form(module: nn.Module) -> bool:
    """True when ``module`` provably computes ``act(dense(hidden_states[:, 0]))`` (any form)."""
    return refusal(module) is None


def _keep_current_children(change: Change) -> None:
    # Re-point the original at the fast module's current submodules: anything done to the model
    # since the swap (.to(), .half(), a new dense assigned) is kept.
    fast, original = change.new, change.old
    for child in original._modules:
        if child in fast._modules:
            setattr(original, child, fast._modules[child])
    original.train(fast.training)


def swap_poolers(model: nn.Module) -> list[Change]:
    """Swap, in place, every provable first-token pooler under ``model``; the changes made.

    The fast pooler shares the original's submodules, so parameters, device, dtype and
    ``state_dict()`` are unchanged. A pooler already swapped is refused, so a second call makes
    no change.
    """
    targets = [(name, m) for name, m in model.named_modules() if name and refusal(m) is None]
    changes = []
    for name, pooler in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fast = MAKE_FAST[form_of_class(type(pooler)).name](pooler)
        change = Change("pooler", parent, child, fast, before_undo=_keep_current_children)
        changes.append(install(parent, change))
    return changes
