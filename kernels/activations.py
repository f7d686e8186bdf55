"""Activation epilogues shared by every kernel in this package.

Each is applied to the fp32 accumulator before the single cast at the store, so the activation never
sees a rounded intermediate. ``ACTIVATION`` is a ``tl.constexpr`` string: the branch is resolved at
compile time and each activation gets its own specialised binary.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from .runtime import interpreter_enabled

# Names the host side accepts; each maps to a branch of ``apply_activation`` below.
ACTIVATIONS = ("tanh", "gelu", "gelu_tanh", "relu", "identity")


# libdevice's exp2 and fast division compile to one MUFU instruction each (flush-to-zero, as
# Triton builds libdevice); tl.math's exp2 and approximate division add denormal-range scaling.
# Triton's interpreter has no libdevice (its calls return None): it takes tl.math's there.
_LIBDEVICE = tl.constexpr(not interpreter_enabled())


@triton.jit
def tanh_f32(x):
    # tanh(x) = (1 - t) / (1 + t), t = e^{-2|x|}, with the sign put back. t lies in [0, 1], so
    # nothing overflows: large |x| gives exactly +-1 (the naive (e^{2x}-1)/(e^{2x}+1) gives inf/inf
    # = NaN there), and the quotient itself is tanh|x| (no subtraction after the division). An
    # error e in t becomes 2t / (1 - t^2) * e in tanh: 8x at |x| = 1/16, 1.9x at 1/4, so below
    # 1/4 the odd Taylor series runs instead, to x^9 (the first omitted term, 1382 x^11 / 155925,
    # is 0.15 fp32 ulp at 1/4). exp2 and the division are approximate: CUDA documents 2 ulps for
    # exp2f and __fdividef, so about 1.9 * 2 + 2.5 ulps at the switch, less above it.
    # A NaN stays NaN: every comparison with it is false and the arithmetic propagates it.
    ax = tl.abs(x)
    if _LIBDEVICE:
        t = libdevice.exp2(ax * -2.8853900817779268)  # e^{-2|x|} = 2^{-2 log2(e) |x|}
        big = libdevice.copysign(libdevice.fast_dividef(1.0 - t, 1.0 + t), x)
    else:
        t = tl.math.exp2(ax * -2.8853900817779268)
        big = (1.0 - t) / (1.0 + t)
        big = tl.where(x < 0, -big, big)
    xs = tl.where(ax < 0.25, x, 0.0)  # keeps x^9 finite in the branch that is discarded
    x2 = xs * xs
    p = -1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))
    small = xs * (1.0 + x2 * p)  # xs * (...) keeps the sign of -0.0
    return tl.where(ax < 0.25, small, big)


@triton.jit
def tanh_to_half(x):
    # tanh for a result rounded next to fp16 or bf16, with one MUFU instruction per element (the
    # reciprocal) where tanh_exp_to_half and tanh_f32 take two, in as many instructions as
    # tanh_exp_to_half (12, sm_90 SASS): at large M the epilogue is what the fused kernel adds to
    # a GEMM, and its cost followed both counts, the MUFU's most. tanh(x) = x P(x^2) / Q(x^2), P
    # and Q cubics in x^2 with positive coefficients (no cancellation in Horner's rule), fitted
    # for least maximum relative error on |x| <= 4.6 (NOTES.md says how): 2^-25.1 in exact
    # arithmetic. In fp32 (x^2, six FMAs, two products and the reciprocal, each rounded once:
    # ~5 ulps in x P, ~4 in Q, 2 in the reciprocal) the relative error stays below 2^-20
    # everywhere, zero included: 1/512 of fp16's unit roundoff (2^-21.7 in an fp32 simulation
    # with fused multiply-adds, against mpmath, over 350k points). |x| is clamped at 4.6, where
    # tanh is within 2^-12.27 of 1: beyond it the result, 0.99979..., rounds to exactly 1 in fp16
    # and in bf16 (this form is for those results only); +-inf clamps alike, a NaN stays NaN.
    xc = tl.clamp(x, -4.6, 4.6, propagate_nan=tl.PropagateNan.ALL)
    t = xc * xc
    # Q and its reciprocal before P: written as one division, num / den, it compiled to 171
    # registers in the 128x128x64 w8 s3 TMA tile as launched with Triton 3.9 (92 with 3.6),
    # more than the 128 that let two CTAs of 8 warps share an SM; this way 91 with both
    den = 1.0 + t * (0.4592038 + t * (0.022283401 + t * 0.00017389843))
    if _LIBDEVICE:
        r = libdevice.fast_dividef(1.0, den)
    else:
        r = 1.0 / den
    num = xc * (1.0 + t * (0.12587076 + t * (0.0025482688 + t * 5.434667e-06)))
    return num * r


@triton.jit
def tanh_exp_to_half(x):
    # The exponential form tanh_to_half had before (runs 5 and 6), kept for bench.attribute's
    # same-run comparison: 1 - 2 / (e^{2x} + 1), two MUFU instructions (exp2 and the reciprocal);
    # e^{2x} = +inf gives 1, 0 gives -1, a NaN stays NaN. Absolute error below 2^-20 (exp2's 2
    # ulps and the argument's rounding, damped by (1 - y^2) / 2; 1 + e's half ulp; the
    # reciprocal's 2 ulps; all times 2; the final subtraction's), so below |x| = 1/8 the odd
    # Taylor series runs instead, to x^7 (the first omitted term, 62 x^9 / 2835, is 0.02 fp32 ulp
    # at 1/8).
    if _LIBDEVICE:
        e = libdevice.exp2(x * 2.8853900817779268)  # e^{2x} = 2^{2 log2(e) x}
        r = libdevice.fast_dividef(1.0, e + 1.0)
    else:
        # finite in numpy (tanh(20) is 1 in fp32); where() keeps a NaN, tl.minimum would not
        e = tl.math.exp2(tl.where(x > 20.0, 20.0, x) * 2.8853900817779268)
        r = 1.0 / (e + 1.0)
    big = 1.0 - 2.0 * r
    x2 = x * x
    p = -1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))
    small = x + (x * x2) * p
    return tl.where(tl.abs(x) < 0.125, small, big)


@triton.jit
def tanh_mufu(x):
    # The special-function unit's own tanh (PTX tanh.approx.f32, sm_75 and later): one MUFU
    # instruction per element and nothing else, where tanh_to_half takes a MUFU and eleven
    # other instructions (sm_90 SASS), but a relative error of about 2^-11
    # (PTX ISA), as large as fp16's unit roundoff, so no table ships it: bench.attribute times it
    # to show what the epilogue could still gain. The interpreter has no PTX: tanh_f32 there.
    if _LIBDEVICE:
        x = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)  # fmt: skip
    else:
        x = tanh_f32(x)
    return x


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr, ROUNDED_TO: tl.constexpr):
    """act(x) on an fp32 block whose result is next rounded to ROUNDED_TO (a tl.dtype)."""
    if ACTIVATION == "tanh":
        if ROUNDED_TO == tl.float32:
            x = tanh_f32(x)
        else:
            x = tanh_to_half(x)
    elif ACTIVATION == "tanh_f32":
        # tanh_f32 whatever the result's dtype: bench.attribute times what tanh_to_half saves
        x = tanh_f32(x)
    elif ACTIVATION == "tanh_exp_to_half":
        x = tanh_exp_to_half(x)  # bench.attribute only: the form before the rational one
    elif ACTIVATION == "tanh_mufu":
        x = tanh_mufu(x)  # bench.attribute only (accuracy: see tanh_mufu)
    elif ACTIVATION == "gelu":
        # exact GELU, as nn.GELU() and ACT2FN["gelu"]
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        # nn.GELU(approximate="tanh"), ACT2FN["gelu_new"/"gelu_pytorch_tanh"]
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (1.0 + tanh_f32(inner))
    elif ACTIVATION == "relu":
        # where() rather than maximum(): maximum(NaN, 0) is 0 on some backends; torch.relu keeps NaN
        x = tl.where(x < 0.0, 0.0, x)
    return x


@triton.jit
def activation_grad(dy, y, ACTIVATION: tl.constexpr):
    """dL/dz from dL/dy and the saved output y = act(z), in fp32; the backward kernels' prologue.

    Only activations whose derivative is a function of y are served here (tanh, relu, identity);
    the GELUs need z itself: bertpool_fast/ops.py recomputes it and forms dZ in torch
    (``reference.activation_grad_reference``), then calls the kernels with ACTIVATION="identity".
    """
    dy = dy.to(tl.float32)
    if ACTIVATION == "tanh":
        yf = y.to(tl.float32)
        dy = dy * (1.0 - yf * yf)
    elif ACTIVATION == "relu":
        # y > 0 exactly where z > 0; like torch's threshold_backward, a NaN y gives a zero gradient
        dy = tl.where(y.to(tl.float32) > 0.0, dy, 0.0)
    else:
        tl.static_assert(ACTIVATION == "identity", "activation_grad: derivative needs z")
    return dy
