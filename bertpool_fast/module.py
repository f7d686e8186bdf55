"""``FastBertPooler``: a drop-in ``BertPooler`` whose forward is the fused kernel."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .activation_modules import activation_name
from .ops import fused_pooler


class FastBertPooler(nn.Module):
    """Same submodules and ``state_dict`` keys as ``BertPooler`` (``dense``, ``activation``).

    ``forward(hidden_states)`` returns ``activation(dense(hidden_states[:, 0]))`` from one fused
    kernel. If ``activation`` is replaced by a module the kernel does not reproduce, the module
    falls back to the eager computation rather than give a different answer.
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
    def from_pooler(cls, pooler: nn.Module) -> "FastBertPooler":
        """Wrap an existing pooler, sharing its ``dense`` and ``activation`` (no parameter copy)."""
        dense = getattr(pooler, "dense", None)
        act = getattr(pooler, "activation", None)
        if not isinstance(dense, nn.Linear) or not isinstance(act, nn.Module):
            raise TypeError(
                "from_pooler needs a module with `dense` (nn.Linear) and `activation` (nn.Module), "
                f"got {type(pooler).__name__}"
            )
        if activation_name(act) is None:
            raise ValueError(
                f"from_pooler: activation {type(act).__name__} has no fused kernel equivalent"
            )
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dense = dense
        fast.activation = act
        fast.train(pooler.training)
        return fast

    def _kernel_activation(self) -> Optional[str]:
        # Resolved once per activation module, not on every call; re-resolved if it is swapped.
        act = self.activation
        cached = self.__dict__.get("_activation_cache")
        if cached is None or cached[0] is not act:
            cached = (act, activation_name(act))
            self.__dict__["_activation_cache"] = cached
        return cached[1]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        name = self._kernel_activation()
        if name is None:
            return self.activation(self.dense(hidden_states[:, 0]))
        return fused_pooler(hidden_states, self.dense.weight, self.dense.bias, activation=name)

    def extra_repr(self) -> str:
        return "fused=triton"
