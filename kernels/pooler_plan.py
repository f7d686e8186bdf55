"""Prepared pooler launches: ``pooler_fwd`` worked out once per weight and batch size, so that
later calls skip the table lookup and the launch cache's key (``bertpool_fast.ops`` uses them for
inference)."""

from __future__ import annotations

from typing import Optional

import torch

# a plan makes pooler_fwd's own choices (table pick, arguments, launch cache), read from the
# pooler module at planning time
from . import pooler
from .descriptor_launch import EncodedDescriptorLaunch
from .pooler import TMA_MAX_STRIDE, split_k_scratch, stream_k_scratch_sizes, tensor_descriptor

# Row addresses whose encoded maps a TMA plan keeps (and that it remembers as seen once). In a
# model loop the last hidden states of one call are usually still alive (returned to the caller)
# while the next call's are made, so consecutive calls alternate between two addresses or more.
KEPT_ROWS = 4


def _tensor_key(t: torch.Tensor) -> tuple:
    # what the kernel reads of a weight or bias: its memory, element type and layout
    return (t.data_ptr(), t.dtype, t.shape, t.stride())


_I32_MAX = (1 << 31) - 1


def plan_pooler_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str
) -> Optional[PoolerPlan]:
    """A ``PoolerPlan`` for calls like this one (``pooler_fwd``'s table pick), or None when its
    launch is not in the launch cache (not launched yet, the interpreter, Triton's own path)."""
    if not pooler.launch_pooler_fwd.enabled:
        return None
    m, n = x.shape[0], weight.shape[0]
    if x.dim() != 3 or m == 0 or n == 0:
        return None
    device = x.device
    width = pooler.square_width(n, x.shape[-1])
    config = pooler.pick_config(m, x.dtype, False, pooler.device_arch(device), width)
    out = torch.empty((m, n), dtype=x.dtype, device=device)
    launch, grid, args, constexprs = pooler.launch_args(
        x, weight, bias, activation, out, config, device
    )
    index = x.get_device()
    entry = launch.entry_for(index, grid, args, constexprs, config.num_warps, config.num_stages,
                             pooler.launches_pdl(config))  # fmt: skip
    if entry is None or out.data_ptr() & 15:
        return None
    # a TMA tile's plan keeps the descriptors' block shapes (a descriptor object kept for the
    # weight would keep the weight alive) and launches with their encoded forms where it can
    tma_blocks = encoded = stream_k = None
    if launch is pooler.launch_pooler_fwd_tma or launch is pooler.launch_pooler_fwd_stream_k:
        tma_blocks = (args[0].block_shape, args[1].block_shape)
        encoded = EncodedDescriptorLaunch.of(launch, entry, 2)
    if launch is pooler.launch_pooler_fwd_stream_k:  # its scratch follows the output
        stream_k = stream_k_scratch_sizes(config, grid[0], m, n)
    split_k = 1 if config.persistent or tma_blocks else grid[2]
    return PoolerPlan(x, weight, bias, activation, launch, entry, grid, constexprs, index,
                      split_k, config.persistent, tma_blocks, encoded, stream_k)  # fmt: skip


