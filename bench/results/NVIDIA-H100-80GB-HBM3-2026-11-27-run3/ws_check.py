# One launch of a warp-specialized 128-row tile in its own process (the runtime refuses it; the
# check is bypassed here): does it return?
import sys
import time

import torch

from bertpool_fast.kernels import pooler
from bertpool_fast.kernels.tiles import TileConfig

pooler.warp_specialized_tile_runs = lambda c: True
m, h = int(sys.argv[1]), 768
torch.manual_seed(0)
x = torch.randn(m, h, device="cuda", dtype=torch.float16)
w = torch.randn(h, h, device="cuda", dtype=torch.float16) * h**-0.5
b = torch.randn(h, device="cuda", dtype=torch.float16)
plain = TileConfig(128, 128, 64, 8, 3, tma=True)
t = time.time()
ref = pooler.pooler_fwd(x, w, b, "tanh", config=plain)
torch.cuda.synchronize()
print(f"plain 128x128 w8 s3: returned after {time.time() - t:.1f} s (compile included)", flush=True)
cfg = TileConfig(128, 128, 64, 4, 3, tma=True, warp_specialize=True)
t = time.time()
out = pooler.pooler_fwd(x, w, b, "tanh", config=cfg)
print(f"ws 128x128 w4 s3 M={m}: compiled and launched after {time.time() - t:.1f} s", flush=True)
torch.cuda.synchronize()
print(
    f"ws: returned after {time.time() - t:.1f} s; max |diff| {(out - ref).abs().max().item():.3g}"
)
