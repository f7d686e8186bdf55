"""Instance patching: swap every first-token pooler in a model for a fused one.

A module is swapped only when we can show it computes what the kernel computes:
  * its class's ``forward`` compiles to the same bytecode as one of the templates below, and the
    globals that bytecode reads (``torch``, ``ACT2FN``) are the same objects - names of locals,
    comments, docstrings and annotations may differ, the computation may not;
  * its submodules are ones the kernel reproduces: ``dense`` a plain ``nn.Linear``, an activation
    with a kernel equivalent, no hooks (see :mod:`bertpool_fast.activation_modules`).
Anything else is left alone. Nothing process-wide is touched: only the given model's tree changes
(:mod:`bertpool_fast.class_patch` is the process-wide switch).
"""

from __future__ import annotations

import dis
import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Optional

import torch
from torch import nn

from .activation_modules import (
    activation_name,
    hf_activation_name,
    is_overridden,
    is_plain_linear,
)
from .module import (
    FastBertPooler,
    FastContextPooler,
    fused_bert_forward,
    fused_context_forward,
    fused_mobilebert_forward,
)

try:
    from transformers.activations import ACT2FN  # read by the ContextPooler template
except ImportError:  # without transformers that template can match nothing
    ACT2FN = None

# The original module is kept on the fast one (outside _modules, so it adds no state_dict keys).
_ORIGINAL = "_bertpool_original"
# Set by class_patch on a class's switched forward: the forward it replaced.
ORIGINAL_FORWARD_ATTR = "__bertpool_original_forward__"


# The templates are compared by bytecode, never called: each must stay exactly this code.
def _bert_template(self, hidden_states):
    first_token_tensor = hidden_states[:, 0]
    pooled_output = self.dense(first_token_tensor)
    pooled_output = self.activation(pooled_output)
    return pooled_output


def _context_template(self, hidden_states):
    context_token = hidden_states[:, 0]
    context_token = self.dropout(context_token)
    pooled_output = self.dense(context_token)
    pooled_output = ACT2FN[self.config.pooler_hidden_act](pooled_output)
    return pooled_output


def _mobilebert_template(self, hidden_states):
    first_token_tensor = hidden_states[:, 0]
    if not self.do_activate:
        return first_token_tensor
    else:
        pooled_output = self.dense(first_token_tensor)
        pooled_output = torch.tanh(pooled_output)
        return pooled_output


def _bert_proof(m: nn.Module) -> Optional[str]:
    if not is_plain_linear(getattr(m, "dense", None)):
        return "dense is not a plain nn.Linear (or has hooks)"
    act = getattr(m, "activation", None)
    if not isinstance(act, nn.Module) or activation_name(act) is None:
        return f"activation {type(act).__name__} has no kernel equivalent"
    return None


def _context_proof(m: nn.Module) -> Optional[str]:
    if not is_plain_linear(getattr(m, "dense", None)):
        return "dense is not a plain nn.Linear (or has hooks)"
    dropout = getattr(m, "dropout", None)
    if type(dropout) is not nn.Dropout or is_overridden(dropout):
        return f"dropout is {type(dropout).__name__}, not a plain nn.Dropout"
    act = getattr(getattr(m, "config", None), "pooler_hidden_act", None)
    if hf_activation_name(act) is None:
        return f"pooler_hidden_act {act!r} has no kernel equivalent"
    return None


def _mobilebert_proof(m: nn.Module) -> Optional[str]:
    if not getattr(m, "do_activate", False):
        return "classifier_activation=False: it returns a view of the first token, no compute"
    if not is_plain_linear(getattr(m, "dense", None)):
        return "dense is not a plain nn.Linear (or has hooks)"
    return None


@dataclass(frozen=True)
class PoolerForm:
    """One way transformers writes a first-token pooler, and how each piece of ours handles it."""

    name: str
    template: FunctionType
    # Why this instance cannot be swapped, or None when it provably can.
    refusal: Callable[[nn.Module], Optional[str]]
    # The drop-in module for an instance (instance patching).
    make_fast: Callable[[nn.Module], nn.Module]
    # The fused forward, or None for "run eagerly this call" (class-level switch, fast modules).
    fused_forward: Callable[[nn.Module, torch.Tensor], Optional[torch.Tensor]]


FORMS = (
    PoolerForm("bert", _bert_template, _bert_proof, FastBertPooler.from_pooler, fused_bert_forward),
    PoolerForm(
        "context",
        _context_template,
        _context_proof,
        FastContextPooler.from_pooler,
        fused_context_forward,
    ),
    PoolerForm(
        "mobilebert",
        _mobilebert_template,
        _mobilebert_proof,
        lambda m: FastBertPooler.from_parts(m.dense, nn.Tanh(), m.training),
        fused_mobilebert_forward,
    ),
)


def _code_key(func: FunctionType) -> tuple:
    """What a function computes, minus the cosmetic: docstring, line numbers, names of locals."""
    code: CodeType = func.__code__
    return (
        _instructions_key(code),
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & 0xFFFF,  # the high bits are __future__ flags of the defining file
        getattr(code, "co_exceptiontable", b""),
    )


