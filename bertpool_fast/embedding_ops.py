"""Sentence-embedding ops: ``masked_pool`` (pooling over the attention mask) and ``l2_normalize``.

The functional op validates, picks the backend and launches ``kernels/masked_pool.py``;
``masked_pool_reference`` is the plain-PyTorch definition (sentence-transformers' ``Pooling`` and
``Normalize`` semantics, written once) that the tests and the CPU fallback use. The drop-ins for
sentence-transformers' modules are in :mod:`bertpool_fast.sentence_pooling`.

Semantics (those of sentence-transformers' ``Pooling``; a mask entry counts as kept when nonzero):
  * mean: sum of kept tokens / max(count, 1e-9); mean_sqrt_len_tokens: / sqrt(max(count, 1e-9)).
  * max: elementwise max over kept tokens.
  * cls: the first kept token (after left padding, the first real token).
  * lasttoken: the last kept token (before right padding).
  * weightedmean: position s weighs s + 1 - (first kept position); sum / max(sum of weights, 1e-9).
  * normalize: x / max(||x||_2, 1e-12), as ``F.normalize``.
A mask row that keeps nothing gives: mean modes, weightedmean and lasttoken -> zeros; cls -> token 0;
max -> -inf (sentence-transformers 5+ fills with -inf). None of these is NaN. Normalised, zeros stay
zeros, and max's empty row is defined as zeros too: sentence-transformers' ``F.normalize`` turns its
-inf row into NaN there, the one place where this op deliberately differs (no NaN from a mask).
Non-finite values follow torch: a NaN in a kept token gives NaN in that element of the pooled row
(max included), and normalised, a NaN anywhere in the row makes the whole row NaN, as
``F.normalize``. Masked-out tokens are never read, so a NaN or inf there does not reach the output
in any mode (sentence-transformers' mean modes multiply it by 0, which gives NaN).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernels.masked_pool import COUNT_EPS, NORM_EPS, l2_normalize_fwd, masked_pool_fwd
from .validation import KERNEL_DTYPES, check_backend, resolve_backend, validate_masked_pool_args


def masked_pool_reference(
    hidden_states: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    mode: str = "mean",
    normalize: bool = False,
) -> torch.Tensor:
    """Plain PyTorch, same semantics as the kernel; float64 inputs give a float64 reference.

    Accumulates in fp32 for fp16/bf16 (fp64 for fp64) and casts once at the end; the mask is read
    as "nonzero = kept".
    """
    x = hidden_states
    b, s, h = x.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = (
        torch.ones((b, s), dtype=torch.bool, device=x.device)
        if attention_mask is None
        else attention_mask != 0
    )
    positions = torch.arange(s, device=x.device)
    any_kept = keep.any(dim=1)
    first = torch.where(any_kept, keep.int().argmax(dim=1), 0)
    last = torch.where(any_kept, s - 1 - keep.flip(1).int().argmax(dim=1), 0)
    xf = x.to(acc_dtype)
    rows = torch.arange(b, device=x.device)
    # masked-out tokens are replaced (where), never multiplied by 0: the kernel does not read them,
    # so a NaN or inf there must not reach the output (NaN * 0 is NaN)
    if mode == "cls":
        out = xf[rows, first]
    elif mode == "lasttoken":
        out = torch.where(any_kept[:, None], xf[rows, last], 0.0)
    elif mode == "max":
        out = xf.masked_fill(~keep[:, :, None], float("-inf")).amax(dim=1)
    else:
        if mode == "weightedmean":
            w = (positions[None, :] + 1 - first[:, None]).to(acc_dtype) * keep
        else:
            w = keep.to(acc_dtype)
        total = (xf.masked_fill(~keep[:, :, None], 0.0) * w[:, :, None]).sum(dim=1)
        denom = w.sum(dim=1, keepdim=True).clamp(min=COUNT_EPS)
        out = total / (denom.sqrt() if mode == "mean_sqrt_len_tokens" else denom)
    if normalize:
        if mode == "max":
            out = torch.where(any_kept[:, None], out, 0.0)  # not -inf / inf = NaN: see above
        out = F.normalize(out, p=2, dim=-1, eps=NORM_EPS)
    return out.to(x.dtype)


def masked_pool(
    hidden_states: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    mode: str = "mean",
    normalize: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Pool token embeddings over the attention mask in one fused pass: [B, S, H] -> [B, H].

    hidden_states: [B, S, H], any strides (a transposed [S, B, H] tensor or an H-slice of a wider
    one is read in place). attention_mask: [B, S] (bool, integer or float; nonzero = kept; left or
    right padding) or None for "every token kept".
    mode: ``"mean"``, ``"mean_sqrt_len_tokens"``, ``"max"``, ``"cls"``, ``"lasttoken"``,
    ``"weightedmean"`` - sentence-transformers' ``Pooling`` modes, with its exact semantics
    (see the module docstring, including rows whose mask keeps nothing).
    normalize: L2-normalise each row afterwards (``F.normalize``, eps 1e-12), fused.
    Sums run in fp32; the output is in the input dtype. Forward only (inference).
    """
    validate_masked_pool_args(hidden_states, attention_mask, mode, normalize, backend)
    chosen = resolve_backend(backend, hidden_states.device, hidden_states.dtype)
    if chosen == "torch" or (torch.is_grad_enabled() and hidden_states.requires_grad):
        # the kernel has no backward; autograd goes through the reference, which is differentiable
        return masked_pool_reference(hidden_states, attention_mask, mode, normalize)
    return masked_pool_fwd(hidden_states, attention_mask, mode, normalize)


def l2_normalize(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``F.normalize(x, p=2, dim=-1)`` for [..., H] in one kernel (fp32 inside, input dtype out).

    x: any floating-point tensor of at least one dimension, any strides; float64 (and complex, as
    F.normalize takes it) is served by torch. An empty last dimension (H = 0) gives an empty tensor
    of x's shape, as F.normalize does.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (the one normalised)")
    check_backend(backend)
    chosen = (
        "torch" if x.dtype not in KERNEL_DTYPES else resolve_backend(backend, x.device, x.dtype)
    )
    if chosen == "torch" or (torch.is_grad_enabled() and x.requires_grad):
        return F.normalize(x, p=2, dim=-1, eps=NORM_EPS)
    h = x.shape[-1]
    if h == 0:
        # nothing to normalise; reshape(-1, 0) below would be ambiguous
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    # [..., H] -> [N, H]: a view where the strides allow it; the kernel reads both strides
    flat = x if x.dim() == 2 else x.reshape(-1, h)
    return l2_normalize_fwd(flat).reshape(x.shape)
