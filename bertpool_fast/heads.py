"""Pooler + classifier in one kernel: ``fused_classifier_head`` and ``patch_heads``.

``logits = act(h[:, 0] @ W1.T + b1) @ W2.T + b2`` is what ``BertForSequenceClassification`` and
``BertForNextSentencePrediction`` compute from the encoder output in eval mode (their dropout is
then the identity), and what Roberta's ``RobertaClassificationHead`` computes (dense, tanh,
out_proj on the first token). The pooled rows stay on chip; only logits are written.

``patch_heads(model)`` makes those heads use the kernel, per instance, undoably:
  * A ``RobertaClassificationHead``-form module (its forward compiles to the same bytecode) gets an
    instance ``forward``: fused when the module is in eval mode and no gradient is recorded, its
    own class forward otherwise.
  * A model whose ``forward`` compiles to ``BertForSequenceClassification.forward`` or
    ``BertForNextSentencePrediction.forward`` (up to the backbone's attribute name: bert,
    mobilebert, ...) gets an instance ``forward`` that, in eval mode without grad, runs the model's
    own forward with the pooler deferred: the pooler returns the encoder output untouched, dropout
    passes it through, and the classifier ``nn.Linear`` computes the logits from it with the fused
    kernel. Everything else of the original forward (loss, problem_type, output class) runs as
    written: only the logits computation is fused. In training mode, or with grad enabled, the
    exact eager path runs (dropout active, autograd through nn.Linear).
  * Every call first checks, in a few microseconds, that the modules the deferred [B, S, H] tensor
    would reach or be seen from (backbone, pooler, dense, activation, dropout, classifier) are of
    the proven classes and have no hooks (module or global) and no instance forward but ours; if
    not, the exact eager forward runs, so every hook sees what it sees unpatched.
  * A module that already has an instance ``forward`` (``model.forward = torch.compile(...)``) is
    not patched: its head is left eager, and that forward is never replaced or removed.
``unpatch_heads(model)`` removes every instance forward it set. State dicts never change.
Under ``torch.autocast`` the head computes in the autocast dtype, as the eager head does.
"""

from __future__ import annotations

import functools
import inspect
import threading
from types import FunctionType, MethodType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .activation_modules import activation_name, has_hooks, is_overridden, is_plain_linear
from .kernels import ACTIVATIONS
from .kernels.classifier_head import MAX_LABELS, classifier_head_fwd
from .module import FastBertPooler
from .ops import BACKENDS, _autocast_inputs, _check_tensor, fused_pooler, resolve_backend
from .patching import _code_key, _same_globals, form_of_class
from .reference import apply_activation_torch

# Set on every model / head module whose instance forward patch_heads installed: its form.
_MARK = "_bertpool_head"


# --- the functional op ---------------------------------------------------------------------------


