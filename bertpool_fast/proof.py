"""What a module computes, proven from its code: the part that decides what may be fused.

A module may be replaced by a fused one only when we can show it computes what the kernel computes:
  * its class's ``forward`` compiles to the same bytecode as a template (``code_key``), and the
    globals that bytecode reads (``torch``, ``ACT2FN``, ...) are the same objects
    (``same_globals``) - names of locals, comments, docstrings and annotations may differ, the
    computation may not;
  * its submodules are ones the kernel reproduces: ``dense`` a plain ``nn.Linear``
    (``is_plain_linear``), an activation with a kernel equivalent (``activation_name``,
    ``hf_activation_name``), no hooks and no instance forward (``is_overridden``).
Membership is by exact class, never ``isinstance``: a subclass may override ``forward``.

Pooler forms (``FORMS``, ``form_of_class``, ``pooler_refusal``) serve the fast modules, the pooler
swap and the class-level switch; the classification-head form (``head_form``) serves
:mod:`bertpool_fast.heads`. Nothing here changes a module.
"""

from __future__ import annotations

import dis
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

try:
    from transformers import activations as _hf
    from transformers.activations import ACT2FN  # read by the ContextPooler template
except ImportError:  # transformers is optional for the functional ops; no template can match then
    _hf = None
    ACT2FN = None

# Set by the class-level switch on a class's fused forward: the forward it replaced, so that the
# proof sees through the switch.
ORIGINAL_FORWARD_ATTR = "__bertpool_original_forward__"

# --- submodules the kernels reproduce ------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


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
    hf = _hf
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
    if ACT2FN is None or act not in ACT2FN:
        return None
    return _activation_kind(ACT2FN[act])


# --- pooler forms: templates, compared by bytecode, never called --------------------------------


# Each template must stay exactly this code.
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
    """One way transformers writes a first-token pooler, proven by its template."""

    name: str
    template: FunctionType
    # Why this instance cannot be fused, or None when it provably can (class already matched).
    refusal: Callable[[nn.Module], Optional[str]]


FORMS = (
    PoolerForm("bert", _bert_template, _bert_proof),
    PoolerForm("context", _context_template, _context_proof),
    PoolerForm("mobilebert", _mobilebert_template, _mobilebert_proof),
)


def code_key(func: FunctionType) -> tuple:
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


def same_globals(func: FunctionType, template: FunctionType) -> bool:
    for name in _globals_read(template.__code__):
        expected = template.__globals__.get(name)
        if expected is None or func.__globals__.get(name) is not expected:
            return False
    return True


_TEMPLATE_KEYS = {code_key(form.template): form for form in FORMS}


@functools.lru_cache(maxsize=1024)
def _form_of_function(forward: FunctionType) -> Optional[PoolerForm]:
    # patch() asks for every module of a model; the bytecode of one forward is keyed once
    return _TEMPLATE_KEYS.get(code_key(forward))


def form_of_class(cls: type) -> Optional[PoolerForm]:
    """The form whose template ``cls.forward`` matches, or None; sees through the class switch."""
    forward = getattr(cls, "forward", None)
    forward = getattr(forward, ORIGINAL_FORWARD_ATTR, forward)
    if not isinstance(forward, FunctionType):
        return None
    form = _form_of_function(forward)
    if form is None or not same_globals(forward, form.template):
        return None
    return form


def pooler_refusal(module: nn.Module) -> Optional[str]:
    """Why ``module`` does not provably compute a first-token pooler form, or None when it does."""
    form = form_of_class(type(module))
    if form is None:
        return f"{type(module).__name__}.forward is not a first-token dense + activation form"
    if is_overridden(module):
        return "the module has hooks or an instance forward, which a swap would drop"
    return form.refusal(module)


# --- classification heads ------------------------------------------------------------------------


def forward_function(cls: type) -> Optional[FunctionType]:
    """``cls.forward`` as a plain function, through decorators (``@can_return_tuple``), or None."""
    forward = getattr(cls, "forward", None)
    func = inspect.unwrap(forward) if forward is not None else None
    return func if isinstance(func, FunctionType) else None


@functools.lru_cache(maxsize=1)
def _head_templates() -> dict:
    # transformers' own RobertaClassificationHead.forward is the template: dense, tanh, out_proj on
    # the first token, dropout before each dense
    try:
        from transformers.models.roberta import modeling_roberta as mr
    except ImportError:
        return {}
    func = forward_function(mr.RobertaClassificationHead)
    return {} if func is None else {code_key(func): ("roberta_head", func)}


@functools.lru_cache(maxsize=1024)
def _head_form_of(cls: type, forward: object) -> Optional[str]:
    # Keyed by the class forward too, so a forward rebound on the class is judged again.
    func = forward_function(cls)
    if func is None:
        return None
    hit = _head_templates().get(code_key(func))
    return hit[0] if hit is not None and same_globals(func, hit[1]) else None


def head_form(module: nn.Module) -> Optional[str]:
    """``"roberta_head"`` when ``module``'s class forward is ``RobertaClassificationHead``'s."""
    cls = type(module)
    try:
        return _head_form_of(cls, cls.forward)
    except TypeError:  # an unhashable forward attribute: no template is one
        return None
