"""What it takes to compile a kernel configuration ahead of time, for a GPU this machine lacks.

Every kernel module lists its shipped configurations as ``KernelCase``s (``inspection_cases()``);
``python -m bertpool_fast inspect`` compiles each for a named target and reads registers, spills,
shared memory and tensor-core use from the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# SMs of the part each target's tables were written for (A100 SXM, H100 SXM; other parts of the
# same architecture have fewer): what ``programs_at`` tags are sized against.
REFERENCE_SMS = {"sm_80": 108, "sm_90": 132}


@dataclass(frozen=True)
class KernelCase:
    name: str  # readable id, e.g. "pooler_fwd fp16 M<=16"
    kernel: Any  # the @triton.jit function
    signature: dict[str, str]  # every non-constexpr argument -> Triton type ("*fp16", "i32")
    constexprs: dict[str, Any]  # every tl.constexpr argument -> its value
    num_warps: int
    num_stages: int
    launch_pdl: bool = False  # Triton's option for programmatic dependent launch
    dtype: torch.dtype = torch.float16
    # True where the case must use tensor cores (mma / wgmma): fp16/bf16 GEMM tiles
    expects_tensor_cores: bool = False
    # Arguments Triton's launcher sees as multiples of 16 in the usual call (pointers from torch's
    # allocator, H and its strides); compiled with the same "tt.divisibility" hint, so loads
    # vectorize as they do at run time. Integer arguments the launcher sees equal to 1 (unit
    # strides) go in ``constexprs``: Triton turns them into constants the same way.
    divisible_by_16: tuple[str, ...] = ()
    # e.g. "table", "only_arch", "config"; and "programs_at": {target: ((M, programs), ...)}, the
    # programs a launch makes at the edges of the batch sizes the configuration serves, on a GPU
    # of REFERENCE_SMS[target] SMs (``inspect`` turns them into waves)
    tags: dict[str, Any] = field(default_factory=dict)
