"""Training benchmark: one forward + backward of the fused pooler (``FastBertPooler`` around the
eager pooler's own parameters: the custom op and its Triton backward kernels) against eager
``BertPooler`` and ``torch.compile(BertPooler)``.

What is timed, the same way for every contestant: ``y = pooler(h)`` then
``torch.autograd.grad(y, (h, weight, bias), dy)`` with a fixed upstream gradient ``dy``. Using
``autograd.grad`` rather than ``backward()`` means no ``.grad`` is accumulated into (and nothing
has to be zeroed between calls), so no contestant pays an accumulation the others do not.

Grid (GPU): B in {1, 8, 32, 128, 512, 2048}, S = 128; H = 768 fp16/bf16 first, then fp32, then
H in {384, 1024}; torch.compile after the cheap contestants of the same shapes. The backward
bench may spend at most ``BENCH_BACKWARD_SHARE`` (default 0.25) of ``BENCH_BUDGET_S``: it runs
before the forward pooler bench (pytest's file order), whose targets must keep their time.
On a CPU the grid is a tiny subset and only the torch-side contestants are timed.

Every case first checks the contestant's output and its three gradients against eager autograd.

Roofline of what is timed (elem = dtype size, K = H_in, N = H_out):
  forward:  bytes = elem * (N*K + N + B*K + B*N)              (W, b, X_cls rows, y)
            flops = 2*B*K*N
  backward: bytes = elem * (N*K + B*K + 2*B*N + B*K + N*K + N) (read W, X_cls, dY, y;
                                                               write dX rows, dW, db)
            flops = 4*B*K*N                                    (dX = dZ W and dW = dZ^T X)
``floor_us`` uses the sum. Autograd also needs a dense [B, S, K] gradient of hidden_states, zero
outside row 0, which every contestant writes (elem * B*(S-1)*K more bytes; at S = 128 that fill
outweighs everything else at large B): ``floor_fill_us`` includes it.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from bench import harness
from bench.conftest import benchmark_enabled

SEQ = 128
TARGET_H = 768
CONTESTANTS = ("eager", "triton", "compile", "torch_path")
KERNEL_CONTESTANTS = ("triton",)
# Agreement with eager autograd before timing: relative Frobenius error of y, dX, dW and db (the
# pooler bench's table: a few roundings of the result, fp32 accumulation order may differ).
AGREEMENT = {"fp16": 4e-3, "bf16": 3e-2, "fp32": 1e-4}
# Seconds a case may need beyond its timing (torch.compile traces and compiles forward + backward)
MIN_BUDGET_LEFT_S = {"compile": 20.0}
SHARE = float(os.environ.get("BENCH_BACKWARD_SHARE", "0.25"))
_spent_s = [0.0]  # seconds this file's cases have run, against SHARE * BENCH_BUDGET_S


def _grid() -> list[tuple[str, int, int, str]]:
    """(dtype, H, B, contestant), in the order they run."""
    if not harness.HAS_CUDA:
        # CPU: what CI can afford; the Triton backward runs once through the interpreter as a check
        return [(d, 64, b, c) for d in ("fp32", "bf16") for b in (1, 8)
                for c in ("eager", "torch_path", "triton")]  # fmt: skip
    batches = (1, 8, 32, 128, 512, 2048)
    targets = [("fp16", TARGET_H), ("bf16", TARGET_H)]
    fp32 = [("fp32", TARGET_H)]
    others = [(d, h) for h in (384, 1024) for d in ("fp16", "bf16", "fp32")]
    cheap = ("eager", "triton")
    tiers = [(targets, cheap), (fp32, cheap), (targets, ("compile",)), (others, cheap),
             (fp32 + others, ("compile",))]  # fmt: skip
    return [(d, h, b, c) for shapes, contestants in tiers for d, h in shapes
            for c in contestants for b in batches]  # fmt: skip


GRID = _grid()


def traffic(batch: int, hidden: int, seq: int, elem: int) -> dict[str, int]:
    """Bytes and flops of one forward + backward (square dense layer, with bias)."""
    k = n = hidden
    fwd_bytes, fwd_flops = harness.pooler_traffic(batch, k, n, elem)
    bwd_bytes = elem * (n * k + batch * k + 2 * batch * n + batch * k + n * k + n)
    return {"bytes": fwd_bytes + bwd_bytes, "flops": fwd_flops + 4 * batch * k * n,
            "bwd_bytes": bwd_bytes, "bwd_flops": 4 * batch * k * n,
            "grad_fill_bytes": elem * batch * (seq - 1) * k}  # fmt: skip


class Inputs:
    """``n`` rotated input sets: hidden_states [B, S, H] (a leaf needing grad), a ``BertPooler``
    in training mode holding that set's weight and bias, and a fixed upstream gradient dy [B, H]."""

    def __init__(self, batch: int, hidden: int, dtype: torch.dtype, device: str, n: int):
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPooler

        self.sets = []
        for _ in range(n):
            h = torch.randn(batch, SEQ, hidden, device=device).to(dtype).requires_grad_()
            pooler = BertPooler(BertConfig(hidden_size=hidden)).to(device=device, dtype=dtype)
            with torch.no_grad():  # pre-activations of order 1: tanh' is neither ~1 nor ~0
                pooler.dense.weight.normal_(0.0, hidden**-0.5)
                pooler.dense.bias.normal_(0.0, 0.1)
            dy = torch.randn(batch, hidden, device=device).to(dtype)
            self.sets.append((h, pooler.train(), dy))