def validate_head_args(hidden_states, w1, b1, w2, b2, activation, backend) -> None:
    # Runs on every inference call: plain comparisons, messages built only on failure.
    _check_tensor("hidden_states", hidden_states, 3, "[batch, seq, hidden]")
    _check_tensor("weight", w1, 2, "[out_features, in_features] (nn.Linear layout)")
    _check_tensor("classifier_weight", w2, 2, "[num_labels, out_features] (nn.Linear layout)")
    if hidden_states.shape[1] < 1:
        raise ValueError(
            f"hidden_states needs at least one token (seq >= 1), got shape {tuple(hidden_states.shape)}"
        )
    if w1.shape[1] != hidden_states.shape[2]:
        raise ValueError(
            f"weight.shape[1] ({w1.shape[1]}) must equal the hidden size of hidden_states "
            f"({hidden_states.shape[2]})"
        )
    if w2.shape[1] != w1.shape[0]:
        raise ValueError(
            f"classifier_weight.shape[1] ({w2.shape[1]}) must equal weight.shape[0] ({w1.shape[0]})"
        )
    _check_bias("bias", b1, w1.shape[0])
    _check_bias("classifier_bias", b2, w2.shape[0])
    dtype, device = hidden_states.dtype, hidden_states.device
    if (
        w1.dtype != dtype
        or w2.dtype != dtype
        or (b1 is not None and b1.dtype != dtype)
        or (b2 is not None and b2.dtype != dtype)
    ):
        got = ", ".join(f"{k}={v.dtype}" for k, v in _named(hidden_states, w1, b1, w2, b2))
        raise TypeError(f"all tensors must share one dtype, got {got}")
    if (
        w1.device != device
        or w2.device != device
        or (b1 is not None and b1.device != device)
        or (b2 is not None and b2.device != device)
    ):
        got = ", ".join(f"{k} on {v.device}" for k, v in _named(hidden_states, w1, b1, w2, b2))
        raise ValueError(f"all tensors must be on one device, got {got}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_bias(name: str, b, n: int) -> None:
    if b is not None:
        _check_tensor(name, b, 1, "[out_features]")
        if b.shape[0] != n:
            raise ValueError(f"{name} must have {n} elements, got {b.shape[0]}")


def _named(h, w1, b1, w2, b2) -> list:
    pairs = [("hidden_states", h), ("weight", w1), ("bias", b1), ("classifier_weight", w2),
             ("classifier_bias", b2)]  # fmt: skip
    return [(k, v) for k, v in pairs if v is not None]


def classifier_head_reference(x_cls, w1, b1, w2, b2, activation: str) -> torch.Tensor:
    """Eager: pooled in the input dtype (rounded, as BertPooler stores it), then the classifier."""
    pooled = apply_activation_torch(F.linear(x_cls, w1, b1), activation)
    return F.linear(pooled, w2, b2)


def fused_classifier_head(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    classifier_weight: torch.Tensor,
    classifier_bias: Optional[torch.Tensor] = None,
    *,
    activation: str = "tanh",
    backend: str = "auto",
) -> torch.Tensor:
    """``act(hidden_states[:, 0] @ weight.T + bias) @ classifier_weight.T + classifier_bias``.

    hidden_states: [B, S, H] any strides; weight: [N, H]; classifier_weight: [L, N]. One launch for
    L <= 128 labels (pooled rows rounded to the input dtype on chip, as eager rounds them); more
    labels run the pooler kernel then ``F.linear``. Forward only: with grad recorded it runs eagerly.
    Returns [B, L] in the input dtype. Under ``torch.autocast`` the inputs are first cast as the two
    eager ``nn.Linear`` calls cast theirs (only the first-token rows of ``hidden_states``), so the
    logits have the autocast dtype, as eager's do.
    """
    hidden_states, weight, bias = _autocast_inputs(hidden_states, weight, bias)
    # the classifier Linear's own autocast cast; hidden_states (already cast) passes unchanged
    _, classifier_weight, classifier_bias = _autocast_inputs(
        hidden_states, classifier_weight, classifier_bias
    )
    validate_head_args(
        hidden_states, weight, bias, classifier_weight, classifier_bias, activation, backend
    )
    chosen = resolve_backend(backend, hidden_states.device, hidden_states.dtype)
    needs_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad
        or weight.requires_grad
        or classifier_weight.requires_grad
        or (bias is not None and bias.requires_grad)
        or (classifier_bias is not None and classifier_bias.requires_grad)
    )
    if chosen == "torch" or needs_grad:
        return classifier_head_reference(
            hidden_states[:, 0], weight, bias, classifier_weight, classifier_bias, activation
        )
    if classifier_weight.shape[0] > MAX_LABELS:
        pooled = fused_pooler(hidden_states, weight, bias, activation=activation, backend=chosen)
        return F.linear(pooled, classifier_weight, classifier_bias)
    # the launcher reads position 0 of each sequence through the strides: no [:, 0] view
    return classifier_head_fwd(
        hidden_states, weight, bias, classifier_weight, classifier_bias, activation
    )


# --- which heads are provably this computation ---------------------------------------------------


