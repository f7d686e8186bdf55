"""A launch cache: after the first call of a specialization, launch the compiled kernel directly.

``kernel[grid](...)`` runs Triton's ``JITFunction.run`` on every call: it binds the arguments into a
dict, specializes each one, builds a string cache key, looks the kernel up, builds launch metadata
and then calls the compiled kernel's launcher. For a kernel that takes a few microseconds on the GPU
that Python is most of the call. ``CachedLaunch`` keeps, per specialization, the launcher and the
function handle that Triton compiled, and on a hit calls the launcher itself, as Triton would:

    launcher(grid_0, grid_1, grid_2, stream, function, packed_metadata, launch_metadata,
             enter_hook, exit_hook, *args_in_signature_order)

The cache key holds everything Triton specializes a kernel on, read cheaply per call, so a cached
kernel never runs with arguments it was not compiled for (``triton/runtime/jit.py``
``create_function_from_signature`` and ``native_specialize_impl``, the same in triton 3.6 and 3.9):

* a tensor: its dtype and whether ``data_ptr() % 16 == 0`` (the "D" divisibility attribute);
* an int: equal to 1 (becomes a constexpr), divisible by 16 ("D"), and its type, i32 / i64 / u64;
* a bool, a float, None: no value specialization, only the kind;
* a host-side ``TensorDescriptor`` (``triton.tools.tensor_descriptor``, this class exactly): the
  dtype of its base and its block shape, which is all its type string ``tensordesc<fp16[128, 64]>``
  holds; the compiled launcher (``CudaLauncher`` -> ``wrap_handle_tensordesc``) expands the object
  into the TMA descriptor, sizes and strides on every launch, so the object itself is passed on;
* the constexpr values (with their types: ``True`` and ``1`` hash alike but compile apart),
  num_warps, num_stages, launch_pdl (a compile option: the launcher reads it from the compiled
  kernel's metadata), and the current CUDA device (``COMPILE_OPTIONS`` are the same for every
  launch).

Anything else (an argument of another kind, launch hooks set by a profiler, pre-run hooks, a changed
module global that the kernel reads, a triton whose launcher signature is not one this file knows,
the interpreter) takes the plain
``kernel[grid](...)`` path. Triton's process-wide compile switches (``TRITON_DEBUG``,
instrumentation) are read when a specialization is first cached; call ``clear_launch_caches()``
after changing them at run time.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch

from .runtime import interpreter_enabled

try:
    from triton.tools.tensor_descriptor import TensorDescriptor as _TENSOR_DESCRIPTOR
except ImportError:  # a triton without host-side descriptors: no argument is one
    _TENSOR_DESCRIPTOR = None

# Compile options every kernel of this package is launched (and inspected) with. Contracted
# multiply-adds: the epilogues' instruction counts and the activations' error bounds assume them
# (the rational tanh is six of its twelve instructions), and every GPU figure was measured with
# them. Triton 3.6 fuses by default; 3.9 does too but warns at the first compile that leaves it
# unset, and announces the default turns to no fusion in 3.10. TRITON_FORCE_DISABLE_FP_FUSION
# still turns it off.
COMPILE_OPTIONS = {"enable_fp_fusion": True}

_MISSING = object()
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_FLOAT = "fp32"
_BOOL = "u1"


def _spec(a: Any):
    """The part of Triton's specialization of one runtime argument that a key needs.

    Equal results imply equal Triton specializations (tests/test_launch_cache.py checks this
    against Triton's own helper); a kind Triton would not take raises TypeError (plain path).
    """
    cls = a.__class__
    if cls is int:
        if a == 1:
            return 1
        if _I32_MIN <= a <= _I32_MAX:
            return 16 if a & 15 == 0 else 0
        # i64 (sign bit 0 or -1) or u64 (1), each with or without "D"
        return (a >> 63, a & 15 == 0)
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() & 15 == 0)
    if cls is bool:
        return _BOOL
    if cls is float:
        return _FLOAT
    if a is None:
        return None
    if cls is _TENSOR_DESCRIPTOR:
        # typed "tensordesc<fp16[128, 64]>": the base's dtype and the block shape; no alignment
        # hint. Shape, strides and padding are launch-time values: the launcher expands the object
        # itself (fills the TMA descriptor, or passes them as plain arguments).
        return (_TENSOR_DESCRIPTOR, a.base.dtype, tuple(a.block_shape))
    raise TypeError(f"no cached launch for an argument of type {cls.__name__}")


# One argument's key, inline: the common cases (an i32 other than 1, a tensor) without a call.
_INLINE_SPEC = (
    "((16 if {a} & 15 == 0 else 0) if {a}.__class__ is int and {a} != 1"
    " and -2147483648 <= {a} <= 2147483647"
    " else ({a}.dtype, {a}.data_ptr() & 15 == 0) if isinstance({a}, Tensor) else spec({a}))"
)


def _make_key(num_args: int, num_constexprs: int) -> Callable:
    """``key(device, num_warps, num_stages, launch_pdl, constexprs, args)`` for one kernel's arity.

    Generated once per kernel, as Triton generates its binder: a loop calling ``_spec`` per
    argument costs a function call each. The constexprs' classes are in the key because ``True``
    and ``1`` are equal dict keys but Triton compiles them apart. Raises ValueError (wrong arity)
    or TypeError (an argument of an unknown kind): the caller then takes the plain path.
    """
    names = [f"a{i}" for i in range(num_args)]
    consts = [f"c{i}" for i in range(num_constexprs)]
    specs = "".join(_INLINE_SPEC.format(a=a) + ", " for a in names)
    classes = "".join(f"{c}.__class__, " for c in consts)
    src = (
        "def key(device, num_warps, num_stages, launch_pdl, constexprs, args):\n"
        f"    ({''.join(n + ', ' for n in names)}) = args\n"
        f"    ({''.join(c + ', ' for c in consts)}) = constexprs\n"
        f"    return (device, num_warps, num_stages, launch_pdl, constexprs, {classes}{specs})\n"
    )
    namespace = {"Tensor": torch.Tensor, "spec": _spec}
    exec(src, namespace)  # noqa: S102 - source built above from argument counts only
    return namespace["key"]


def grid_and_stream(grid, stream: int) -> tuple:
    """(gridX, gridY, gridZ, stream): the first four arguments of Triton's compiled launcher."""
    n = len(grid)
    return grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the grid. ``triton.cdiv`` is a ``constexpr_function`` whose host call
    unwraps its arguments through lists and dicts: measured ~13 us per call on a loaded CPU."""
    return -(a // -b)


def _cuda_readers() -> Optional[tuple[Callable[[], int], Callable[[int], int]]]:
    """(current device index, raw current stream of a device), the cheapest calls torch offers.

    ``torch._C._cuda_getDevice`` / ``_cuda_getCurrentRawStream`` are what Triton's own driver
    uses for the stream (triton/backends/driver.py, 3.6 and 3.9); they exist in CUDA builds of
    torch 2.11 and 2.13. Without them, the public (slower) calls do the same.
    """
    get_device = getattr(torch._C, "_cuda_getDevice", None)
    get_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_device is None or get_stream is None:
        if not torch.cuda.is_available():
            return None
        return torch.cuda.current_device, lambda i: torch.cuda.current_stream(i).cuda_stream
    return get_device, get_stream


def _launcher_protocol_ok() -> bool:
    """True when this triton launches compiled kernels the way ``CachedLaunch`` calls them.

    Checked once at import: ``JITFunction.run`` must return the ``CompiledKernel`` and the
    compiled kernel must expose ``run`` / ``function`` / ``packed_metadata``; the launcher's
    ``__call__`` must take (gridX, gridY, gridZ, stream, function, *args), the form of triton 3.6
    (metadata and hooks inside ``*args``) and 3.9 (named). Any other form: plain path everywhere.
    """
    try:
        from triton.compiler.compiler import CompiledKernel
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    if "return kernel" not in inspect.getsource(JITFunction.run):
        return False
    if not all(hasattr(CompiledKernel, name) for name in ("run", "launch_metadata")):
        return False
    try:
        from triton.backends.nvidia.driver import CudaLauncher
    except ImportError:
        return False
    params = list(inspect.signature(CudaLauncher.__call__).parameters)
    known = (
        ["self", "gridX", "gridY", "gridZ", "stream", "function", "args"],
        ["self", "gridX", "gridY", "gridZ", "stream", "function", "kernel_metadata",
         "launch_metadata", "launch_enter_hook", "launch_exit_hook", "args"],
    )  # fmt: skip
    return params in known


try:
    from triton import knobs

    # the launch hooks: HookChain objects in triton 3.6 and 3.9 (None, or a callable, if a user
    # assigned one)
    _RUNTIME_KNOBS = knobs.runtime
    _PROTOCOL_OK = _launcher_protocol_ok()
except ImportError:  # a triton before knobs: its launcher is not one this file knows
    _PROTOCOL_OK = False
_ALL_CACHES: list[CachedLaunch] = []


def clear_launch_caches() -> None:
    """Forget every cached specialization (e.g. after changing a Triton knob at run time)."""
    for cache in _ALL_CACHES:
        cache.entries.clear()


class CachedLaunch:
    """Launches one ``@triton.jit`` kernel, from its own cache after the first call.

    Call as ``launch(grid, args, constexprs, num_warps, num_stages)``: ``args`` are the kernel's
    runtime arguments and ``constexprs`` its constexpr values, each in signature order (the
    kernel must list its constexprs last). Both are tuples the caller builds anyway; nothing is
    allocated per call beyond the key tuple. ``launch_pdl=True``: compiled for, and launched
    with, programmatic dependent launch (Triton's option; the kernel must wait with
    ``gdc_wait`` before it touches memory).
    """

    def __init__(self, kernel, enabled: Optional[bool] = None):
        self.kernel = kernel
        fn = getattr(kernel, "fn", kernel)
        params = list(inspect.signature(fn).parameters.values())
        is_constexpr = ["constexpr" in str(p.annotation) for p in params]
        self.num_constexprs = sum(is_constexpr)
        self.num_args = len(params) - self.num_constexprs
        if any(is_constexpr[: self.num_args]):
            raise ValueError(f"{fn.__name__}: constexpr parameters must come after runtime ones")
        self.key = _make_key(self.num_args, self.num_constexprs)
        readers = _cuda_readers()
        if enabled is None:
            enabled = _PROTOCOL_OK and readers is not None and not interpreter_enabled()
        self.enabled = enabled
        if readers is not None:
            self.current_device, self.current_stream = readers
        self.entries: dict = {}
        self.used_globals: tuple = ()
        _ALL_CACHES.append(self)

    def plain(self, grid, args: tuple, constexprs: tuple, num_warps: int, num_stages: int,
              launch_pdl: bool = False):  # fmt: skip
        """Triton's own launch; returns what ``JITFunction.run`` returns (the compiled kernel)."""
        # launch_pdl only when set: a launch without it compiles as it always has
        options = {"launch_pdl": True, **COMPILE_OPTIONS} if launch_pdl else COMPILE_OPTIONS
        return self.kernel[grid](*args, *constexprs, num_warps=num_warps, num_stages=num_stages,
                                 **options)  # fmt: skip

    def __call__(self, grid, args: tuple, constexprs: tuple, num_warps: int, num_stages: int,
                 launch_pdl: bool = False):  # fmt: skip
        if not self.enabled:
            return self.plain(grid, args, constexprs, num_warps, num_stages, launch_pdl)
        device = self.current_device()
        try:
            key = self.key(device, num_warps, num_stages, launch_pdl, constexprs, args)
        except Exception:  # noqa: BLE001 - wrong arity, unknown kind, a tensor without storage
            return self.plain(grid, args, constexprs, num_warps, num_stages, launch_pdl)
        entry = self.entries.get(key)
        if entry is None:
            if self.hooked():
                return self.plain(grid, args, constexprs, num_warps, num_stages, launch_pdl)
            return self._miss(key, grid, args, constexprs, num_warps, num_stages, launch_pdl)
        if not self.launch_entry(entry, device, grid, args, constexprs):
            return self.plain(grid, args, constexprs, num_warps, num_stages, launch_pdl)
        return None

    def hooked(self) -> bool:
        """Whether launch or pre-run hooks are set (a profiler's): such launches are Triton's."""
        enter, leave = _RUNTIME_KNOBS.launch_enter_hook, _RUNTIME_KNOBS.launch_exit_hook
        return bool(
            getattr(enter, "calls", enter)
            or getattr(leave, "calls", leave)
            or self.kernel.pre_run_hooks
        )

    def entry_for(self, device: int, grid, args: tuple, constexprs: tuple, num_warps: int,
                  num_stages: int, launch_pdl: bool = False) -> Optional[tuple]:  # fmt: skip
        """The cached specialization these arguments hit, or None (not cached, cache off)."""
        if not self.enabled:
            return None
        try:
            key = self.key(device, num_warps, num_stages, launch_pdl, constexprs, args)
            return self.entries.get(key)
        except Exception:  # noqa: BLE001 - as in __call__: such arguments are never cached
            return None

    def direct_allowed(self) -> bool:
        """Whether a cached specialization may be launched directly now: the cache is on, no
        launch or pre-run hooks are set (a profiler's hooks need Triton's launch metadata) and no
        module global the kernel reads changed since it compiled (Triton refuses such a kernel)."""
        if not self.enabled or self.hooked():
            return False
        for namespace, name, value in self.used_globals:
            if namespace.get(name, _MISSING) is not value:
                return False
        return True

    def launch_entry(self, entry: tuple, device: int, grid, args: tuple, constexprs: tuple) -> bool:
        """Launch a cached specialization on ``device`` (the current one) without re-keying: the
        caller vouches that ``args`` specialize as the ones the entry was found with. False, and
        nothing launched, when Triton's own path must run instead (hooks set, a kernel global
        changed, the direct path disabled or just failed)."""
        if not self.direct_allowed():
            return False
        try:
            entry[0](*grid_and_stream(grid, self.current_stream(device)), entry[1], entry[2],
                     None, None, None, *args, *constexprs)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any failure of the direct path means "use Triton's"
            self._disable(err)
            return False
        return True

    def _miss(self, key, grid, args, constexprs, num_warps, num_stages, launch_pdl):
        compiled = self.plain(grid, args, constexprs, num_warps, num_stages, launch_pdl)
        if len(args) != self.num_args or len(constexprs) != self.num_constexprs:
            return compiled
        try:
            # the compiled kernel itself is kept too: its module is unloaded when it is collected
            # (CompiledKernel.__del__), e.g. after Triton's own cache drops it
            entry = (compiled.run, compiled.function, compiled.packed_metadata, compiled)
        except AttributeError:
            return compiled
        if entry[1] is not None:
            used = getattr(self.kernel, "used_global_vals", {})
            self.used_globals = tuple((ns, name, v) for (name, _), (v, ns) in used.items())
            self.entries[key] = entry
        return compiled

    def _disable(self, err: Exception) -> None:
        self.enabled = False
        self.entries.clear()
        name = getattr(getattr(self.kernel, "fn", None), "__name__", repr(self.kernel))
        warnings.warn(
            f"bertpool_fast: direct launch of {name} failed ({type(err).__name__}: {err}); "
            "using Triton's own launch for it from now on",
            RuntimeWarning,
            stacklevel=3,
        )
