"""Classification-head benchmark: fused pooler + classifier (one launch) against the eager head
(``BertPooler`` then dropout (eval) then ``nn.Linear``) and ``torch.compile`` of it.

Traffic: both weights, the B first-token rows and the logits; the pooled rows never reach memory.
Input sets are rotated as in the pooler benchmark, so each call finds its weights out of L2 (the
record says whether the rotation was long enough: ``weight_l2_cold``).
On a CPU the grid is a tiny subset and only the torch-side contestants are timed.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness
from bench.conftest import benchmark_enabled

SEQ = 128
LABELS = 2
# "pooler_linear": the fused pooler, then nn.Linear - what an unfused BERT head runs when patched
CONTESTANTS = ("eager", "compile", "triton", "pooler_linear")
AGREEMENT = {"fp16": 4e-3, "bf16": 3e-2, "fp32": 1e-4}


def _grid():
    if not harness.HAS_CUDA:
        return [("fp32", 64, b, c) for b in (1, 8) for c in ("eager", "triton", "pooler_linear")]
    return [(d, 768, b, c) for d in ("fp16", "bf16") for b in (1, 8, 32, 128, 512, 2048)
            for c in CONTESTANTS]  # fmt: skip


GRID = _grid()


class Head(torch.nn.Module):
    """One input set: the eager head with its own weights, and its own hidden_states."""

    def __init__(self, batch, hidden, dtype, device):
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPooler

        super().__init__()
        self.pooler = BertPooler(BertConfig(hidden_size=hidden))
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(hidden, LABELS)
        self.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.hidden_states = torch.randn(batch, SEQ, hidden, device=device).to(dtype)

    def forward(self, h):
        return self.classifier(self.dropout(self.pooler(h)))


def head_traffic(batch: int, hidden: int, elem: int) -> tuple[int, int]:
    """(bytes, flops) of one head call: both weights and biases, the B first-token rows, logits."""
    nbytes = elem * (hidden * hidden + hidden + LABELS * hidden + LABELS + batch * hidden
                     + batch * LABELS)  # fmt: skip
    return nbytes, 2 * batch * hidden * (hidden + LABELS)


def make_call(contestant: str, heads: list):
    """``call(i)``: the contestant on input set ``i``, as inference code would call it."""
    from bertpool_fast import fused_classifier_head, fused_pooler

    if contestant == "pooler_linear":
        parts = [(m.hidden_states, m.pooler.dense.weight, m.pooler.dense.bias,
                  m.classifier.weight, m.classifier.bias) for m in heads]  # fmt: skip
        return lambda i: torch.nn.functional.linear(fused_pooler(*parts[i][:3]), *parts[i][3:])
    if contestant == "triton":
        parts = [(m.hidden_states, m.pooler.dense.weight, m.pooler.dense.bias,
                  m.classifier.weight, m.classifier.bias) for m in heads]  # fmt: skip
        return lambda i: fused_classifier_head(*parts[i])
    models = heads
    if contestant == "compile":
        torch._dynamo.reset()  # a fresh compile per case, not a cache hit from another shape
        # parameters are graph inputs: the instances share one compiled graph
        models = [torch.compile(m, dynamic=False) for m in heads]
    elif contestant != "eager":
        raise ValueError(f"unknown contestant {contestant!r}; known: {CONTESTANTS}")
    return lambda i: models[i](heads[i].hidden_states)


@pytest.mark.parametrize("dtype_name,hidden,batch,contestant", GRID,
                         ids=[f"{d}-H{h}-B{b}-{c}" for d, h, b, c in GRID])  # fmt: skip
def test_head(benchmark, request, budget, calibration, bench_results, dtype_name, hidden, batch,
              contestant):  # fmt: skip
    enabled = benchmark_enabled(request.config)
    if enabled and budget.spent():
        pytest.skip(f"over the BENCH_BUDGET_S={budget.seconds:g} s budget")
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    nbytes, flops = head_traffic(batch, hidden, dtype.itemsize)
    allocated = dtype.itemsize * (batch * SEQ * hidden + hidden * hidden + hidden
                                  + LABELS * hidden + LABELS)  # fmt: skip
    n = harness.rotation_count(nbytes, allocated) if enabled and harness.HAS_CUDA else 1
    heads = [Head(batch, hidden, dtype, device) for _ in range(n)]
    with torch.inference_mode():
        call = make_call(contestant, heads)
        out = call(0)
        expected = heads[0](heads[0].hidden_states)
        err = harness.rel_err(out, expected)
        assert out.shape == (batch, LABELS) and out.dtype == dtype
        assert err <= AGREEMENT[dtype_name], f"{contestant} disagrees with eager: rel err {err:.2e}"
        if not harness.HAS_CUDA and contestant in ("triton", "pooler_linear"):
            pytest.skip("kernel figures need a GPU: the interpreter's time means nothing")
        iters = 200 if harness.HAS_CUDA else 20
        wall_us = harness.benchmark_wall_us(benchmark, call, n, iters, enabled)
        if wall_us is None:
            return  # --benchmark-disable: one untimed call, the code path only
        record = {"bench": "heads", "dtype": dtype_name, "hidden": hidden, "batch": batch,
                  "labels": LABELS, "contestant": contestant, "wall_us": wall_us,
                  "rotated_sets": n, "weight_l2_cold": harness.HAS_CUDA and harness.l2_cold(nbytes, n),
                  "bytes": nbytes, "flops": flops, "rel_err_vs_eager": err}  # fmt: skip
        if harness.HAS_CUDA:
            timing = harness.gpu_time(call, n)
            record.update(timing.as_dict("gpu"))
            record["gpu_us"] = timing.median_us
        floor_us = harness.roofline_floor_s(nbytes, flops, calibration, dtype_name) * 1e6
        record["floor_us"] = floor_us
        record["time_over_floor"] = record.get("gpu_us", wall_us) / floor_us
    benchmark.extra_info.update(record)
    benchmark.group = f"head {dtype_name} H={hidden} B={batch}"
    bench_results.append(record)