def _forward_function(cls: type) -> Optional[FunctionType]:
    forward = getattr(cls, "forward", None)
    func = inspect.unwrap(forward) if forward is not None else None  # through @can_return_tuple
    return func if isinstance(func, FunctionType) else None


def _renamed(func: FunctionType, old: str, new: str) -> FunctionType:
    # The function as if it read attribute `new` where it reads `old` (a model's backbone is
    # `self.bert`, `self.mobilebert`, ...), for comparison by patching._code_key only.
    code = func.__code__
    if old not in code.co_names:
        return func
    names = tuple(new if n == old else n for n in code.co_names)
    return FunctionType(code.replace(co_names=names), func.__globals__, closure=func.__closure__)


def _templates() -> dict:
    try:
        from transformers.models.bert import modeling_bert as mb
        from transformers.models.roberta import modeling_roberta as mr
    except ImportError:
        return {}
    forms = {
        "seqcls": mb.BertForSequenceClassification,
        "nsp": mb.BertForNextSentencePrediction,
        "roberta_head": mr.RobertaClassificationHead,
        "nsp_head": mb.BertOnlyNSPHead,
    }
    templates = {}
    for form, cls in forms.items():
        func = _forward_function(cls)
        if func is not None:
            templates[_code_key(func)] = (form, func)
    return templates


@functools.lru_cache(maxsize=1)
def _template_keys() -> dict:
    return _templates()


@functools.lru_cache(maxsize=1024)
def _form_of(cls: type, forward: object, prefix: Optional[str]) -> Optional[str]:
    # Keyed by the class forward too, so a forward rebound on the class is judged again. The
    # bytecode must match a template's and the globals it reads (torch, the loss classes, the
    # output class) must be the same objects, as for the pooler templates in patching.
    func = _forward_function(cls)
    if func is None:
        return None
    templates = _template_keys()
    candidates = [func]
    if isinstance(prefix, str) and prefix and prefix != "bert":
        candidates.insert(0, _renamed(func, prefix, "bert"))
    for candidate in candidates:
        hit = templates.get(_code_key(candidate))
        if hit is not None and _same_globals(func, hit[1]):
            return hit[0]
    return None


def _form(module: nn.Module) -> Optional[str]:
    cls = type(module)
    try:
        return _form_of(cls, cls.forward, getattr(cls, "base_model_prefix", None))
    except TypeError:  # an unhashable forward attribute: no template is one
        return None


@functools.lru_cache(maxsize=1024)
def _pooler_form_of(cls: type, forward: object) -> Optional[str]:
    if cls is FastBertPooler:  # ours: act(dense(h[:, 0])), by class identity
        return "bert"
    form = form_of_class(cls)  # bytecode and globals against patching's pooler templates
    return form.name if form is not None and form.name in ("bert", "mobilebert") else None


def _pooler_parts(pooler: Optional[nn.Module]) -> Optional[tuple[nn.Linear, str]]:
    """(dense, activation name) of a first-token pooler the kernel reproduces, else None.

    Checked on every call: the pooler, its dense and its activation must be plain (no hooks, no
    instance forward but the deferring one patch_heads installs on the pooler).
    """
    if pooler is None or not _unaltered(pooler, _deferring_pooler_forward):
        return None
    cls = type(pooler)
    try:
        form = _pooler_form_of(cls, cls.forward)
    except TypeError:  # an unhashable forward attribute: no template is one
        return None
    if form is None:
        return None
    dense = _child(pooler, "dense")
    if not is_plain_linear(dense):
        return None
    if form == "mobilebert":
        return (dense, "tanh") if getattr(pooler, "do_activate", False) else None
    act = _child(pooler, "activation")
    name = activation_name(act) if act is not None else None
    return None if name is None else (dense, name)


def _child(module: nn.Module, name: str) -> Optional[nn.Module]:
    # The submodule ``module.<name>`` resolves to (nn.Module.__setattr__ keeps every submodule in
    # _modules), read without nn.Module.__getattr__: these lookups run on every call.
    return module._modules.get(name)


