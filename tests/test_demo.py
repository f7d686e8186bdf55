"""The README's main job: the demo runs end to end and fused matches eager."""

import re

import pytest
import torch

from bertpool_fast.demo import SENTENCE, run_demo


@pytest.mark.parametrize("use_checkpoint", [True, False], ids=["checkpoint-if-installed", "random"])
def test_demo_prints_matching_pooler_outputs(capsys, use_checkpoint):
    assert run_demo(use_checkpoint=use_checkpoint) == 0
    out = capsys.readouterr().out
    assert SENTENCE in out
    assert "patched:  1 pooler(s)" in out
    eager = re.search(r"eager: tensor\(\[(.*)\]\)", out).group(1)
    fused = re.search(r"fused: tensor\(\[(.*)\]\)", out).group(1)
    assert len(eager.split(",")) == 5 and len(fused.split(",")) == 5
    max_diff = float(re.search(r"max \|eager - fused\|:\s+(\S+)", out).group(1))
    # fp32 on CPU: a few fp32 ulps. fp16 on a GPU: eager rounds the pre-activation to fp16 before
    # its tanh and the kernel does not, so the two may differ by a few fp16 ulps of values <= 1.
    assert max_diff < (5e-3 if torch.cuda.is_available() else 1e-5)
    if not use_checkpoint:
        assert "checkpoint not used" in out
