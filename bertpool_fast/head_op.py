"""The functional op ``fused_classifier_head``: pooler and classifier in one kernel launch.

``logits = act(h[:, 0] @ W1.T + b1) @ W2.T + b2`` is what a ``RobertaClassificationHead`` (and
``BertForSequenceClassification`` in eval mode, whose dropout is then the identity) computes from
the encoder output. The pooled rows stay on chip; only logits are written. The module-level
integration is :mod:`bertpool_fast.heads`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernels.classifier_head import MAX_LABELS, classifier_head_fwd
from .ops import fused_pooler
from .reference import classifier_head_reference
from .validation import autocast_inputs, resolve_backend, validate_head_args

# Above this batch the pooler kernel followed by F.linear (cuBLAS) is faster than the one-launch
# head: measured on an H100 (2026-11-26, fp16, H = 768, 2 labels, GPU time) the fused head took
# 7.3 / 8.0 us at B = 1 / 8 against 7.8 / 11.1 us for pooler + linear, but 12.6 vs 11.2 at B = 32,
# 13.9 vs 11.7 at 128 and 72 vs 12 at 512 (bench/results/NVIDIA-H100-80GB-HBM3-2026-11-26-run2).
FUSED_HEAD_MAX_BATCH = 16


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
    L <= 128 labels and B <= FUSED_HEAD_MAX_BATCH (pooled rows rounded to the input dtype on chip,
    as eager rounds them); otherwise ``fused_pooler`` with this ``backend`` then ``F.linear``,
    which measured faster. Under "auto", float32 on a GPU runs eager's computation (cuBLAS), as
    the pooler's does. Forward only: with grad recorded it runs eagerly.
    Returns [B, L] in the input dtype. Under ``torch.autocast`` the inputs are first cast as the two
    eager ``nn.Linear`` calls cast theirs (only the first-token rows of ``hidden_states``), so the
    logits have the autocast dtype, as eager's do.
    """
    hidden_states, weight, bias = autocast_inputs(hidden_states, weight, bias)
    # the classifier Linear's own autocast cast; hidden_states (already cast) passes unchanged
    _, classifier_weight, classifier_bias = autocast_inputs(
        hidden_states, classifier_weight, classifier_bias
    )
    validate_head_args(
        hidden_states, weight, bias, classifier_weight, classifier_bias, activation, backend
    )
    # float32 on a GPU under "auto": cuBLAS, as for the pooler (its FMA tile is the same kind)
    chosen = resolve_backend(backend, hidden_states.device, hidden_states.dtype, gemm=True)
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
    if classifier_weight.shape[0] > MAX_LABELS or hidden_states.shape[0] > FUSED_HEAD_MAX_BATCH:
        # the pooler as the caller asked for it
        pooled = fused_pooler(hidden_states, weight, bias, activation=activation, backend=backend)
        return F.linear(pooled, classifier_weight, classifier_bias)
    # the launcher reads position 0 of each sequence through the strides: no [:, 0] view
    return classifier_head_fwd(
        hidden_states, weight, bias, classifier_weight, classifier_bias, activation
    )
