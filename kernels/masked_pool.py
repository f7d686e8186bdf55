"""Sentence-embedding pooling: a masked reduction of ``hidden_states`` over the sequence, one pass.

``out[b] = pool_{s : mask[b, s] != 0} hidden_states[b, s, :]`` for the pooling modes of
sentence-transformers' ``Pooling`` (mean, mean_sqrt_len_tokens, max, cls, lasttoken, weightedmean),
optionally followed by L2 normalisation. It is purely memory-bound: every element of
``hidden_states`` that the mask keeps is read once (masked-out tokens are not even loaded), the
running sum / max lives in fp32 registers, and only [B, H] is written, in the input dtype.

Grid: one program per (H block, batch row). Each loops over S in BLOCK_S chunks, loading the mask
chunk and the [BLOCK_S, BLOCK_H] tile through the input's strides, so transposed or sliced inputs
cost no copy. cls / lasttoken / weightedmean first scan the mask row (S small integers) for the
first and last kept position.

Normalisation needs the whole row's norm. When one program owns the whole row (``ROW`` configs:
H <= 4096 and enough rows or little work per row to fill the GPU that way) it is done in the
epilogue, free. Otherwise the H-split kernel writes the fp32 pooled rows to a scratch buffer and
``l2_normalize_kernel`` rescales them: [B, H] fp32 written and read once more, which is S times
less traffic than the pass over ``hidden_states``, and one extra launch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .precision import round_to
from .runtime import interpreter_enabled

POOL_MODES = ("mean", "mean_sqrt_len_tokens", "max", "cls", "lasttoken", "weightedmean")
# sentence-transformers clamps the token count / weight sum with min=1e-9, so an all-zero mask row
# gives 0 / 1e-9 = 0 for the mean modes; F.normalize divides by max(norm, 1e-12).
COUNT_EPS = 1e-9
NORM_EPS = 1e-12
# Above this, a whole row no longer fits one program's registers; the H-split path is used.
MAX_ROW_BLOCK_H = 4096
# Elements of one [BLOCK_S, BLOCK_H] tile in the whole-row configs: 8 KiB of fp16 per iteration.
ROW_TILE_ELEMS = 4096


class MaskedPoolConfig(NamedTuple):
    block_s: int
    block_h: int
    num_warps: int


# H-split configs keyed by the largest B each row serves. Small batches take narrow H blocks, so
# there are enough programs to pull bandwidth from many SMs (B = 8, H = 768: 96 programs); large
# batches take wide ones (longer contiguous reads, fewer mask re-reads). A tile is 2-4K elements.
POOL_CONFIGS = (
    (16, MaskedPoolConfig(32, 64, 4)),
    (128, MaskedPoolConfig(32, 128, 4)),
    (None, MaskedPoolConfig(16, 256, 4)),
)
# Whole-row (normalising) programs are used when there are enough rows to fill the GPU with one
# program each, or when a row is so little work that splitting it would only add a second launch.
ROW_MIN_BATCH = 256
ROW_MAX_ELEMS = 1 << 16


@functools.lru_cache(maxsize=None)
def row_config(h: int) -> MaskedPoolConfig:
    block_h = max(16, triton.next_power_of_2(h))
    return MaskedPoolConfig(max(1, ROW_TILE_ELEMS // block_h), block_h, 8 if block_h >= 2048 else 4)


@functools.lru_cache(maxsize=None)
def pick_pool_config(b: int, s: int, h: int, normalize: bool) -> tuple[MaskedPoolConfig, bool]:
    """(config, whole_row): whole_row means one program per row and normalisation in-kernel."""
    fits_row = triton.next_power_of_2(max(h, 1)) <= MAX_ROW_BLOCK_H
    if normalize and fits_row and (b >= ROW_MIN_BATCH or s * h <= ROW_MAX_ELEMS):
        return row_config(h), True
    for max_b, config in POOL_CONFIGS:
        if max_b is None or b <= max_b:
            return config, False
    raise AssertionError("unreachable: the last row of the table has max_b=None")


@triton.jit
def masked_pool_fwd_kernel(
    x_ptr,  # [B, S, H] token embeddings, any strides
    mask_ptr,  # [B, S] attention mask, any integer/float dtype, nonzero = keep (unused without HAS_MASK)
    out_ptr,  # [B, H] output (input dtype, or fp32 scratch before a separate normalisation)
    S,
    H,
    stride_xb,
    stride_xs,
    stride_xh,
    stride_mb,
    stride_ms,
    stride_ob,
    MODE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NORMALIZE: tl.constexpr,  # only with BLOCK_H >= H: this program owns the whole row
    ZERO_EMPTY_MAX: tl.constexpr,  # normalisation follows: an all-masked max row pools to 0
    INTERPRETED_BF16: tl.constexpr,  # see round_to
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    i_h = tl.program_id(0)
    # int64: b * stride_xb reaches B * S * H elements, past 2^31 at large batch and long sequences
    i_b = tl.program_id(1).to(tl.int64)
    o_h = i_h.to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < H
    p_row = x_ptr + i_b * stride_xb + o_h * stride_xh
    p_mrow = mask_ptr + i_b * stride_mb

    # First and last kept positions; without a mask every position is kept.
    first = 0
    last = S - 1
    if HAS_MASK and (MODE == "cls" or MODE == "lasttoken" or MODE == "weightedmean"):
        first = S
        last = -1
        for s0 in range(0, S, BLOCK_S):
            o_s = s0 + tl.arange(0, BLOCK_S)
            b_m = tl.load(p_mrow + o_s.to(tl.int64) * stride_ms, mask=o_s < S, other=0)
            keep = (b_m != 0) & (o_s < S)
            first = tl.minimum(first, tl.min(tl.where(keep, o_s, S), axis=0))
            last = tl.maximum(last, tl.max(tl.where(keep, o_s, -1), axis=0))

    if MODE == "cls":
        # sentence-transformers takes attention_mask.argmax(1): the first kept token, or token 0
        # when the row keeps none (argmax of all zeros is 0). Left padding thus gives the first
        # real token, not position 0.
        i_s = tl.where(first < S, first, 0).to(tl.int64)
        acc = tl.load(p_row + i_s * stride_xs, mask=m_h, other=0.0).to(tl.float32)
    elif MODE == "lasttoken":
        # The last kept token; a row that keeps none gives zeros (sentence-transformers gathers
        # token 0 of hidden_states * mask, which is 0 there).
        i_s = tl.maximum(last, 0).to(tl.int64)
        acc = tl.load(p_row + i_s * stride_xs, mask=m_h, other=0.0).to(tl.float32)
        acc = tl.where(last >= 0, acc, 0.0)
    else:
        if MODE == "max":
            acc = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
        count = tl.sum(tl.zeros((BLOCK_S,), dtype=tl.float32), axis=0)  # an fp32 scalar
        for s0 in range(0, S, BLOCK_S):
            o_s = s0 + tl.arange(0, BLOCK_S)
            keep = o_s < S
            if HAS_MASK:
                b_m = tl.load(p_mrow + o_s.to(tl.int64) * stride_ms, mask=keep, other=0)
                keep = keep & (b_m != 0)
            p_x = p_row[None, :] + o_s.to(tl.int64)[:, None] * stride_xs
            m_x = keep[:, None] & m_h[None, :]
            if MODE == "max":
                # masked tokens read as -inf, as sentence-transformers' masked_fill(-inf); an
                # all-masked row stays -inf
                b_x = tl.load(p_x, mask=m_x, other=float("-inf")).to(tl.float32)
                acc = tl.maximum(acc, tl.max(b_x, axis=0))
                if ZERO_EMPTY_MAX:
                    count += tl.sum(keep.to(tl.float32), axis=0)
            elif MODE == "weightedmean":
                # weight of position s is s + 1 - (first kept position): sentence-transformers'
                # arange(1, S + 1) - argmax(mask), which restarts at 1 after left padding
                w = tl.where(keep, (o_s + 1 - first).to(tl.float32), 0.0)
                b_x = tl.load(p_x, mask=m_x, other=0.0).to(tl.float32)
                acc += tl.sum(b_x * w[:, None], axis=0)
                count += tl.sum(w, axis=0)
            else:
                b_x = tl.load(p_x, mask=m_x, other=0.0).to(tl.float32)
                acc += tl.sum(b_x, axis=0)
                count += tl.sum(keep.to(tl.float32), axis=0)
        if MODE == "mean" or MODE == "weightedmean":
            acc = acc / tl.maximum(count, 1e-9)
        elif MODE == "mean_sqrt_len_tokens":
            acc = acc / tl.sqrt(tl.maximum(count, 1e-9))
        elif ZERO_EMPTY_MAX:
            # -inf / inf would make the normalised row NaN (F.normalize does); defined as 0 here
            acc = tl.where(count > 0, acc, 0.0)

    if NORMALIZE:
        # F.normalize(p=2, eps=1e-12) on the fp32 row, before the single rounding at the store.
        # where(): columns past H hold -inf in max mode and must not enter the norm.
        sq = tl.where(m_h, acc * acc, 0.0)
        acc = acc / tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), 1e-12)
    b_out = round_to(acc, out_ptr.dtype.element_ty, INTERPRETED_BF16)
    tl.store(out_ptr + i_b * stride_ob + o_h, b_out, mask=m_h)


@triton.jit
def l2_normalize_kernel(
    x_ptr,  # [B, H] fp32 pooled rows, contiguous
    out_ptr,  # [B, H] output in the input dtype, contiguous
    H,
    stride_xb,
    stride_ob,
    INTERPRETED_BF16: tl.constexpr,  # see round_to
    BLOCK_H: tl.constexpr,
):
    # One program per row, two sweeps over H: the row is fp32 and L2-resident, just written.
    i_b = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK_H)
    sq = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        m = (h0 + o) < H
        b_x = tl.load(x_ptr + i_b * stride_xb + h0 + o, mask=m, other=0.0)
        sq += b_x * b_x
    scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), 1e-12)
    for h0 in range(0, H, BLOCK_H):
        m = (h0 + o) < H
        b_x = tl.load(x_ptr + i_b * stride_xb + h0 + o, mask=m, other=0.0)
        # x * (1 / n) rather than x / n: within an ulp of it, and one division per row
        b_out = round_to(b_x * scale, out_ptr.dtype.element_ty, INTERPRETED_BF16)
        tl.store(out_ptr + i_b * stride_ob + h0 + o, b_out, mask=m)


NORMALIZE_BLOCK_H = 1024


def _interpreted_bf16(dtype: torch.dtype) -> bool:
    return interpreter_enabled() and dtype == torch.bfloat16


def _mask_view(mask: torch.Tensor) -> torch.Tensor:
    # Triton's bool pointers are awkward (i1); a bool tensor is reinterpreted as uint8, no copy.
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def masked_pool_fwd(
    x: torch.Tensor,
    mask: Optional[torch.Tensor],
    mode: str,
    normalize: bool,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the masked pooling; inputs are validated by ``bertpool_fast.masked_pool``.

    x: [B, S, H] (any strides, S >= 1), mask: [B, S] (any strides, any integer/bool/float dtype)
    or None for "keep every token". Returns [B, H] in x's dtype.
    """
    b, s, h = x.shape
    if out is None:
        out = torch.empty((b, h), dtype=x.dtype, device=x.device)
    if b == 0 or h == 0:
        return out
    config, whole_row = pick_pool_config(b, s, h, normalize)
    split_normalize = normalize and not whole_row
    # The H-split path keeps the un-normalised rows in fp32 for the normalisation step, so both
    # paths round once, at the very end.
    target = torch.empty((b, h), dtype=torch.float32, device=x.device) if split_normalize else out
    has_mask = mask is not None
    m = _mask_view(mask) if has_mask else x  # any valid pointer; never read without HAS_MASK
    grid = (triton.cdiv(h, config.block_h), b)
    masked_pool_fwd_kernel[grid](
        x,
        m,
        target,
        s,
        h,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        m.stride(0) if has_mask else 0,
        m.stride(1) if has_mask else 0,
        target.stride(0),
        MODE=mode,
        HAS_MASK=has_mask,
        NORMALIZE=normalize and whole_row,
        ZERO_EMPTY_MAX=normalize,
        INTERPRETED_BF16=_interpreted_bf16(target.dtype),
        BLOCK_S=config.block_s,
        BLOCK_H=config.block_h,
        num_warps=config.num_warps,
    )
    if split_normalize:
        l2_normalize_kernel[(b,)](
            target, out, h, target.stride(0), out.stride(0),
            INTERPRETED_BF16=_interpreted_bf16(out.dtype), BLOCK_H=NORMALIZE_BLOCK_H, num_warps=4,
        )  # fmt: skip
    return out


