"""Facts about where a kernel runs, read once."""

import os

# Triton reads TRITON_INTERPRET when a kernel is decorated, so the value when this package is
# imported (which decorates the kernels) is the one that counts. Read once here, so the launch path
# never reads the environment.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return _INTERPRETER
