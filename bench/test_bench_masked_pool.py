"""Sentence-embedding pooling benchmark: fused ``masked_pool`` (mean + L2 normalise, the
all-MiniLM-L6-v2 pipeline) against eager sentence-transformers ``Pooling`` + ``Normalize`` and
``torch.compile`` of the same two modules.

It is memory-bound: bytes = B*S*H read + B*H written (+ the [B, S] int64 mask). The figure of
merit is ``time_over_floor`` = time / (bytes / measured copy bandwidth); 1.0 is the bandwidth limit.
On a CPU the grid is a tiny subset and only the torch-side contestants are timed.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness
from bench.conftest import benchmark_enabled

st_models = pytest.importorskip("sentence_transformers.models")

CONTESTANTS = ("eager_st", "compile_st", "triton")
AGREEMENT = {"fp16": 4e-3, "bf16": 3e-2, "fp32": 1e-4}


def _grid() -> list[tuple[str, int, int, int, str]]:
    """(dtype, B, S, H, contestant)."""
    if not harness.HAS_CUDA:
        return [("fp32", b, 16, 64, c) for b in (1, 4) for c in ("eager_st", "triton")]
    shapes = [(b, s, h) for h in (384, 768) for s in (128, 512) for b in (1, 32, 256)]
    return [(d, b, s, h, c) for d in ("fp16", "bf16") for b, s, h in shapes for c in CONTESTANTS]


GRID = _grid()


def make_call(contestant, sets):
    from bertpool_fast import masked_pool

    if contestant == "triton":
        return lambda i: masked_pool(sets[i][0], sets[i][1], "mean", normalize=True)
    hidden = sets[0][0].shape[-1]
    st = torch.nn.Sequential(st_models.Pooling(hidden, "mean"), st_models.Normalize())
    if contestant == "compile_st":
        torch._dynamo.reset()
        st = torch.compile(st, dynamic=False)
    return lambda i: st({"token_embeddings": sets[i][0], "attention_mask": sets[i][1]})[
        "sentence_embedding"
    ]


@pytest.mark.parametrize("dtype_name,batch,seq,hidden,contestant", GRID,
                         ids=[f"{d}-B{b}-S{s}-H{h}-{c}" for d, b, s, h, c in GRID])  # fmt: skip
def test_masked_pool(benchmark, request, budget, calibration, bench_results, dtype_name, batch, seq,
                     hidden, contestant):  # fmt: skip
    enabled = benchmark_enabled(request.config)
    if enabled and budget.spent():
        pytest.skip(f"over the BENCH_BUDGET_S={budget.seconds:g} s budget")
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    elem = dtype.itemsize
    nbytes = elem * (batch * seq * hidden + batch * hidden) + 8 * batch * seq
    n = harness.rotation_count(nbytes, nbytes) if enabled and harness.HAS_CUDA else 1
    sets = []
    for _ in range(n):
        h = torch.randn(batch, seq, hidden, device=device).to(dtype)
        lengths = torch.randint(1, seq + 1, (batch,), device=device)
        mask = (torch.arange(seq, device=device)[None, :] < lengths[:, None]).long()
        sets.append((h, mask))

    with torch.inference_mode():
        call = make_call(contestant, sets)
        out = call(0)
        h, mask = sets[0]
        pooled = (h.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        expected = torch.nn.functional.normalize(pooled, dim=-1)
        err = harness.rel_err(out, expected)
        assert out.shape == (batch, hidden) and out.dtype == dtype
        assert err <= AGREEMENT[dtype_name], f"{contestant} disagrees: rel err {err:.2e}"
        if not harness.HAS_CUDA and contestant == "triton":
            pytest.skip("kernel figures need a GPU: the interpreter's time means nothing")
        iters = 200 if harness.HAS_CUDA else 20
        wall_us = harness.benchmark_wall_us(benchmark, call, n, iters, enabled)
        if wall_us is None:
            return  # --benchmark-disable: one untimed call, the code path only
        record = {"bench": "masked_pool", "dtype": dtype_name, "batch": batch, "seq": seq,
                  "hidden": hidden, "contestant": contestant, "wall_us": wall_us, "bytes": nbytes,
                  "rel_err_vs_fp32": err}  # fmt: skip
        if harness.HAS_CUDA:
            timing = harness.gpu_time(call, n)
            record.update(timing.as_dict("gpu"))
            record["gpu_us"] = timing.median_us
        floor_us = nbytes / calibration.copy_bandwidth * 1e6
        record["floor_us"] = floor_us
        record["time_over_floor"] = record.get("gpu_us", wall_us) / floor_us
    benchmark.extra_info.update(record)
    benchmark.group = f"masked_pool {dtype_name} B={batch} S={seq} H={hidden}"
    bench_results.append(record)
