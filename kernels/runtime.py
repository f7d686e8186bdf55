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
