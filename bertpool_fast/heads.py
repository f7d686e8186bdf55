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
``unpatch_heads(model)`` removes every instance forward it set. State dicts never change.
"""

from __future__ import annotations

import inspect
import threading
from types import CodeType, FunctionType, MethodType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .activation_modules import activation_name
from .kernels.classifier_head import MAX_LABELS, classifier_head_fwd
from .ops import BACKENDS, _check_tensor, resolve_backend
from .reference import apply_activation_torch

# Set on every module whose instance forward patch_heads installed (the value: which role).
_MARK = "_bertpool_head"
# On a deferring pooler: the kernel activation its proof found.
_ACT = "_bertpool_head_activation"


# --- the functional op ---------------------------------------------------------------------------


def validate_head_args(hidden_states, w1, b1, w2, b2, activation, backend) -> None:
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
    tensors = {"hidden_states": hidden_states, "weight": w1, "classifier_weight": w2}
    for name, b, n in (("bias", b1, w1.shape[0]), ("classifier_bias", b2, w2.shape[0])):
        if b is not None:
            _check_tensor(name, b, 1, "[out_features]")
            if b.shape[0] != n:
                raise ValueError(f"{name} must have {n} elements, got {b.shape[0]}")
            tensors[name] = b
    if len({t.dtype for t in tensors.values()}) > 1:
        got = ", ".join(f"{k}={v.dtype}" for k, v in tensors.items())
        raise TypeError(f"all tensors must share one dtype, got {got}")
    if len({t.device for t in tensors.values()}) > 1:
        got = ", ".join(f"{k} on {v.device}" for k, v in tensors.items())
        raise ValueError(f"all tensors must be on one device, got {got}")
    if not isinstance(activation, str):
        raise ValueError(f"activation must be a kernel activation name, got {activation!r}")
    from .kernels import ACTIVATIONS

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


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
    Returns [B, L] in the input dtype.
    """
    validate_head_args(
        hidden_states, weight, bias, classifier_weight, classifier_bias, activation, backend
    )
    chosen = resolve_backend(backend, hidden_states.device, hidden_states.dtype)
    x_cls = hidden_states[:, 0]  # a strided view: no copy
    params = (weight, bias, classifier_weight, classifier_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden_states,) + params
    )
    if chosen == "torch" or needs_grad:
        return classifier_head_reference(x_cls, *params, activation)
    if classifier_weight.shape[0] > MAX_LABELS:
        from .ops import fused_pooler

        pooled = fused_pooler(hidden_states, weight, bias, activation=activation, backend=chosen)
        return F.linear(pooled, classifier_weight, classifier_bias)
    return classifier_head_fwd(x_cls, weight, bias, classifier_weight, classifier_bias, activation)


# --- which heads are provably this computation ---------------------------------------------------


def _code_key(code: CodeType, rename: Optional[dict] = None) -> tuple:
    names = tuple((rename or {}).get(n, n) for n in code.co_names)
    consts = tuple(c for c in code.co_consts if not isinstance(c, str))  # drop docstrings
    return (code.co_code, consts, names, code.co_argcount)


def _forward_code(cls: type) -> Optional[CodeType]:
    forward = getattr(cls, "forward", None)
    func = inspect.unwrap(forward) if forward is not None else None  # through @can_return_tuple
    return func.__code__ if isinstance(func, FunctionType) else None


def _templates() -> dict:
    keys: dict = {}
    try:
        from transformers.models.bert import modeling_bert as mb
        from transformers.models.roberta import modeling_roberta as mr
    except ImportError:
        return keys
    keys[_code_key(_forward_code(mb.BertForSequenceClassification))] = "seqcls"
    keys[_code_key(_forward_code(mb.BertForNextSentencePrediction))] = "nsp"
    keys[_code_key(_forward_code(mr.RobertaClassificationHead))] = "roberta_head"
    keys[_code_key(_forward_code(mb.BertOnlyNSPHead))] = "nsp_head"
    return keys


_TEMPLATE_KEYS: Optional[dict] = None


def _form(module: nn.Module) -> Optional[str]:
    global _TEMPLATE_KEYS
    if _TEMPLATE_KEYS is None:
        _TEMPLATE_KEYS = _templates()
    code = _forward_code(type(module))
    if code is None:
        return None
    prefix = getattr(module, "base_model_prefix", None)
    rename = {prefix: "bert"} if isinstance(prefix, str) and prefix else None
    return _TEMPLATE_KEYS.get(_code_key(code, rename)) or _TEMPLATE_KEYS.get(_code_key(code))


def _plain_linear(m: object) -> bool:
    # an nn.Linear whose forward is its class's, or the classifier forward we installed ourselves
    return type(m) is nn.Linear and ("forward" not in m.__dict__ or _MARK in m.__dict__)


def _pooler_parts(pooler: nn.Module) -> Optional[tuple[nn.Linear, str]]:
    """(dense, activation name) of a first-token pooler we can fuse, else None."""
    from .patching import is_bert_pooler_form

    dense = getattr(pooler, "dense", None)
    if not _plain_linear(dense):
        return None
    if _ACT in pooler.__dict__:
        # proven when the deferring forward was installed (which the proof itself would now refuse:
        # an instance forward); only dense, which may have been replaced since, is checked again
        return dense, pooler.__dict__[_ACT]
    if type(pooler).__name__ == "MobileBertPooler":
        return (dense, "tanh") if getattr(pooler, "do_activate", False) else None
    act = getattr(pooler, "activation", None)
    name = activation_name(act) if isinstance(act, nn.Module) else None
    fast = type(pooler).__name__ == "FastBertPooler"
    if name is None or not (fast or is_bert_pooler_form(pooler)):
        return None
    return dense, name


