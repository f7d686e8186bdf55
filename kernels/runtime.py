"""Facts about where a kernel runs, read once."""

import functools
import os


@functools.lru_cache(maxsize=None)
def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter.

    Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, so the value at import time is the
    one that counts; it is cached here so the launch path never reads the environment again.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