def l2_normalize_fwd(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.normalize(x, dim=-1) for a [B, H] tensor, computed in fp32, output in x's dtype."""
    b, h = x.shape
    if out is None:
        out = torch.empty((b, h), dtype=x.dtype, device=x.device)
    if b == 0 or h == 0:
        return out
    # The kernel reads rows contiguously; a [B, H] copy is S times smaller than a pooling pass.
    src = x if x.stride(1) == 1 else x.contiguous()
    l2_normalize_kernel[(b,)](
        src, out, h, src.stride(0), out.stride(0),
        INTERPRETED_BF16=_interpreted_bf16(out.dtype), BLOCK_H=NORMALIZE_BLOCK_H, num_warps=4,
    )  # fmt: skip
    return out


# Row widths compiled ahead for the whole-row configs: MiniLM (384), BERT-base (768), 4096.
INSPECTED_ROW_H = (384, 768, 4096)
# cls shares lasttoken's code path and mean_sqrt_len_tokens shares mean's: one of each is compiled.
INSPECTED_MODES = ("mean", "max", "weightedmean", "lasttoken")


def inspection_cases() -> list:
    """Every shipped (dtype, config) of the pooling kernels, as compile-ahead cases."""
    from .inspection import TRITON_DTYPE, KernelCase

    pool_sig = {
        "x_ptr": None, "mask_ptr": "*i64", "out_ptr": None, "S": "i32", "H": "i32",
        "stride_xb": "i64", "stride_xs": "i32", "stride_xh": "i32",
        "stride_mb": "i32", "stride_ms": "i32", "stride_ob": "i32",
    }  # fmt: skip
    cases = []
    for dtype, t in TRITON_DTYPE.items():
        sig = {**pool_sig, "x_ptr": f"*{t}", "out_ptr": f"*{t}"}
        runs = [
            (f"B<={max_b}" if max_b is not None else "B>128", cfg, mode, False)
            for max_b, cfg in POOL_CONFIGS
            for mode in INSPECTED_MODES
        ]
        runs += [(f"row H={h}", row_config(h), "mean", True) for h in INSPECTED_ROW_H]
        for bucket, cfg, mode, normalize in runs:
            cases.append(
                KernelCase(
                    name=f"masked_pool_fwd {t} {mode}{' normalize' if normalize else ''} {bucket}",
                    kernel=masked_pool_fwd_kernel,
                    signature=sig,
                    constexprs={
                        "MODE": mode, "HAS_MASK": True, "NORMALIZE": normalize,
                        "ZERO_EMPTY_MAX": normalize, "INTERPRETED_BF16": False,
                        "BLOCK_S": cfg.block_s, "BLOCK_H": cfg.block_h,
                    },  # fmt: skip
                    num_warps=cfg.num_warps,
                    num_stages=3,
                    dtype=dtype,
                )
            )
        cases.append(
            KernelCase(
                name=f"l2_normalize {t}",
                kernel=l2_normalize_kernel,
                signature={"x_ptr": "*fp32", "out_ptr": f"*{t}", "H": "i32",
                           "stride_xb": "i32", "stride_ob": "i32"},  # fmt: skip
                constexprs={"INTERPRETED_BF16": False, "BLOCK_H": NORMALIZE_BLOCK_H},
                num_warps=4,
                num_stages=3,
                dtype=dtype,
            )
        )
    return cases
