"""The class-level switch: every first-token pooler class in transformers gets a fused ``forward``.

    bertpool_fast.apply_to_transformers()    # models built from now on (and already built) fuse
    model = AutoModel.from_pretrained(...)   # pipelines, sentence-transformers: no instance touched
    bertpool_fast.revert_transformers()      # every class's own forward put back, the same object

Instance patching (:func:`bertpool_fast.patch`) is the first way in and touches nothing
process-wide; this switch is for code that builds its models where you cannot reach them.

Only the ``forward`` in a pooler class's own ``__dict__`` is replaced, and only for classes whose
forward matches a template of :mod:`bertpool_fast.proof`. The new forward proves each call as
the fast modules do - plain ``nn.Linear``, a reproducible activation, no live dropout, no hooks on
the submodules - and otherwise calls the class's original forward, so an instance nobody could
swap still computes exactly what it did. The class, its ``__init__``, parameters, ``state_dict``
keys and ``isinstance`` are untouched.
"""

from __future__ import annotations

import importlib
from types import FunctionType

from .discovery import find_pooler_classes
from .install import Change
from .module import FUSED_FORWARDS
from .proof import ORIGINAL_FORWARD_ATTR, form_of_class

# The switch is process-wide, so its changes (one per class, the same Change records as every
# other integration) are kept here rather than on a model.
_SWITCHED: list[Change] = []


def _fused_forward_for(original: FunctionType, form_name: str) -> FunctionType:
    fused = FUSED_FORWARDS[form_name]

    def forward(self, hidden_states, *args, **kwargs):
        if not args and not kwargs:
            out = fused(self, hidden_states)
            if out is not None:
                return out
        return original(self, hidden_states, *args, **kwargs)

    forward.__name__ = original.__name__
    forward.__qualname__ = original.__qualname__
    forward.__doc__ = original.__doc__
    forward.__module__ = original.__module__
    setattr(forward, ORIGINAL_FORWARD_ATTR, original)
    return forward


def switched_classes() -> list[type]:
    """The classes whose forward the switch currently replaces."""
    return [change.target for change in _SWITCHED]


def apply_to_transformers() -> int:
    """Give every provable pooler class of the installed transformers a fused forward.

    Imports the modeling modules that define a ``*Pooler`` class (a few seconds, once). Returns how
    many classes were switched by this call; a second call switches none. Undo with
    :func:`revert_transformers`.
    """
    count = 0
    for candidate in find_pooler_classes():
        try:
            module = importlib.import_module(candidate.module)
        # any import error: an optional dependency of that model is missing, nothing to switch
        except Exception:  # noqa: BLE001, S112
            continue
        cls = getattr(module, candidate.name, None)
        original = None if cls is None else cls.__dict__.get("forward")
        if not isinstance(original, FunctionType) or hasattr(original, ORIGINAL_FORWARD_ATTR):
            continue  # switched already (ours carries the forward it replaced)
        form = form_of_class(cls)
        if form is None:
            continue
        change = Change("class", cls, "forward", _fused_forward_for(original, form.name))
        change.apply()
        _SWITCHED.append(change)
        count += 1
    return count


def revert_transformers() -> int:
    """Put back the exact forward of every class :func:`apply_to_transformers` switched."""
    count = 0
    while _SWITCHED:
        # a forward set on the class since is someone else's, and stays
        count += _SWITCHED.pop().undo()
    return count
