"""The front door to instance patching: ``patch``, ``unpatch`` and the ``patched`` context manager.

Each integration is opt-in by its own argument and makes its changes through
:mod:`bertpool_fast.install`, which records them on the model:
  * ``poolers`` (default on): every provable first-token pooler swapped for a fast one
    (:mod:`bertpool_fast.pooler_swap`);
  * ``heads``: ``RobertaClassificationHead``-form heads run pooler + classifier in one kernel
    (:mod:`bertpool_fast.heads`);
  * ``sentence_transformers``: a ``SentenceTransformer``'s ``Pooling`` and a following
    ``Normalize`` run fused (:mod:`bertpool_fast.sentence_pooling`).
``unpatch`` undoes what was recorded, and nothing else. Nothing process-wide is touched here
(:mod:`bertpool_fast.class_patch` is the process-wide switch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .heads import fuse_heads
from .install import Change, changes_under, undo
from .pooler_swap import is_bert_pooler_form, refusal, swap_poolers
from .proof import FORMS, ORIGINAL_FORWARD_ATTR, PoolerForm, form_of_class
from .sentence_pooling import fuse_sentence_pooling

# Re-exported: the names this module has always offered (the proof now lives in bertpool_fast.proof).
__all__ = [
    "FORMS",
    "ORIGINAL_FORWARD_ATTR",
    "PoolerForm",
    "form_of_class",
    "is_bert_pooler_form",
    "patch",
    "patched",
    "refusal",
    "unpatch",
]


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _apply(
    model: nn.Module, poolers: bool, heads: bool, sentence_transformers: bool
) -> list[Change]:
    _check_model(model)
    for name, value in (
        ("poolers", poolers),
        ("heads", heads),
        ("sentence_transformers", sentence_transformers),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    changes = []
    if poolers:
        changes += swap_poolers(model)
    if heads:
        changes += fuse_heads(model)
    if sentence_transformers:
        changes += fuse_sentence_pooling(model)
    return changes


def patch(
    model: nn.Module,
    *,
    poolers: bool = True,
    heads: bool = False,
    sentence_transformers: bool = False,
) -> int:
    """Make, in place, the parts of ``model`` chosen by the arguments run fused; return how many
    modules were switched.

    ``poolers``: every provable first-token pooler becomes a ``FastBertPooler`` /
    ``FastContextPooler`` sharing the original's submodules, so parameters, device, dtype and
    ``state_dict()`` are unchanged. ``heads``: ``RobertaClassificationHead``-form heads fuse
    pooler and classifier (eval mode, no grad; see :mod:`bertpool_fast.heads`).
    ``sentence_transformers``: a ``SentenceTransformer``'s ``Pooling`` (and a following
    ``Normalize``) run fused (needs the sentence-transformers package).
    Idempotent: a second call switches nothing and returns 0. Undo with :func:`unpatch`.
    """
    changes = _apply(model, poolers, heads, sentence_transformers)
    return sum(c.counted for c in changes)


def unpatch(model: nn.Module) -> int:
    """Undo everything :func:`patch` (or ``patch_heads`` / ``patch_sentence_transformer``) did
    under ``model``; return how many modules went back."""
    _check_model(model)
    return undo(model, changes_under(model))


@contextlib.contextmanager
def patched(
    model: nn.Module,
    *,
    poolers: bool = True,
    heads: bool = False,
    sentence_transformers: bool = False,
) -> Iterator[nn.Module]:
    """``with bertpool_fast.patched(model): ...`` - :func:`patch` on entry, its undo on exit.

    Only what this ``patch`` did is undone on exit (an earlier patch of the same model stays).
    """
    changes = _apply(model, poolers, heads, sentence_transformers)
    try:
        yield model
    finally:
        undo(model, changes)
