"""Classification-head benchmark: fused pooler + classifier (one launch) against the eager head
(``BertPooler`` then dropout (eval) then ``nn.Linear``) and ``torch.compile`` of it.

Traffic: both weights, the B first-token rows and the logits; the pooled rows never reach memory.
On a CPU the grid is a tiny subset and only the torch-side contestants are timed.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness
from bench.conftest import benchmark_enabled

SEQ = 128
LABELS = 2
CONTESTANTS = ("eager", "compile", "triton")
AGREEMENT = {"fp16": 4e-3, "bf16": 3e-2, "fp32": 1e-4}


def _grid():
    if not harness.HAS_CUDA:
        return [("fp32", 64, b, c) for b in (1, 8) for c in ("eager", "triton")]
    return [(d, 768, b, c) for d in ("fp16", "bf16") for b in (1, 8, 32, 128, 512, 2048)
            for c in CONTESTANTS]  # fmt: skip


GRID = _grid()


class Head(torch.nn.Module):
    def __init__(self, hidden, dtype, device):
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPooler

        super().__init__()
        self.pooler = BertPooler(BertConfig(hidden_size=hidden))
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(hidden, LABELS)
        self.to(device=device, dtype=dtype).eval()

    def forward(self, h):
        return self.classifier(self.dropout(self.pooler(h)))


@pytest.mark.parametrize("dtype_name,hidden,batch,contestant", GRID,
                         ids=[f"{d}-H{h}-B{b}-{c}" for d, h, b, c in GRID])  # fmt: skip
def test_head(benchmark, request, budget, calibration, bench_results, dtype_name, hidden, batch,
              contestant):  # fmt: skip
    from bertpool_fast import fused_classifier_head

    enabled = benchmark_enabled(request.config)
    if enabled and budget.spent():
        pytest.skip(f"over the BENCH_BUDGET_S={budget.seconds:g} s budget")
    dtype = harness.DTYPES_BY_NAME[dtype_name]
    device = "cuda" if harness.HAS_CUDA else "cpu"
    head = Head(hidden, dtype, device)
    h = torch.randn(batch, SEQ, hidden, device=device).to(dtype)
    elem = dtype.itemsize
    nbytes = elem * (hidden * hidden + hidden + LABELS * hidden + LABELS + batch * hidden
                     + batch * LABELS)  # fmt: skip
    flops = 2 * batch * hidden * (hidden + LABELS)
    d, c = head.pooler.dense, head.classifier
    with torch.inference_mode():
        if contestant == "triton":
            def call(_i):
                return fused_classifier_head(h, d.weight, d.bias, c.weight, c.bias)
        else:
            model = head
            if contestant == "compile":
                torch._dynamo.reset()
                model = torch.compile(head, dynamic=False)
            def call(_i):
                return model(h)
        out = call(0)
        expected = head(h)
        err = ((out.double() - expected.double()).norm() / expected.double().norm()).item()
        assert out.shape == (batch, LABELS) and out.dtype == dtype
        assert err <= AGREEMENT[dtype_name], f"{contestant} disagrees with eager: rel err {err:.2e}"
        if not harness.HAS_CUDA and contestant == "triton":
            pytest.skip("kernel figures need a GPU: the interpreter's time means nothing")
        iters = 200 if harness.HAS_CUDA else 20
        wall_us = harness.benchmark_wall_us(benchmark, call, 1, iters, enabled)
        if wall_us is None:
            return  # --benchmark-disable: one untimed call, the code path only
        record = {"bench": "heads", "dtype": dtype_name, "hidden": hidden, "batch": batch,
                  "labels": LABELS, "contestant": contestant, "wall_us": wall_us, "bytes": nbytes,
                  "flops": flops, "rel_err_vs_eager": err}  # fmt: skip
        if harness.HAS_CUDA:
            timing = harness.gpu_time(call, 1)
            record.update(timing.as_dict("gpu"))
            record["gpu_us"] = timing.median_us
        floor_us = harness.roofline_floor_s(nbytes, flops, calibration, dtype_name) * 1e6
        record["floor_us"] = floor_us
        record["time_over_floor"] = record.get("gpu_us", wall_us) / floor_us
    benchmark.extra_info.update(record)
    benchmark.group = f"head {dtype_name} H={hidden} B={batch}"
    bench_results.append(record)
