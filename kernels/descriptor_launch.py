"""Launching a cached TMA specialization with its tensor descriptors encoded once, not per launch.

A host-side ``TensorDescriptor`` argument costs more per launch than a pointer: Triton's launcher
(``wrap_handle_tensordesc``, triton 3.6 and 3.9) expands it on every launch into a ``CUtensorMap``
(``cuTensorMapEncodeTiled``, reached through Python), its sizes and its strides. Measured on the
H100's host: a planned TMA launch 17.6 us per call against 13.4 through pointers, same tile.
A ``CUtensorMap`` encodes addressing only (base address, sizes, strides, block shape, swizzle,
element type), so for the same address and layout it is the same 128 bytes every time, and the
launcher passes it by value (``__grid_constant__``): one encoded map may be passed to any number
of launches, CUDA-graph captures included. PyTorch Inductor's static launcher caches them the
same way, keyed by address.

``EncodedDescriptorLaunch`` wraps one cached specialization (a ``CachedLaunch`` entry) whose
first runtime arguments are descriptors:

* ``record`` launches as Triton does -- through Triton's own expanding wrapper, rebuilt from its
  code object with a recorder in place of the raw launcher -- then passes the recorded arguments
  to the raw launcher itself, and returns the descriptors' expansions (map, sizes, strides each);
* ``launch`` launches with expansions the caller kept, straight through the raw launcher.

The caller decides when a kept expansion still describes its tensor: the same base address,
element type, sizes, strides and block shape. Two launcher forms are known (the raw launcher's
arguments: (grid, stream, function, ..., *kernel_args) in 3.6 and (grid, stream, function, ...,
kernel_args) in 3.9); a wrapper of any other shape, global or profiling scratch, or a recording
that does not look as expected leaves this off for that kernel, and a raw launch that raises turns
it off for good (one warning): Triton's own launch stays correct in every case.
"""

from __future__ import annotations

import copy
import threading
import types
import warnings
from typing import Optional

from .launch import CachedLaunch, grid_and_stream

_ENCODED_MAP = "PyCUtensorMap"  # the encoded descriptor's Python type in triton 3.6 and 3.9
_failed = False  # set for good by a launch that raised