def _unaltered(module: nn.Module, ours) -> bool:
    """No hooks, and ``module(x)`` runs its class's forward or ``ours`` (set by patch_heads)."""
    if has_hooks(module):
        return False
    forward = module.__dict__.get("forward")
    return forward is None or _is_ours(module, forward, ours)


def _is_ours(module: nn.Module, forward: object, ours) -> bool:
    return (
        isinstance(forward, MethodType) and forward.__func__ is ours and forward.__self__ is module
    )


def _plain_classifier(m: object) -> bool:
    # is_plain_linear, save that the forward patch_heads installs on the classifier is allowed
    return (
        isinstance(m, nn.Linear)
        and type(m).forward is nn.Linear.forward
        and _unaltered(m, _fused_classifier_forward)
    )


def _plain_dropout(m: object) -> bool:
    # an nn.Dropout in eval mode returns its input object: the deferred tensor passes through
    return type(m) is nn.Dropout and not is_overridden(m)


def _head_parts(model: nn.Module, form: str):
    """(pooler, dense, activation, classifier, dropout or None) of a seqcls / nsp model whose head
    the kernel reproduces, else None. Every module the deferred [B, S, H] tensor passes through, or
    that could observe it, must be plain: no hooks (a hook would see [B, S, H] where eager gives
    [B, H]), no instance forward but ours, exact classes. Modes are the caller's to check."""
    backbone = _child(model, getattr(model, "base_model_prefix", ""))
    # the backbone returns the deferred tensor as its pooler_output: nothing may watch it
    if backbone is None or is_overridden(backbone):
        return None
    pooler = _child(backbone, "pooler")
    parts = _pooler_parts(pooler)
    if parts is None:
        return None
    dropout = None
    if form == "seqcls":
        dropout = _child(model, "dropout")
        if not _plain_dropout(dropout):
            return None
        classifier = _child(model, "classifier")
    else:
        cls_head = _child(model, "cls")
        if cls_head is None or is_overridden(cls_head):
            return None
        if _form(cls_head) != "nsp_head":
            return None
        classifier = _child(cls_head, "seq_relationship")
    if not _plain_classifier(classifier):
        return None
    return pooler, parts[0], parts[1], classifier, dropout


# --- deferral: the pooler hands the encoder output to the classifier, for one call ---------------

_STATE = threading.local()


class _Deferral:
    __slots__ = ("activation", "consumed", "dense", "hidden", "pooler")

    def __init__(self, pooler: nn.Module, dense: nn.Linear, activation: str) -> None:
        self.pooler = pooler
        self.dense = dense
        self.activation = activation
        self.hidden: Optional[torch.Tensor] = None
        self.consumed = False


def _fusing(module: nn.Module) -> bool:
    return not module.training and not torch.is_grad_enabled()


def _deferring_pooler_forward(self, hidden_states, *args, **kwargs):
    token = getattr(_STATE, "token", None)
    if (
        token is not None
        and token.pooler is self
        and token.hidden is None
        and not args
        and not kwargs
    ):
        token.hidden = hidden_states
        return hidden_states
    return type(self).forward(self, hidden_states, *args, **kwargs)


def _fused_classifier_forward(self, x):
    token = getattr(_STATE, "token", None)
    if token is not None and token.hidden is not None and x is token.hidden:
        # x is the encoder output the pooler deferred (eval dropout returns its input object)
        token.consumed = True
        dense = token.dense
        return fused_classifier_head(
            x, dense.weight, dense.bias, self.weight, self.bias, activation=token.activation
        )
    return type(self).forward(self, x)