_BY_INDEX = set(dis.haslocal) | set(dis.hasfree)


def _instructions_key(code: CodeType) -> tuple:
    # Instructions by what they use: constants, attribute and global names by value (a docstring is
    # a constant no instruction loads, so it drops out), locals by slot number (so renaming one
    # changes nothing). Positions and line numbers are not part of an instruction's identity.
    return tuple(
        (i.opname, i.arg if i.opcode in _BY_INDEX else _const_key(i.argval))
        for i in dis.get_instructions(code)
    )


def _const_key(c: object) -> object:
    if isinstance(c, CodeType):  # a nested function or comprehension: compare it the same way
        return _instructions_key(c)
    if isinstance(c, tuple):
        return tuple(_const_key(x) for x in c)
    return (type(c), c)


def _globals_read(code: CodeType) -> set[str]:
    return {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}


def _same_globals(func: FunctionType, template: FunctionType) -> bool:
    for name in _globals_read(template.__code__):
        expected = template.__globals__.get(name)
        if expected is None or func.__globals__.get(name) is not expected:
            return False
    return True


_TEMPLATE_KEYS = {_code_key(form.template): form for form in FORMS}


@functools.lru_cache(maxsize=1024)
def _form_of_function(forward: FunctionType) -> Optional[PoolerForm]:
    # patch() asks for every module of a model; the bytecode of one forward is keyed once
    return _TEMPLATE_KEYS.get(_code_key(forward))


def form_of_class(cls: type) -> Optional[PoolerForm]:
    """The form whose template ``cls.forward`` matches, or None; sees through the class switch."""
    forward = getattr(cls, "forward", None)
    forward = getattr(forward, ORIGINAL_FORWARD_ATTR, forward)
    if not isinstance(forward, FunctionType):
        return None
    form = _form_of_function(forward)
    if form is None or not _same_globals(forward, form.template):
        return None
    return form


def refusal(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be swapped for a fused pooler, or None when it provably can."""
    if isinstance(module, (FastBertPooler, FastContextPooler)):
        return "already a fast pooler"
    form = form_of_class(type(module))
    if form is None:
        return f"{type(module).__name__}.forward is not a first-token dense + activation form"
    if is_overridden(module):
        return "the module has hooks or an instance forward, which a swap would drop"
    return form.refusal(module)


def is_bert_pooler_form(module: nn.Module) -> bool:
    """True when ``module`` provably computes ``act(dense(hidden_states[:, 0]))`` (any form)."""
    return refusal(module) is None


def _replace_child(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def patch(model: nn.Module, *, heads: bool = False) -> int:
    """Replace, in place, every provable first-token pooler in ``model``; return how many.

    The fast pooler shares the original's submodules, so parameters, device, dtype and
    ``state_dict()`` are unchanged. Idempotent: a second call replaces nothing and returns 0.
    Undo with :func:`unpatch`.

    A sentence-transformers model also gets its ``Pooling`` (and a following ``Normalize``) fused
    (:func:`bertpool_fast.sentence_pooling.patch_sentence_transformer`). ``heads=True`` also
    fuses classification heads (pooler + classifier in one kernel, eval mode only; see
    :func:`bertpool_fast.heads.patch_heads`). Every module switched is counted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules() if name and refusal(m) is None]
    for name, pooler in targets:
        fast = form_of_class(type(pooler)).make_fast(pooler)
        fast.__dict__[_ORIGINAL] = pooler
        _replace_child(model, name, fast)
    return len(targets) + _patch_extras(model, heads)


def unpatch(model: nn.Module) -> int:
    """Put back the original pooler modules that :func:`patch` replaced; return how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    extras = _unpatch_extras(model)
    targets = [(name, m) for name, m in model.named_modules() if name and _ORIGINAL in m.__dict__]
    for name, fast in targets:
        original = fast.__dict__.pop(_ORIGINAL)
        # Re-point the original at the current submodules: anything done to the model since the
        # patch (.to(), .half(), a new dense loaded in) is kept.
        for child in original._modules:
            if child in fast._modules:
                setattr(original, child, fast._modules[child])
        original.train(fast.training)
        _replace_child(model, name, original)
    return len(targets) + extras


def _patch_extras(model: nn.Module, heads: bool) -> int:
    # Beyond poolers: sentence-transformers pooling modules and fused classification heads.
    from .heads import patch_heads
    from .sentence_pooling import is_sentence_transformer, patch_sentence_transformer

    count = patch_sentence_transformer(model) if is_sentence_transformer(model) else 0
    return count + (patch_heads(model) if heads else 0)


def _unpatch_extras(model: nn.Module) -> int:
    from .heads import unpatch_heads
    from .sentence_pooling import is_sentence_transformer, unpatch_sentence_transformer

    count = unpatch_sentence_transformer(model) if is_sentence_transformer(model) else 0
    return count + unpatch_heads(model)
