"""Rounding at the store, the one place where an fp32 result becomes the output dtype."""

import triton
import triton.language as tl


@triton.jit
def round_to(x, dtype: tl.constexpr, INTERPRETED_BF16: tl.constexpr):
    """x (fp32) rounded to ``dtype`` to nearest-even, as the GPU's conversion does.

    Triton 3.9's interpreter truncates fp32 -> bf16 (round toward zero: twice the error, and
    biased), so under it the rounding is done here on the bits first; the conversion that follows
    is then exact. Compiled kernels (INTERPRETED_BF16 False) take the plain conversion.
    INTERPRETED_BF16 is the one name every kernel gives this condition (interpreter and bf16); the
    GEMM kernels also widen their bf16 operands under it, since the interpreter's tl.dot
    mishandles them.
    +-inf pass through (their low 16 bits are zero) and a quiet NaN, the only kind arithmetic
    produces, stays a NaN (its top mantissa bit survives the cut).
    """
    if INTERPRETED_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        # add half an ulp of bf16, minus one unless the kept part is odd (ties to even), then cut
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return x.to(dtype)
