"""The fast poolers: drop-in modules, and the fused forwards they share with the class-level switch.

Each ``fused_*_forward(pooler, hidden_states)`` returns the pooler's output from one fused kernel,
or None when this call cannot be fused (an activation the kernel lacks, dropout active in training,
a hook that must run, an input that is not [batch, seq, hidden]); the caller then runs the eager
computation. ``FastBertPooler`` / ``FastContextPooler`` use them, and so does
:mod:`bertpool_fast.class_patch`, which installs them as the ``forward`` of transformers' classes.
Whether a module may be fused at all is decided in :mod:`bertpool_fast.proof`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .ops import fused_pooler
from .proof import (
    ACT2FN,
    activation_name,
    form_of_class,
    hf_activation_name,
    is_overridden,
    is_plain_linear,
    pooler_refusal,
)


def _fuse(hidden_states: torch.Tensor, dense: nn.Module, activation: Optional[str]):
    if activation is None or not is_plain_linear(dense):
        return None
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        return None  # the eager forward decides what such an input means (or how it fails)
    if type(dense) is nn.Linear:
        # The exact class has no property over its parameters (a parametrized Linear is a
        # subclass): read them without nn.Module.__getattr__, through it when one was replaced.
        params = dense._parameters
        weight, bias = params.get("weight", _MISSING), params.get("bias", _MISSING)
        if weight is _MISSING:
            weight = dense.weight
        if bias is _MISSING:
            bias = dense.bias
    else:
        weight, bias = dense.weight, dense.bias
    # through the public op, by its module-level name (tests spy on it); its common inference
    # call is two comparisons there and ops.pooler_inference's one combined check
    return fused_pooler(hidden_states, weight, bias, activation=activation)


_MISSING = object()


def fused_bert_forward(pooler: nn.Module, hidden_states: torch.Tensor) -> Optional[torch.Tensor]:
    """``activation(dense(hidden_states[:, 0]))``: BertPooler and its ~40 renamed copies, ViT's."""
    # activation_name is a few type checks: cheap enough per call, and nothing is cached on the
    # instance, which the class-level switch must leave untouched
    return _fuse(hidden_states, pooler.dense, activation_name(pooler.activation))


def fused_context_forward(pooler: nn.Module, hidden_states: torch.Tensor) -> Optional[torch.Tensor]:
    """DeBERTa's ``ContextPooler``: ``ACT2FN[pooler_hidden_act](dense(dropout(h[:, 0])))``."""
    dropout = pooler.dropout
    # Dropout is the identity in eval mode or at p = 0; a live dropout must run eagerly.
    if type(dropout) is not nn.Dropout or is_overridden(dropout):
        return None
    if dropout.training and dropout.p > 0:
        return None
    return _fuse(hidden_states, pooler.dense, hf_activation_name(pooler.config.pooler_hidden_act))


def fused_mobilebert_forward(
    pooler: nn.Module, hidden_states: torch.Tensor
) -> Optional[torch.Tensor]:
    """MobileBertPooler: ``tanh(dense(h[:, 0]))``, or the bare first token (not fused)."""
    if not pooler.do_activate:
        return None  # returns a view of the first token: nothing to fuse
    return _fuse(hidden_states, pooler.dense, "tanh")


