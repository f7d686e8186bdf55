"""Deprecated name of :mod:`bertpool_fast.embedding_ops` (too close to ``kernels/masked_pool.py``)."""

import warnings

from .embedding_ops import l2_normalize, masked_pool, masked_pool_reference
from .validation import validate_masked_pool_args

warnings.warn(
    "bertpool_fast.masked_pooling is now bertpool_fast.embedding_ops",
    DeprecationWarning,
    stacklevel=2,
)
__all__ = ["l2_normalize", "masked_pool", "masked_pool_reference", "validate_masked_pool_args"]