class PoolerPlan:
    """``pooler_fwd`` worked out once for one weight, bias, activation, batch size and dtype on
    one device: the tile, grid, constexprs and cached compiled kernel. ``run`` launches it for new
    ``hidden_states`` after a few comparisons, instead of the table lookup and the launch cache's
    key: every kernel argument must be what the plan was made with, except the rows' address
    (same 16-byte alignment), the row stride (same Triton specialization: its sequence length
    may change) and the output's address. Anything else returns None: call ``pooler_fwd``. A TMA
    tile's plan also needs the row stride a descriptor can hold (a multiple of 16 bytes); it
    keeps encoded descriptors (``EncodedDescriptorLaunch``) for the last few row addresses: the
    weight's, valid while the weight passes the checks above, and the rows', valid for the same
    address and row stride (M, K and dtype are the plan's). Rows elsewhere encode both again,
    through Triton's own launch the first time they are seen, recorded and kept the second.

    Holds no tensor: the weight and bias are recognised by address, dtype, shape and strides."""

    __slots__ = (
        "m", "k", "n", "dtype", "device", "index", "activation", "weight_key", "bias_key",
        "x_col_stride", "x_row_div16", "x_aligned", "launch", "entry", "grid", "constexprs",
        "ints_after_row_stride", "split_k", "persistent", "scratch_sizes", "device_type",
        "tma_blocks", "w_row_stride", "tma_ints", "encoded", "kept_maps", "seen_rows",
        "stream_k_scratch",
    )  # fmt: skip

    def __init__(self, x, weight, bias, activation, launch, entry, grid, constexprs, index,
                 split_k, persistent, tma_blocks=None, encoded=None,
                 stream_k_scratch=None):  # fmt: skip
        shape, strides = x.shape, x.stride()
        self.m, self.k, self.n = shape[0], shape[-1], weight.shape[0]
        self.dtype, self.device, self.index = x.dtype, x.device, index
        self.device_type = x.device.type
        self.activation = activation
        self.weight_key = _tensor_key(weight)
        self.bias_key = None if bias is None else _tensor_key(bias)
        self.x_col_stride = strides[2]
        self.x_row_div16 = strides[0] & 15 == 0
        self.x_aligned = x.data_ptr() & 15 == 0
        self.launch, self.entry, self.grid, self.constexprs = launch, entry, grid, constexprs
        w_strides = weight.stride()
        self.ints_after_row_stride = (strides[2], w_strides[0], w_strides[1],
                                      0 if bias is None else bias.stride(0), self.n)  # fmt: skip
        self.split_k, self.persistent = split_k, persistent
        tiles = grid[0] * grid[1] if split_k > 1 else 0
        self.scratch_sizes = (split_k * self.m * self.n, tiles)
        self.tma_blocks, self.w_row_stride = tma_blocks, w_strides[0]
        self.tma_ints = (self.m, self.n, self.k, 0 if bias is None else bias.stride(0), self.n)
        self.encoded = encoded
        # a stream-K tile's split_k_scratch sizes (its scratch is passed after the output)
        self.stream_k_scratch = stream_k_scratch
        # ((rows' address, row stride), both descriptors' expansions), newest first: one tuple,
        # replaced whole, so a thread never pairs one call's address with another's expansion
        self.kept_maps: tuple = ()
        # (address, row stride) of rows seen once lately, newest first: the second sighting
        # records; the plan's own rows count as seen
        self.seen_rows: tuple = ((x.data_ptr(), strides[0]),)

    def run(self, x, weight, bias) -> Optional[torch.Tensor]:
        """The pooler of [M, S, K] ``x`` (plain CUDA tensors the caller vetted), or None."""
        shape, strides = x.shape, x.stride()
        row_stride = strides[0]
        if (
            x.dtype is not self.dtype
            or len(shape) != 3
            or shape[0] != self.m
            or shape[1] < 1
            or shape[2] != self.k
            or strides[2] != self.x_col_stride
            # the row stride's specialization: not 1, in int32, divisible by 16 or not as planned
            or not 1 < row_stride <= _I32_MAX
            or (row_stride & 15 == 0) is not self.x_row_div16
            or (x.data_ptr() & 15 == 0) is not self.x_aligned
            or x.get_device() != self.index
            or _tensor_key(weight) != self.weight_key
            or (self.bias_key is None) is not (bias is None)
            or (bias is not None and _tensor_key(bias) != self.bias_key)
            or self.launch.current_device() != self.index  # device_of's condition, no switch
        ):
            return None
        out = torch.empty((self.m, self.n), dtype=self.dtype, device=self.device)
        if out.data_ptr() & 15:
            return None
        b = weight if bias is None else bias
        m, n, k = self.m, self.n, self.k
        if self.tma_blocks is not None:
            if row_stride & 7 or row_stride >= TMA_MAX_STRIDE:  # 16 bytes, as tma_describable
                return None
            encoded = self.encoded
            if encoded is not None:
                return self._run_encoded(encoded, x, row_stride, weight, b, out)
            args = self._tma_args(x, row_stride, weight, b, out)
        elif self.persistent:  # no split-K scratch in its signature
            args = (x, weight, b, out, m, n, k, row_stride, *self.ints_after_row_stride)
        elif self.split_k > 1:
            ws, tickets = split_k_scratch(self.device, *self.scratch_sizes)
            args = (x, weight, b, out, ws, tickets, m, n, k, row_stride,
                    *self.ints_after_row_stride)  # fmt: skip
        else:
            args = (x, weight, b, out, out, out, m, n, k, row_stride, *self.ints_after_row_stride)
        if not self.launch.launch_entry(self.entry, self.index, self.grid, args, self.constexprs):
            return None
        return out

    def _tma_args(self, x, row_stride, weight, b, out) -> tuple:
        """The TMA kernel's runtime arguments: the rows' and the weight's descriptors first."""
        x_block, w_block = self.tma_blocks
        return (tensor_descriptor(x, [self.m, self.k], [row_stride, 1], x_block),
                tensor_descriptor(weight, [self.n, self.k], [self.w_row_stride, 1], w_block),
                *self._after_descriptors(b, out), *self.tma_ints)  # fmt: skip

    def _after_descriptors(self, b, out) -> tuple:
        """The pointers a TMA launch passes after its descriptors: bias, output (and scratch)."""
        if self.stream_k_scratch is None:
            return b, out
        return (b, out, *split_k_scratch(self.device, *self.stream_k_scratch))

    def _run_encoded(self, encoded, x, row_stride, weight, b, out) -> Optional[torch.Tensor]:
        """The TMA launch with kept encoded descriptors when the rows are at an address (and row
        stride) kept lately; else with fresh ones, recorded and kept when the rows were seen once
        before, launched through Triton (no recording) when not: rows at a new address on every
        call (a new buffer each time) then cost what they cost without kept maps."""
        key = (x.data_ptr(), row_stride)
        kept = self.kept_maps
        for rows, expansions in kept:
            if rows == key:
                rest = (*self._after_descriptors(b, out), *self.tma_ints, *self.constexprs)
                return out if encoded.launch(self.index, self.grid, expansions, rest) else None
        args = self._tma_args(x, row_stride, weight, b, out)
        seen = self.seen_rows
        if key not in seen:
            self.seen_rows = (key, *seen[: KEPT_ROWS - 1])
            if not self.launch.launch_entry(self.entry, self.index, self.grid, args,
                                            self.constexprs):  # fmt: skip
                return None
            return out
        recorded = encoded.record(self.index, self.grid, args, self.constexprs)
        if recorded is None:
            return None
        if recorded:
            self.kept_maps = ((key, recorded), *kept[: KEPT_ROWS - 1])
        return out
