"""Instance patching: swap every pooler of the ``BertPooler`` form in a model for ``FastBertPooler``.

A module is swapped only when we can show it computes what the kernel computes:
  * its class's ``forward`` compiles to the same bytecode as ``BertPooler.forward`` (take row 0,
    ``self.dense``, ``self.activation``, return) - names, comments and annotations may differ, the
    computation may not;
  * ``dense`` is an ``nn.Linear`` and ``activation`` is a module the kernel reproduces.
Anything else is left alone. Nothing process-wide is touched: only the given model's tree changes.
"""

from __future__ import annotations

from types import CodeType
from typing import Optional

from torch import nn

from .activation_modules import activation_name
from .module import FastBertPooler

# The original module is kept on the fast one (outside _modules, so it adds no state_dict keys).
_ORIGINAL = "_bertpool_original"


def _template_forward(self, hidden_states):
    # The BertPooler computation; compared by bytecode, so this must stay exactly this code.
    first_token_tensor = hidden_states[:, 0]
    pooled_output = self.dense(first_token_tensor)
    pooled_output = self.activation(pooled_output)
    return pooled_output


def _code_key(code: CodeType) -> tuple:
    consts = tuple(c for c in code.co_consts if not isinstance(c, str))  # drop docstrings
    return (code.co_code, consts, code.co_names, code.co_argcount)


_TEMPLATE_KEYS = {_code_key(_template_forward.__code__)}


def _register_installed_bert_pooler() -> None:
    # The installed BertPooler is the canonical form; if a transformers release rewrites its forward
    # in an equivalent way, its bytecode becomes a second accepted template.
    try:
        from transformers.models.bert.modeling_bert import BertPooler
    except ImportError:
        return
    _TEMPLATE_KEYS.add(_code_key(BertPooler.forward.__code__))


_register_installed_bert_pooler()


def is_bert_pooler_form(module: nn.Module) -> bool:
    """True when ``module`` provably computes ``activation(dense(hidden_states[:, 0]))``."""
    if isinstance(module, FastBertPooler):
        return False
    forward = getattr(type(module), "forward", None)
    code: Optional[CodeType] = getattr(forward, "__code__", None)
    if code is None or _code_key(code) not in _TEMPLATE_KEYS:
        return False
    dense = getattr(module, "dense", None)
    act = getattr(module, "activation", None)
    return (
        isinstance(dense, nn.Linear)
        and isinstance(act, nn.Module)
        and activation_name(act) is not None
    )


def _replace_child(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def patch(model: nn.Module) -> int:
    """Replace, in place, every pooler of the ``BertPooler`` form in ``model``; return how many.

    The fast pooler shares the original's ``dense`` and ``activation``, so parameters, device,
    dtype and ``state_dict()`` are unchanged. Idempotent: a second call replaces nothing and
    returns 0. Undo with :func:`unpatch`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules() if name and is_bert_pooler_form(m)]
    for name, pooler in targets:
        fast = FastBertPooler.from_pooler(pooler)
        fast.__dict__[_ORIGINAL] = pooler
        _replace_child(model, name, fast)
    return len(targets)


def unpatch(model: nn.Module) -> int:
    """Put back the original pooler modules that :func:`patch` replaced; return how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if name and isinstance(m, FastBertPooler) and _ORIGINAL in m.__dict__
    ]
    for name, fast in targets:
        original = fast.__dict__.pop(_ORIGINAL)
        # Re-point the original at the current submodules: anything done to the model since the
        # patch (.to(), .half(), a new dense loaded in) is kept.
        original.dense = fast.dense
        original.activation = fast.activation
        original.train(fast.training)
        _replace_child(model, name, original)
    return len(targets)
