"""A/B at B = 8192 (and 4096), H = 768: the fp16 table's persistent tile against the plain 128x128
s3 TMA tile, with the benchmark's inputs (a fresh [B, S, H] buffer per rotated set) and with the
tune's (one [B, S, H] buffer, sets on different tokens), eager beside them; three interleaved rounds."""

import statistics
import sys

import torch

from bench import harness, tune
from bench.test_bench_pooler import SEQ, Inputs, _poolers
from bertpool_fast.kernels.pooler import pooler_fwd
from bertpool_fast.kernels.tiles import TileConfig, config_label

H = 768
CFGS = [
    TileConfig(128, 128, 64, 8, 4, tma=True, persistent=True, pdl=True),
    TileConfig(128, 128, 64, 8, 3, tma=True, pdl=True),
    TileConfig(128, 128, 64, 8, 4, tma=True, persistent=True),
    TileConfig(128, 128, 64, 8, 3, tma=True),
]
out = {}
with torch.inference_mode():
    for batch in (8192, 4096):
        for dtype in (torch.float16, torch.bfloat16):
            nbytes, _ = harness.pooler_traffic(batch, H, H, dtype.itemsize)
            allocated = dtype.itemsize * (batch * SEQ * H + H * H + H)
            n = harness.rotation_count(nbytes, allocated)
            bench_in = Inputs(batch, H, dtype, "cuda", n)
            tune_in = tune.Inputs(batch, H, SEQ, dtype, "cuda", n)
            calls = {}
            for name, ins in (("bench", bench_in), ("tune", tune_in)):
                for cfg in CFGS:
                    outs = torch.empty(batch, H, dtype=dtype, device="cuda")
                    calls[(name, config_label(cfg))] = (
                        lambda i, s=ins.sets, c=cfg, o=outs: pooler_fwd(
                            *s[i], "tanh", out=o, config=c
                        ),
                        n,
                    )
            poolers = _poolers(bench_in, dtype)
            calls[("bench", "eager")] = (lambda i, p=poolers, s=bench_in.sets: p[i](s[i][0]), n)
            for _r in range(3):
                for key, (call, k) in calls.items():
                    t = harness.gpu_time(call, k).median_us
                    out.setdefault((batch, str(dtype)[6:], *key), []).append(t)
            del bench_in, tune_in, poolers, calls
            torch.cuda.empty_cache()
for key, ts in out.items():
    print(
        " | ".join(map(str, key)),
        "|",
        " ".join(f"{t:.2f}" for t in ts),
        "| median",
        f"{statistics.median(ts):.2f}",
    )
    sys.stdout.flush()