def _head_parts(model: nn.Module, form: str) -> Optional[tuple[nn.Module, nn.Linear]]:
    """(pooler, classifier Linear) of a seqcls / nsp model, when both are fusable."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = getattr(backbone, "pooler", None)
    if pooler is None or _pooler_parts(pooler) is None:
        return None
    if form == "seqcls":
        classifier = getattr(model, "classifier", None)
        if type(getattr(model, "dropout", None)) is not nn.Dropout:
            return None
    else:
        cls_head = getattr(model, "cls", None)
        if cls_head is None or _form(cls_head) != "nsp_head":
            return None
        classifier = getattr(cls_head, "seq_relationship", None)
    return (pooler, classifier) if _plain_linear(classifier) else None


# --- deferral: the pooler hands the encoder output to the classifier, for one call ---------------

_STATE = threading.local()


class _Deferral:
    __slots__ = ("pooler", "hidden", "consumed")

    def __init__(self, pooler: nn.Module) -> None:
        self.pooler = pooler
        self.hidden: Optional[torch.Tensor] = None
        self.consumed = False


def _fusing(module: nn.Module) -> bool:
    return not module.training and not torch.is_grad_enabled()


def _deferring_pooler_forward(self, hidden_states, *args, **kwargs):
    token = getattr(_STATE, "token", None)
    if token is not None and token.pooler is self and token.hidden is None:
        token.hidden = hidden_states
        return hidden_states
    return type(self).forward(self, hidden_states, *args, **kwargs)


def _fused_classifier_forward(self, x):
    token = getattr(_STATE, "token", None)
    if token is not None and token.hidden is not None and x is token.hidden:
        # x is the encoder output the pooler deferred (eval dropout returns its input object)
        token.consumed = True
        dense, act = _pooler_parts(token.pooler)
        return fused_classifier_head(x, dense.weight, dense.bias, self.weight, self.bias, activation=act)
    return type(self).forward(self, x)


def _fused_model_forward(self, *args, **kwargs):
    cls_forward = type(self).forward
    form = self.__dict__.get(_MARK)
    parts = _head_parts(self, form) if _fusing(self) else None
    if parts is None:
        return cls_forward(self, *args, **kwargs)
    pooler, classifier = parts
    # The pooler or classifier may have been replaced since patch_heads (e.g. by patch()): the
    # instance forwards are (re)installed on whatever is there now.
    _install(pooler, _deferring_pooler_forward, "pooler")
    _install(classifier, _fused_classifier_forward, "classifier")
    token = _Deferral(pooler)
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
    dense, out_proj = self.dense, self.out_proj
    if not (_fusing(self) and _plain_linear(dense) and _plain_linear(out_proj)):
        return type(self).forward(self, features, *args, **kwargs)
    return fused_classifier_head(
        features, dense.weight, dense.bias, out_proj.weight, out_proj.bias, activation="tanh"
    )


def _install(module: nn.Module, fn, role: str) -> None:
    if module.__dict__.get(_MARK) != role:
        if role == "pooler":
            module.__dict__[_ACT] = _pooler_parts(module)[1]
        module.forward = MethodType(fn, module)  # an instance attribute: no state_dict change
        module.__dict__[_MARK] = role


def _uninstall(module: nn.Module) -> bool:
    if _MARK not in module.__dict__:
        return False
    module.__dict__.pop(_MARK)
    module.__dict__.pop(_ACT, None)
    module.__dict__.pop("forward", None)
    return True


def patch_heads(model: nn.Module) -> int:
    """Make every fusable classification head in ``model`` use the fused kernel; return how many.

    Heads: models of the ``BertForSequenceClassification`` / ``BertForNextSentencePrediction``
    form (their pooler and classifier) and ``RobertaClassificationHead``-form modules. Fused only
    in eval mode with no gradient recorded; in training mode (dropout active) or with grad enabled
    the exact eager forward runs. Idempotent; undo with :func:`unpatch_heads`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        if _MARK in module.__dict__:
            continue
        form = _form(module)
        if form == "roberta_head":
            if (
                _plain_linear(getattr(module, "dense", None))
                and _plain_linear(getattr(module, "out_proj", None))
                and type(getattr(module, "dropout", None)) is nn.Dropout
            ):
                _install(module, _fused_roberta_head_forward, "roberta_head")
                count += 1
        elif form in ("seqcls", "nsp"):
            parts = _head_parts(module, form)
            if parts is not None and parts[1].weight.shape[0] <= MAX_LABELS:
                _install(module, _fused_model_forward, form)
                _install(parts[0], _deferring_pooler_forward, "pooler")
                _install(parts[1], _fused_classifier_forward, "classifier")
                count += 1
    return count


def unpatch_heads(model: nn.Module) -> int:
    """Remove what :func:`patch_heads` installed; return how many heads went back to eager."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    heads = 0
    for module in list(model.modules()):
        role = module.__dict__.get(_MARK)
        if _uninstall(module) and role not in ("pooler", "classifier"):
            heads += 1
    return heads
