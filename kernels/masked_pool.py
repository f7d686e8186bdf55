"""Sentence-embedding pooling: a masked reduction of ``hidden_states`` over the sequence, one pass.

``out[b] = pool_{s : mask[b, s] != 0} hidden_states[b, s, :]`` for the pooling modes of
sentence-transformers' ``Pooling`` (mean, mean_sqrt_len_tokens, max, cls, lasttoken, weightedmean),
optionally followed by L2 normalisation. It is purely memory-bound: every element of
``hidden_states`` that the mask keeps is read once (masked-out tokens are not even loaded), the
running sum / max lives in fp32 registers, and only [B, H] is written, in the input dtype.

Grid: one program per (batch row, H block), both folded into axis 0 with the H block varying
fastest, so neighbouring programs share a mask row and read neighbouring columns of the same tokens
(axis 1 would cap B at CUDA's gridDim.y limit of 65535). Each loops over S in BLOCK_S chunks,
loading the mask chunk and the [BLOCK_S, BLOCK_H] tile through the input's strides, so transposed
or sliced inputs cost no copy. cls / lasttoken / weightedmean first scan the mask row (S small
integers) for the first and last kept position.

Normalisation needs the whole row's norm. When one program owns the whole row (``ROW`` configs:
H <= 4096 and enough rows or little work per row to fill the GPU that way) it is done in the
epilogue, free. Otherwise the H-split kernel writes the fp32 pooled rows to a scratch buffer and
``l2_normalize_kernel`` rescales them: [B, H] fp32 written and read once more, which is S times
less traffic than the pass over ``hidden_states``, and one extra launch.

NaN propagates as in torch: a NaN in a kept token makes the pooled element NaN in every mode (max
included: Triton's max defaults to maxnum, which drops NaN), and a NaN anywhere in a row makes the
whole normalised row NaN, as ``F.normalize``. Masked-out tokens are never read, so nothing in them
(NaN included) reaches the output. The L2 norm is computed as ``amax * sqrt(sum((x / amax)^2))``,
so rows whose squares would overflow (|x| > ~1e19 in fp32) or underflow still normalise.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .launch import CachedLaunch, cdiv
from .precision import round_to
from .runtime import device_of, interpreter_enabled
from .tiles import pick_tile

POOL_MODES = ("mean", "mean_sqrt_len_tokens", "max", "cls", "lasttoken", "weightedmean")
# sentence-transformers clamps the token count / weight sum with min=1e-9, so an all-zero mask row
# gives 0 / 1e-9 = 0 for the mean modes; F.normalize divides by max(norm, 1e-12).
COUNT_EPS = 1e-9
NORM_EPS = 1e-12
# The same two values as the kernels see them (a @triton.jit function may only read constexpr
# globals): one definition, no literal in a kernel.
_COUNT_EPS = tl.constexpr(COUNT_EPS)
_NORM_EPS = tl.constexpr(NORM_EPS)
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


# Bounded: one entry per hidden size a process serves (a handful of models).
@functools.lru_cache(maxsize=64)
def row_config(h: int) -> MaskedPoolConfig:
    block_h = max(16, triton.next_power_of_2(h))
    return MaskedPoolConfig(max(1, ROW_TILE_ELEMS // block_h), block_h, 8 if block_h >= 2048 else 4)


def pick_pool_config(b: int, s: int, h: int, normalize: bool) -> tuple[MaskedPoolConfig, bool]:
    """(config, whole_row): whole_row means one program per row and normalisation in-kernel.

    Not cached: a server sees every (B, S) pair, and the choice is a few comparisons and a
    three-row table lookup, no dearer than hashing the key would be.
    """
    fits_row = h <= MAX_ROW_BLOCK_H  # MAX_ROW_BLOCK_H is a power of two: next_power_of_2(h) fits
    if normalize and fits_row and (b >= ROW_MIN_BATCH or s * h <= ROW_MAX_ELEMS):
        return row_config(h), True
    return pick_tile(POOL_CONFIGS, b), False


@triton.jit
def _nan_max(x, axis: tl.constexpr):
    """Max along ``axis`` that propagates NaN, as torch's amax does.

    tl.max lowers to maxnum (np.fmax in the interpreter), which drops NaN. The sum term is 0, or NaN
    when the slice holds one, and adding 0 changes no max (-inf included). Cheaper than a tl.reduce
    with a NaN-propagating combine function, which computes the same on a GPU but which Triton's
    interpreter runs one element at a time in Python (about 15x slower on a 2K-element tile).
    """
    is_num = x == x  # noqa: PLR0124 - False exactly where x is NaN
    return tl.max(x, axis=axis) + tl.sum(tl.where(is_num, 0.0, x), axis=axis)


@triton.jit
def _inv_norm(amax, ssq):
    """1 / max(||x||, eps) from amax = max|x| and ssq = sum((|x| / amax)^2), as F.normalize.

    An inf element makes the norm inf (x / inf: 0, and NaN for the inf itself, as torch); a NaN
    (amax is NaN then) makes the whole row NaN, which is why the clamp propagates it.
    """
    norm = tl.where(amax == float("inf"), amax, amax * tl.sqrt(ssq))
    # x * (1 / n) rather than x / n: within an ulp of it, and one division per row
    return 1.0 / tl.maximum(norm, _NORM_EPS, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _scaled_sq(a, amax):
    # (|x| / amax)^2 in [0, 1]: neither overflows nor underflows where x^2 would. A division, not
    # a multiplication by 1 / amax, which overflows for a subnormal amax. An all-zero row divides
    # by 1 (0 / 0 would be NaN); a NaN amax is dealt with in _inv_norm.
    y = a / tl.where(amax > 0, amax, 1.0)
    return y * y


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
    # axis 0 = (row, H block), H block fastest; int64: b * stride_xb reaches B * S * H elements,
    # past 2^31 at large batch and long sequences
    n_h = tl.cdiv(H, BLOCK_H)
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // n_h
    i_h = pid % n_h
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
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
                acc = tl.maximum(acc, _nan_max(b_x, 0), propagate_nan=tl.PropagateNan.ALL)
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
            acc = acc / tl.maximum(count, _COUNT_EPS)
        elif MODE == "mean_sqrt_len_tokens":
            acc = acc / tl.sqrt(tl.maximum(count, _COUNT_EPS))
        elif ZERO_EMPTY_MAX:
            # -inf / inf would make the normalised row NaN (F.normalize does); defined as 0 here
            acc = tl.where(count > 0, acc, 0.0)

    if NORMALIZE:
        # F.normalize(p=2, eps=1e-12) on the fp32 row, before the single rounding at the store.
        # where(): columns past H hold -inf in max mode and must not enter the norm.
        b_a = tl.where(m_h, tl.abs(acc), 0.0)
        amax = _nan_max(b_a, 0)
        acc = acc * _inv_norm(amax, tl.sum(_scaled_sq(b_a, amax), axis=0))
    b_out = round_to(acc, out_ptr.dtype.element_ty, INTERPRETED_BF16)
    tl.store(out_ptr + i_b * stride_ob + o_h, b_out, mask=m_h)


@triton.jit
def l2_normalize_kernel(
    x_ptr,  # [B, H] rows (fp32 pooled rows, or any float dtype from l2_normalize), any strides
    out_ptr,  # [B, H] output in the input dtype, unit column stride
    H,
    stride_xb,
    stride_xh,
    stride_ob,
    INTERPRETED_BF16: tl.constexpr,  # see round_to
    BLOCK_H: tl.constexpr,
):
    # One program per row, three sweeps over H (max |x|, scaled sum of squares, store): the row is
    # small and cache-resident after the first. Loads are widened to fp32: squares of fp16 overflow
    # past |x| = 256 and underflow below ~2e-4.
    i_b = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK_H)
    p_row = x_ptr + i_b * stride_xb
    amax_h = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        o_h = h0 + o
        b_x = tl.load(p_row + o_h.to(tl.int64) * stride_xh, mask=o_h < H, other=0.0)
        b_a = tl.abs(b_x.to(tl.float32))
        amax_h = tl.maximum(amax_h, b_a, propagate_nan=tl.PropagateNan.ALL)
    amax = _nan_max(amax_h, 0)
    ssq = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        o_h = h0 + o
        b_x = tl.load(p_row + o_h.to(tl.int64) * stride_xh, mask=o_h < H, other=0.0)
        ssq += _scaled_sq(tl.abs(b_x.to(tl.float32)), amax)
    scale = _inv_norm(amax, tl.sum(ssq, axis=0))
    for h0 in range(0, H, BLOCK_H):
        o_h = h0 + o
        m = o_h < H
        b_x = tl.load(p_row + o_h.to(tl.int64) * stride_xh, mask=m, other=0.0).to(tl.float32)
        b_out = round_to(b_x * scale, out_ptr.dtype.element_ty, INTERPRETED_BF16)
        tl.store(out_ptr + i_b * stride_ob + o_h, b_out, mask=m)


NORMALIZE_BLOCK_H = 1024

# Neither kernel pipelines a loop worth staging; Triton's default, passed explicitly because the
# launch cache keys on it.
NUM_STAGES = 3
_launch_masked_pool = CachedLaunch(masked_pool_fwd_kernel)
_launch_l2_normalize_kernel = CachedLaunch(l2_normalize_kernel)


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
    config: Optional[MaskedPoolConfig] = None,
) -> torch.Tensor:
    """Launch the masked pooling; inputs are validated by ``bertpool_fast.masked_pool``.

    x: [B, S, H] (any strides, S >= 1), mask: [B, S] (any strides, any integer/bool/float dtype)
    or None for "keep every token". config overrides the table's pick (tests); a config whose
    block_h covers H runs one program per row, so it normalises in-kernel. Returns [B, H] in x's
    dtype.
    """
    b, s, h = x.shape
    if out is None:
        out = torch.empty((b, h), dtype=x.dtype, device=x.device)
    if b == 0 or h == 0:
        return out
    if config is None:
        config, whole_row = pick_pool_config(b, s, h, normalize)
    else:
        whole_row = normalize and config.block_h >= h
    split_normalize = normalize and not whole_row
    # The H-split path keeps the un-normalised rows in fp32 for the normalisation step, so both
    # paths round once, at the very end.
    target = torch.empty((b, h), dtype=torch.float32, device=x.device) if split_normalize else out
    has_mask = mask is not None
    m = _mask_view(mask) if has_mask else x  # any valid pointer; never read without HAS_MASK
    # (row, H block) folded into axis 0: CUDA caps axes 1 and 2 at 65535, and B can pass that
    grid = (b * cdiv(h, config.block_h),)
    with device_of(x):
        _launch_masked_pool(
            grid,
            (x, m, target, s, h, x.stride(0), x.stride(1), x.stride(2),
             m.stride(0) if has_mask else 0, m.stride(1) if has_mask else 0, target.stride(0)),
            # MODE, HAS_MASK, NORMALIZE, ZERO_EMPTY_MAX, INTERPRETED_BF16, BLOCK_S, BLOCK_H
            (mode, has_mask, normalize and whole_row, normalize,
             _interpreted_bf16(target.dtype), config.block_s, config.block_h),
            config.num_warps,
            NUM_STAGES,
        )  # fmt: skip
        if split_normalize:
            _launch_l2_normalize(target, out)
    return out


def _launch_l2_normalize(x: torch.Tensor, out: torch.Tensor) -> None:
    # one program per row: B on axis 0, whose limit (2^31 - 1) no batch reaches
    _launch_l2_normalize_kernel(
        (x.shape[0],),
        (x, out, x.shape[1], x.stride(0), x.stride(1), out.stride(0)),
        (_interpreted_bf16(out.dtype), NORMALIZE_BLOCK_H),  # INTERPRETED_BF16, BLOCK_H
        4,
        NUM_STAGES,
    )  # fmt: skip


def l2_normalize_fwd(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.normalize(x, dim=-1) for a [B, H] tensor (any strides), in fp32, output in x's dtype.

    out, when given, is [B, H] in x's dtype with a unit column stride.
    """
    b, h = x.shape
    if out is None:
        out = torch.empty((b, h), dtype=x.dtype, device=x.device)
    if b == 0 or h == 0:
        return out
    # x is read through both strides: a transposed or column-sliced x costs no copy
    with device_of(x):
        _launch_l2_normalize(x, out)
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
                        "MODE": mode,
                        "HAS_MASK": True,
                        "NORMALIZE": normalize,
                        "ZERO_EMPTY_MAX": normalize,
                        "INTERPRETED_BF16": False,
                        "BLOCK_S": cfg.block_s,
                        "BLOCK_H": cfg.block_h,
                    },  # fmt: skip
                    num_warps=cfg.num_warps,
                    num_stages=3,
                    dtype=dtype,
                )
            )
        # x: the fp32 scratch after the H-split pooling, or l2_normalize's own input dtype
        for x_t in dict.fromkeys(("fp32", t)):
            cases.append(
                KernelCase(
                    name=f"l2_normalize {x_t} -> {t}",
                    kernel=l2_normalize_kernel,
                    signature={
                        "x_ptr": f"*{x_t}",
                        "out_ptr": f"*{t}",
                        "H": "i32",
                        "stride_xb": "i32",
                        "stride_ob": "i32",
                    },  # fmt: skip
                    # a unit column stride is a constant to the compiler, as it is at launch
                    constexprs={
                        "stride_xh": 1,
                        "INTERPRETED_BF16": False,
                        "BLOCK_H": NORMALIZE_BLOCK_H,
                    },  # fmt: skip
                    num_warps=4,
                    num_stages=3,
                    dtype=dtype,
                )
            )
    return cases