def make_call(contestant: str, inputs: Inputs):
    """``call(i)``: forward + backward on input set ``i``; returns (y, dX, dW, db)."""
    from bertpool_fast import FastBertPooler, fused_pooler

    sets = inputs.sets
    if contestant == "eager":
        models = [pooler for _h, pooler, _dy in sets]
    elif contestant == "compile":
        torch._dynamo.reset()  # a fresh compile per case, not a cache hit from another shape
        models = [torch.compile(pooler, dynamic=False) for _h, pooler, _dy in sets]
    elif contestant == "triton":
        # the drop-in module, sharing the eager pooler's parameters (backend "auto": the kernels
        # on CUDA, the interpreter on a CPU)
        models = [FastBertPooler.from_pooler(pooler) for _h, pooler, _dy in sets]
    elif contestant == "torch_path":
        models = [
            lambda h, d=pooler.dense: fused_pooler(h, d.weight, d.bias, backend="torch")
            for _h, pooler, _dy in sets
        ]
    else:
        raise ValueError(f"unknown contestant {contestant!r}; known: {CONTESTANTS}")

    def call(i: int):
        h, pooler, dy = sets[i]
        y = models[i](h)
        grads = torch.autograd.grad(y, (h, pooler.dense.weight, pooler.dense.bias), dy)
        return (y, *grads)

    return call


def check_against_eager(got, expected, dtype_name: str) -> dict[str, float]:
    """Relative errors of y, dX (row 0; the other rows must be exactly zero), dW and db."""
    (y, dh, dw, db), (ey, edh, edw, edb) = got, expected
    assert dh.shape == edh.shape and dh.dtype == edh.dtype, f"dX {dh.shape} {dh.dtype}"
    assert torch.count_nonzero(dh[:, 1:]) == 0, "dX is not zero outside the first token"
    errs = {"y": harness.rel_err(y, ey), "dh": harness.rel_err(dh[:, 0], edh[:, 0]), "dw": harness.rel_err(dw, edw),
            "db": harness.rel_err(db, edb)}  # fmt: skip
    tol = AGREEMENT[dtype_name]
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= tol}
    assert not bad, f"disagrees with eager autograd (tolerance {tol:.0e}): {bad}"
    return errs


@pytest.mark.parametrize(
    "dtype_name,hidden,batch,contestant", GRID,
    ids=[f"{d}-H{h}-B{b}-{c}" for d, h, b, c in GRID],
)  # fmt: skip
def test_backward(benchmark, request, budget, calibration, bench_results, dtype_name, hidden,
                  batch, contestant):  # fmt: skip
    enabled = benchmark_enabled(request.config)
    need = MIN_BUDGET_LEFT_S.get(contestant, 0.0)
    if enabled and budget.left() <= need:
        pytest.skip(f"not enough left of the BENCH_BUDGET_S={budget.seconds:g} s budget")
    if enabled and budget.seconds is not None and _spent_s[0] + need >= SHARE * budget.seconds:
        pytest.skip(f"the backward bench's share ({SHARE:g}) of BENCH_BUDGET_S={budget.seconds:g} "
                    "s is spent")  # fmt: skip
    t0 = time.monotonic()
    try:
        _run_case(benchmark, enabled, calibration, bench_results, dtype_name, hidden, batch,
                  contestant)  # fmt: skip
    finally:
        _spent_s[0] += time.monotonic() - t0


def _run_case(benchmark, enabled, calibration, bench_results, dtype_name, hidden, batch,
              contestant):  # fmt: skip
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    cost = traffic(batch, hidden, SEQ, dtype.itemsize)
    touched = cost["bytes"] + cost["grad_fill_bytes"]
    allocated = dtype.itemsize * (batch * SEQ * hidden + hidden * hidden + hidden + batch * hidden)
    n = harness.rotation_count(touched, allocated) if enabled and harness.HAS_CUDA else 1
    inputs = Inputs(batch, hidden, dtype, device, n)

    expected = make_call("eager", inputs)(0)
    call = make_call(contestant, inputs)
    errs = check_against_eager(call(0), expected, dtype_name)
    del expected

    if not harness.HAS_CUDA and contestant in KERNEL_CONTESTANTS:
        pytest.skip("kernel figures need a GPU: here the Triton forward and backward kernels run "
                    "through Triton's CPU interpreter, so their gradients were checked but their "
                    "time means nothing")  # fmt: skip
    iters = 100 if harness.HAS_CUDA else 20
    wall_us = harness.benchmark_wall_us(benchmark, call, n, iters, enabled)
    if wall_us is None:
        return  # --benchmark-disable: one untimed call, the code path only
    record = {
        "bench": "backward", "dtype": dtype_name, "hidden": hidden, "batch": batch, "seq": SEQ,
        "contestant": contestant, "wall_us": wall_us, "rotated_sets": n,
        "weight_l2_cold": harness.HAS_CUDA and harness.l2_cold(touched, n),
        **cost, "rel_err_vs_eager": max(errs.values()),
        **{f"rel_err_{k}": v for k, v in errs.items()},
    }  # fmt: skip
    if harness.HAS_CUDA:
        timing = harness.gpu_time(call, n)
        record.update(timing.as_dict("gpu"))
        record["gpu_us"] = timing.median_us
    floor_us = harness.roofline_floor_s(cost["bytes"], cost["flops"], calibration, dtype_name) * 1e6
    record["floor_us"] = floor_us
    record["floor_fill_us"] = harness.roofline_floor_s(touched, cost["flops"], calibration,
                                                       dtype_name) * 1e6  # fmt: skip
    timed_us = record.get("gpu_us", wall_us)
    record["time_over_floor"] = timed_us / floor_us
    record["fraction_of_gemm_rate"] = (
        cost["flops"] / (timed_us * 1e-6) / calibration.gemm_rate[dtype_name]
    )
    benchmark.extra_info.update(record)
    benchmark.group = f"backward {dtype_name} H={hidden} B={batch}"
    bench_results.append(record)