def _fused_model_forward(self, *args, **kwargs):
    cls_forward = type(self).forward
    form = self.__dict__.get(_MARK)
    parts = _head_parts(self, form) if form is not None and _fusing(self) else None
    if parts is None or (parts[4] is not None and parts[4].training):
        return cls_forward(self, *args, **kwargs)
    pooler, dense, activation, classifier, _ = parts
    # The pooler or classifier may have been replaced since patch_heads (e.g. by patch()): the
    # instance forwards are (re)installed on whatever is there now. _head_parts has just checked
    # that neither has an instance forward other than ours, so nothing of the user's is replaced.
    _install(pooler, _deferring_pooler_forward)
    _install(classifier, _fused_classifier_forward)
    token = _Deferral(pooler, dense, activation)
    outer = getattr(_STATE, "token", None)
    _STATE.token = token
    try:
        out = cls_forward(self, *args, **kwargs)
    finally:
        _STATE.token = outer
    if token.hidden is not None and not token.consumed:
        # Cannot happen for the forwards we accept; if it ever does, the deferred value went
        # somewhere else, so the result is discarded and the eager path decides.
        return cls_forward(self, *args, **kwargs)
    return out


def _fused_roberta_head_forward(self, features, *args, **kwargs):
    dense, out_proj, dropout = (
        _child(self, "dense"),
        _child(self, "out_proj"),
        _child(self, "dropout"),
    )
    if (
        args
        or kwargs
        or _MARK not in self.__dict__  # unpatched, but a forward set over ours kept it reachable
        or not _fusing(self)
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


# Every forward patch_heads installs; an instance forward that is none of these is the user's.
_INSTALLED = (
    _deferring_pooler_forward,
    _fused_classifier_forward,
    _fused_model_forward,
    _fused_roberta_head_forward,
)


def _foreign_forward(module: nn.Module) -> bool:
    """True when ``module`` has an instance ``forward`` that patch_heads did not set."""
    forward = module.__dict__.get("forward")
    if forward is None:
        return False
    return not any(_is_ours(module, forward, fn) for fn in _INSTALLED)


def _install(module: nn.Module, fn) -> None:
    forward = module.__dict__.get("forward")
    if forward is None or not _is_ours(module, forward, fn):
        module.forward = MethodType(fn, module)  # an instance attribute: no state_dict change


def _uninstall(module: nn.Module) -> bool:
    """Remove the forward patch_heads set on ``module``; True when there was one."""
    forward = module.__dict__.get("forward")
    ours = forward is not None and not _foreign_forward(module)
    if ours:
        del module.__dict__["forward"]
    # A forward set over ours since (say, torch.compile of it) stays: it is the user's; with the
    # mark gone, ours inside it runs the class forward.
    return module.__dict__.pop(_MARK, None) is not None or ours


def patch_heads(model: nn.Module) -> int:
    """Make every fusable classification head in ``model`` use the fused kernel; return how many.

    Heads: models of the ``BertForSequenceClassification`` / ``BertForNextSentencePrediction``
    form (their pooler and classifier) and ``RobertaClassificationHead``-form modules. Fused only
    in eval mode with no gradient recorded, and only while the modules involved have no hooks and
    no instance forward of their own (checked on every call); otherwise the exact eager forward
    runs. A head whose modules already have an instance ``forward`` (``m.forward = ...``) is left
    alone: patching it would replace that forward. Idempotent; undo with :func:`unpatch_heads`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        if _MARK in module.__dict__ or _foreign_forward(module):
            continue
        form = _form(module)
        if form == "roberta_head":
            if (
                is_plain_linear(_child(module, "dense"))
                and is_plain_linear(_child(module, "out_proj"))
                and _plain_dropout(_child(module, "dropout"))
            ):
                _install(module, _fused_roberta_head_forward)
                module.__dict__[_MARK] = form
                count += 1
        elif form in ("seqcls", "nsp"):
            parts = _head_parts(module, form)
            if parts is None or parts[3].weight.shape[0] > MAX_LABELS:
                continue
            pooler, classifier = parts[0], parts[3]
            _install(module, _fused_model_forward)
            module.__dict__[_MARK] = form
            _install(pooler, _deferring_pooler_forward)
            _install(classifier, _fused_classifier_forward)
            count += 1
    return count


def unpatch_heads(model: nn.Module) -> int:
    """Remove what :func:`patch_heads` installed; return how many heads went back to eager."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    heads = 0
    for module in list(model.modules()):
        marked = _MARK in module.__dict__
        if _uninstall(module) and marked:
            heads += 1
    return heads
