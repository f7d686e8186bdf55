"""Triton kernels of bertpool_fast: pure ``@triton.jit`` functions, their configs and launchers.

Nothing here knows about ``nn.Module`` or transformers; ``bertpool_fast`` is the PyTorch layer.
Installed, this folder is the subpackage ``bertpool_fast.kernels``.
"""

from .activations import ACTIVATIONS
from .classifier_head import HEAD_CONFIGS, classifier_head_fwd, classifier_head_fwd_kernel
from .masked_pool import POOL_CONFIGS, POOL_MODES, masked_pool_fwd, masked_pool_fwd_kernel
from .pooler import POOLER_CONFIGS, pick_config, pooler_fwd, pooler_fwd_kernel
from .pooler_bwd import (
    BWD_ACTIVATIONS,
    DW_CONFIGS,
    DX_CONFIGS,
    pooler_bwd_dw,
    pooler_bwd_dw_kernel,
    pooler_bwd_dx,
    pooler_bwd_dx_kernel,
)
from .pooler_plan import plan_pooler_fwd
from .runtime import interpreter_enabled
from .tiles import TileConfig, pick_tile

__all__ = [
    "ACTIVATIONS",
    "BWD_ACTIVATIONS",
    "classifier_head_fwd",
    "classifier_head_fwd_kernel",
    "DW_CONFIGS",
    "DX_CONFIGS",
    "HEAD_CONFIGS",
    "POOL_CONFIGS",
    "POOL_MODES",
    "POOLER_CONFIGS",
    "TileConfig",
    "interpreter_enabled",
    "masked_pool_fwd",
    "masked_pool_fwd_kernel",
    "pick_config",
    "pick_tile",
    "plan_pooler_fwd",
    "pooler_bwd_dw",
    "pooler_bwd_dw_kernel",
    "pooler_bwd_dx",
    "pooler_bwd_dx_kernel",
    "pooler_fwd",
    "pooler_fwd_kernel",
]