class FastBertPooler(nn.Module):
    """Same submodules and ``state_dict`` keys as ``BertPooler`` (``dense``, ``activation``).

    ``forward(hidden_states)`` returns ``activation(dense(hidden_states[:, 0]))`` from one fused
    kernel. ``dense`` may be non-square (ViT's ``pooler_output_size``). If ``activation`` or
    ``dense`` is replaced by a module the kernel does not reproduce, the module falls back to the
    eager computation rather than give a different answer.
    """

    def __init__(self, config=None, *, hidden_size: Optional[int] = None) -> None:
        super().__init__()
        if hidden_size is None:
            if config is None or not hasattr(config, "hidden_size"):
                raise ValueError("FastBertPooler needs a config with hidden_size, or hidden_size=")
            hidden_size = config.hidden_size
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    @classmethod
    def from_parts(cls, dense: nn.Linear, activation: nn.Module, training: bool = False):
        """A fast pooler around existing modules, shared, not copied."""
        if not isinstance(dense, nn.Linear) or not isinstance(activation, nn.Module):
            raise TypeError(
                "FastBertPooler needs `dense` (nn.Linear) and `activation` (nn.Module), got "
                f"{type(dense).__name__} and {type(activation).__name__}"
            )
        if activation_name(activation) is None:
            raise ValueError(
                f"activation {type(activation).__name__} has no fused kernel equivalent"
            )
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dense = dense
        fast.activation = activation
        fast.train(training)
        return fast

    @classmethod
    def from_pooler(cls, pooler: nn.Module) -> FastBertPooler:
        """Wrap an existing pooler, sharing its ``dense`` and ``activation`` (no parameter copy)."""
        dense = getattr(pooler, "dense", None)
        act = getattr(pooler, "activation", None)
        if not isinstance(dense, nn.Linear) or not isinstance(act, nn.Module):
            raise TypeError(
                "from_pooler needs a module with `dense` (nn.Linear) and `activation` (nn.Module), "
                f"got {type(pooler).__name__}"
            )
        # Same attributes do not make the same computation (a mean pooler can have them too): the
        # pooler must provably be act(dense(h[:, 0])), by the same proof patch() uses.
        reason = pooler_refusal(pooler)
        if reason is None and form_of_class(type(pooler)).name != "bert":
            reason = f"it is the {form_of_class(type(pooler)).name!r} form; use bertpool_fast.patch"
        if reason is not None:
            raise ValueError(f"from_pooler: {type(pooler).__name__} cannot be fused: {reason}")
        return cls.from_parts(dense, act, pooler.training)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # fused_bert_forward's body, one frame fewer on the per-call path
        dense = activation = None
        if type(self) is FastBertPooler:
            # the exact class has no attribute that could shadow its submodules: read them
            # without nn.Module.__getattr__ (through it when one was replaced by a non-module)
            modules = self._modules
            dense, activation = modules.get("dense"), modules.get("activation")
        if dense is None:
            dense = self.dense
        if activation is None:
            activation = self.activation
        out = _fuse(hidden_states, dense, activation_name(activation))
        if out is None:
            return activation(dense(hidden_states[:, 0]))
        return out

    def extra_repr(self) -> str:
        return "fused=triton"


class FastContextPooler(nn.Module):
    """DeBERTa's ``ContextPooler`` (also DeBERTa-v2, SEW-D): ``dense``, ``dropout``, ``config``.

    The activation is ``ACT2FN[config.pooler_hidden_act]``, read on every call as the original
    does. In training mode with dropout p > 0 the eager computation runs (dropout draws a mask).
    """

    def __init__(self, dense: nn.Linear, dropout: nn.Module, config) -> None:
        super().__init__()
        self.dense = dense
        self.dropout = dropout
        self.config = config

    @classmethod
    def from_pooler(cls, pooler: nn.Module) -> FastContextPooler:
        fast = cls(pooler.dense, pooler.dropout, pooler.config)
        fast.train(pooler.training)
        return fast

    @property
    def output_dim(self) -> int:
        return self.config.hidden_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = fused_context_forward(self, hidden_states)
        if out is None:
            pooled = self.dense(self.dropout(hidden_states[:, 0]))
            return ACT2FN[self.config.pooler_hidden_act](pooled)
        return out

    def extra_repr(self) -> str:
        return "fused=triton"


FAST_POOLERS = (FastBertPooler, FastContextPooler)


def _fast_mobilebert(pooler: nn.Module) -> FastBertPooler:
    return FastBertPooler.from_parts(pooler.dense, nn.Tanh(), pooler.training)


# For each proven form (bertpool_fast.proof.FORMS, by name): the drop-in module for an instance
# (pooler swap) and the fused forward (class-level switch, fast modules).
MAKE_FAST = {
    "bert": FastBertPooler.from_pooler,
    "context": FastContextPooler.from_pooler,
    "mobilebert": _fast_mobilebert,
}
FUSED_FORWARDS = {
    "bert": fused_bert_forward,
    "context": fused_context_forward,
    "mobilebert": fused_mobilebert_forward,
}