class EncodedDescriptorLaunch:
    __slots__ = ("cache", "entry", "raw", "descriptors", "base_tail", "nested", "width", "recorded",
                 "recording_run")  # fmt: skip

    def __init__(self, cache: CachedLaunch, entry: tuple, run, inner, raw, descriptors: int):
        """``run``: Triton's launcher object; ``inner``: its expanding wrapper around ``raw``."""
        self.cache, self.entry = cache, entry
        self.raw = raw
        self.descriptors = descriptors
        self.base_tail: Optional[tuple] = None  # the raw arguments after (grid, stream): per entry
        self.nested = False
        self.width = 0  # the raw arguments one descriptor expands to
        self.recorded = threading.local()
        self.recording_run = self._recording_run(run, inner)

    @classmethod
    def of(
        cls, cache: CachedLaunch, entry: tuple, descriptors: int
    ) -> Optional[EncodedDescriptorLaunch]:
        """One for a ``CachedLaunch`` entry whose first ``descriptors`` runtime arguments are
        tensor descriptors, or None where Triton's launcher is not of a known shape."""
        if _failed:
            return None
        run = entry[0]
        inner = getattr(run, "launch", None)
        code = getattr(inner, "__code__", None)
        closure = getattr(inner, "__closure__", None)
        if code is None or closure is None or "launcher" not in code.co_freevars:
            return None
        if getattr(run, "global_scratch_size", 0) or getattr(run, "profile_scratch_size", 0):
            return None  # scratch is allocated per launch, by the launcher object
        if getattr(run, "gsan_enabled", False):
            return None
        raw = closure[code.co_freevars.index("launcher")].cell_contents
        return cls(cache, entry, run, inner, raw, descriptors)

    def _recording_run(self, run, inner):
        """A copy of Triton's launcher object whose expanding wrapper, instead of launching,
        leaves the raw launcher's arguments in ``self.recorded.final`` (per thread)."""
        recorded = self.recorded

        def record(*final):
            recorded.final = final

        cells = tuple(
            types.CellType(record) if name == "launcher" else cell
            for name, cell in zip(inner.__code__.co_freevars, inner.__closure__)
        )
        wrapper = types.FunctionType(inner.__code__, inner.__globals__, inner.__name__,
                                     inner.__defaults__, cells)  # fmt: skip
        run = copy.copy(run)
        run.launch = wrapper
        return run

    def record(self, device: int, grid, args: tuple, constexprs: tuple) -> Optional[tuple]:
        """Launch as Triton would and return the descriptors' expansions, concatenated in order
        (what ``launch`` takes), or () when they cannot be reused (launched all the same), or
        None: nothing launched, take Triton's own path."""
        cache = self.cache
        if _failed or not cache.direct_allowed():
            return None
        head = grid_and_stream(grid, cache.current_stream(device))
        try:
            self.recording_run(*head, self.entry[1], self.entry[2], None, None, None,
                               *args, *constexprs)  # fmt: skip
            final = self.recorded.final
            self.recorded.final = None
            self.raw(*final)
        except Exception as err:  # noqa: BLE001 - the launcher is not the one this was made for
            _disable(err)
            return None
        width = self.width
        if not width:
            return self._expansions(final, head, (*args[self.descriptors :], *constexprs))
        # the layout is known (the same compiled kernel and wrapper): slice
        kernel_args = final[-1] if self.nested else final[len(self.base_tail) + 4 :]
        encoded = width * self.descriptors
        if len(kernel_args) != encoded + len(args) - self.descriptors + len(constexprs):
            return ()
        return tuple(kernel_args[:encoded])

    def _expansions(self, final: tuple, head: tuple, rest: tuple) -> tuple:
        """Split the first recorded raw call into the descriptors' expansions and keep its
        layout. () if the call is not laid out as expected: (grid, stream) first, then the
        expansions, each starting with an encoded map, then ``rest`` passed through."""
        nested = isinstance(final[-1], (list, tuple))
        if nested:
            base, kernel_args = final[:-1], tuple(final[-1])
        else:
            first = next((i for i, a in enumerate(final) if type(a).__name__ == _ENCODED_MAP), None)
            if first is None:
                return ()
            base, kernel_args = final[:first], final[first:]
        encoded = len(kernel_args) - len(rest)
        if (
            tuple(base[:4]) != head
            or encoded <= 0
            or encoded % self.descriptors
            or any(a is not b for a, b in zip(kernel_args[encoded:], rest))
        ):
            return ()
        width = encoded // self.descriptors
        if any(type(kernel_args[i]).__name__ != _ENCODED_MAP for i in range(0, encoded, width)):
            return ()
        self.base_tail, self.nested, self.width = tuple(base[4:]), nested, width
        return tuple(kernel_args[:encoded])

    def launch(self, device: int, grid, encoded: tuple, rest: tuple) -> bool:
        """Launch with ``encoded`` (the descriptors' kept expansions, concatenated in order)
        followed by ``rest`` (the other runtime arguments, then the constexprs). False, and
        nothing launched, when Triton's own path must run instead."""
        tail = self.base_tail
        if tail is None or _failed or not self.cache.direct_allowed():
            return False
        head = grid_and_stream(grid, self.cache.current_stream(device))
        try:
            if self.nested:
                self.raw(*head, *tail, [*encoded, *rest])
            else:
                self.raw(*head, *tail, *encoded, *rest)
        except Exception as err:  # noqa: BLE001 - any failure means "use Triton's"
            _disable(err)
            return False
        return True


def _disable(err: Exception) -> None:
    """After one failed launch, never again in this process (Triton's own launch instead)."""
    global _failed
    if _failed:
        return
    _failed = True
    warnings.warn(
        f"bertpool_fast: launching with encoded tensor descriptors failed "
        f"({type(err).__name__}: {err}); Triton's own launch from now on",
        RuntimeWarning,
        stacklevel=3,
    )
