"""The head fusion: classification heads of the ``RobertaClassificationHead`` form run one kernel.

``patch_heads(model)`` gives each such head (its forward compiles to the same bytecode as
transformers' ``RobertaClassificationHead.forward``: dense, tanh, out_proj on the first token,
dropout before each) an instance ``forward``, installed once, through
:mod:`bertpool_fast.install`. Every call proves itself again in a few comparisons: eval mode, no
gradient recorded, ``dense`` / ``out_proj`` plain ``nn.Linear`` and ``dropout`` a plain
``nn.Dropout`` (no hooks, module or global, no instance forward), a [B, S, H] input. Otherwise the
class's own forward runs, exactly. A head whose instance already has a ``forward``
(``model.forward = torch.compile(...)``) is left alone. State dicts never change. Under
``torch.autocast`` the head computes in the autocast dtype, as the eager head does.

``BertForSequenceClassification`` / ``BertForNextSentencePrediction`` are not fused here: their
pooler and classifier sit in different modules, and fusing them took a per-call deferral (the
pooler handing the encoder output on to the classifier through thread-local state, forwards
installed during the call, the model re-run on a miss). That mechanism was removed; their pooler
runs fused through the pooler swap and the classifier as ``nn.Linear`` (one launch more).
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn

from .head_op import fused_classifier_head
from .install import Change, changes_under, install, undo
from .proof import head_form, is_overridden, is_plain_linear

# Re-exported: fused_classifier_head lived here before the ops layer had its own module.
__all__ = ["fused_classifier_head", "patch_heads", "unpatch_heads"]

# In a patched head's __dict__ while the fusion is installed: the forward checks it on every call,
# so that ours, if wrapped by the user's own forward and then unpatched, runs the class forward.
_ACTIVE = "_bertpool_head"


def _plain_dropout(m: object) -> bool:
    # an nn.Dropout in eval mode is the identity
    return type(m) is nn.Dropout and not is_overridden(m)


def _fused_head_forward(self, features, *args, **kwargs):
    modules = self._modules
    dense, out_proj, dropout = modules.get("dense"), modules.get("out_proj"), modules.get("dropout")
    if (
        args
        or kwargs
        or not self.__dict__.get(_ACTIVE, False)
        or self.training
        or torch.is_grad_enabled()
        or not is_plain_linear(dense)
        or not is_plain_linear(out_proj)
        or not _plain_dropout(dropout)
        or dropout.training
        or not isinstance(features, torch.Tensor)
        or features.dim() != 3
    ):
        return type(self).forward(self, features, *args, **kwargs)
    return fused_classifier_head(
        features, dense.weight, dense.bias, out_proj.weight, out_proj.bias, activation="tanh"
    )


def fuse_heads(model: nn.Module) -> list[Change]:
    """Install the fused forward on every ``RobertaClassificationHead``-form head; the changes
    made (two per head: the forward, and the flag that counts as the head)."""
    changes = []
    for module in model.modules():
        if "forward" in module.__dict__ or head_form(module) != "roberta_head":
            continue  # patched already, or the user's own instance forward: left alone
        modules = module._modules
        if not (
            is_plain_linear(modules.get("dense"))
            and is_plain_linear(modules.get("out_proj"))
            and _plain_dropout(modules.get("dropout"))
        ):
            continue
        forward = MethodType(_fused_head_forward, module)  # an instance attribute: no state change
        # the flag is what counts: once it is gone the head computes eagerly, even if the user has
        # wrapped our forward in one of theirs (which then stays, theirs)
        changes.append(install(module, Change("head", module, "forward", forward, counted=False)))
        changes.append(install(module, Change("head", module, _ACTIVE, True)))
    return changes


def patch_heads(model: nn.Module) -> int:
    """Fuse every fusable classification head in ``model``; return how many.

    The same as ``bertpool_fast.patch(model, poolers=False, heads=True)``. Idempotent; undo with
    :func:`unpatch_heads` or :func:`bertpool_fast.unpatch`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(c.counted for c in fuse_heads(model))


def unpatch_heads(model: nn.Module) -> int:
    """Remove what :func:`patch_heads` installed; return how many heads went back to eager."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return undo(model, changes_under(model, ["head"]))
