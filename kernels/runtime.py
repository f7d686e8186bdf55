"""Facts about where a kernel runs, read once, and the device a launch must run on."""

import contextlib
import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so the value when this package is
# imported (which decorates the kernels) is the one that counts. Read once here, so the launch path
# never reads the environment.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return _INTERPRETER


def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton."""
    import triton

    return tuple(int(v) for v in triton.__version__.split(".")[:2])


def _squeeze_scalar_arguments() -> None:
    # Triton's interpreter passes each scalar kernel argument as a 1-element array. Up to 3.7 its
    # tensor.__index__ is int(array), which NumPy >= 2.4 refuses ("only 0-dimensional arrays can
    # be converted to Python scalars"), so every `range(0, K, BLOCK_K)` loop failed. Triton 3.8+
    # squeezes the array first; give older releases that same __index__. Interpreter only.
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if triton_version() >= (3, 8) or original is None:
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor


if _INTERPRETER:
    _squeeze_scalar_arguments()


_NO_SWITCH = contextlib.nullcontext()


def device_of(t: torch.Tensor):
    """A context in which ``t``'s CUDA device is the current one, for the length of a launch.

    Triton launches on the *current* CUDA device, not on the tensors' device: with tensors on
    cuda:1 and cuda:0 current (accelerate's device_map, a model moved with ``.to("cuda:1")``) the
    kernel would read another GPU's addresses. The check costs one integer comparison when the
    device is already current, which is the usual case.
    """
    device = t.device
    if device.type != "cuda" or device.index is None:
        return _NO_SWITCH
    if device.index == torch.cuda.current_device():
        return _NO_SWITCH
    return torch.cuda.device(device)
