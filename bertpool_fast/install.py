"""The one install/undo mechanism every integration uses, and the registry of what was installed.

Every change bertpool_fast makes to a model is one attribute set, recorded as a :class:`Change`:
a child module swapped (the pooler swap), an instance ``forward`` set (the head fusion), an
instance's ``__class__`` switched (sentence-transformers), a class's ``forward`` replaced (the
class-level switch), or a flag in an instance ``__dict__``. A change is recorded on an owner
module (in its ``__dict__``, so no ``state_dict`` key appears and ``copy.deepcopy`` carries it);
the class-level switch, being process-wide, keeps its own list.

Undo puts back exactly what the change replaced, and only while the attribute still holds what was
installed: a value the user set over ours since is the user's and stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

from torch import nn

# In an owner module's __dict__: the list of Change records installed under it.
CHANGES_ATTR = "_bertpool_changes"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


# The attribute was not in the target's own __dict__ before: undo deletes it.
MISSING = _Missing()


def own_value(target: object, name: str) -> object:
    """What ``target`` itself holds under ``name`` (not inherited), or MISSING."""
    if name == "__class__":
        return type(target)
    if isinstance(target, nn.Module) and name in target._modules:
        return target._modules[name]
    return vars(target).get(name, MISSING)


@dataclass(eq=False)
class Change:
    """``setattr(target, name, new)``, with what it replaced; ``undo`` puts that back."""

    kind: str  # the integration: "pooler", "head", "sentence_transformers", "class"
    target: object
    name: str
    new: object
    old: object = MISSING
    counted: bool = True  # counts as one module switched (flags that go with a switch do not)
    # run just before undo (the pooler swap re-points the original at the current submodules)
    before_undo: Optional[Callable[[Change], None]] = None

    def apply(self) -> None:
        self.old = own_value(self.target, self.name)
        setattr(self.target, self.name, self.new)

    def is_current(self) -> bool:
        return own_value(self.target, self.name) is self.new

    def undo(self) -> bool:
        """Put back what was replaced; False (and nothing done) when ours was replaced since."""
        if not self.is_current():
            return False
        if self.before_undo is not None:
            self.before_undo(self)
        if self.old is MISSING:
            delattr(self.target, self.name)
        else:
            setattr(self.target, self.name, self.old)
        return True


def install(owner: nn.Module, change: Change) -> Change:
    """Apply ``change`` and record it on ``owner``."""
    change.apply()
    owner.__dict__.setdefault(CHANGES_ATTR, []).append(change)
    return change


def changes_under(model: nn.Module, kinds: Optional[Iterable[str]] = None) -> list[Change]:
    """Every change recorded on ``model`` or its submodules (of ``kinds``), in install order."""
    wanted = None if kinds is None else set(kinds)
    return [
        c
        for m in model.modules()
        for c in m.__dict__.get(CHANGES_ATTR, ())
        if wanted is None or c.kind in wanted
    ]


def undo(model: nn.Module, changes: Iterable[Change]) -> int:
    """Undo ``changes`` (recorded under ``model``), last installed first; return how many counted.

    Each is removed from the registry whether or not it could be undone: a change the user has
    overridden since is theirs to keep.
    """
    changes = list(changes)
    owners = {id(c): m for m in model.modules() for c in m.__dict__.get(CHANGES_ATTR, ())}
    count = 0
    for change in reversed(changes):
        if change.undo() and change.counted:
            count += 1
        owner = owners.get(id(change))
        if owner is not None:
            recorded = owner.__dict__[CHANGES_ATTR]
            recorded.remove(change)
            if not recorded:
                del owner.__dict__[CHANGES_ATTR]
    return count
