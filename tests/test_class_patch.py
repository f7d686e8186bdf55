"""The class-level switch: models built after ``apply_to_transformers`` fuse; revert undoes it."""

import pytest
import torch
import transformers
from torch import nn

import bertpool_fast
import bertpool_fast.module as fast_module
from bertpool_fast import class_patch, families
from bertpool_fast.proof import ORIGINAL_FORWARD_ATTR
from conftest import REL_TOL, rel_error


def _pooler_forwards() -> dict[type, object]:
    """Every importable candidate class and the forward in its own __dict__ (None if inherited)."""
    import importlib

    out = {}
    for c in families.find_pooler_classes():
        try:
            cls = getattr(importlib.import_module(c.module), c.name)
        except Exception:  # noqa: BLE001, S112 - a model whose optional dependency is missing
            continue
        out[cls] = cls.__dict__.get("forward")
    return out


@pytest.fixture
def switched():
    before = _pooler_forwards()
    try:
        yield class_patch.apply_to_transformers(), before
    finally:
        class_patch.revert_transformers()


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    real = fast_module.fused_pooler

    def spy(*args, **kwargs):
        calls.append(kwargs.get("activation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_module, "fused_pooler", spy)
    return calls


def _tiny_bert():
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()


def _eager_pooler_output(model, ids):
    # the original class forward, called directly on the same module
    pooler = model.pooler
    original = getattr(type(pooler).forward, ORIGINAL_FORWARD_ATTR, type(pooler).forward)
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
        return original(pooler, hidden)


def test_models_built_after_apply_fuse(switched, kernel_calls):
    count, _ = switched
    assert count == len(class_patch.switched_classes()) > 0
    from transformers.models.bert.modeling_bert import BertPooler

    assert BertPooler in class_patch.switched_classes()
    model = _tiny_bert()
    assert type(model.pooler) is BertPooler  # the class itself is kept: isinstance, repr, init
    ids = torch.randint(3, 99, (3, 7))
    with torch.no_grad():
        fused = model(input_ids=ids).pooler_output
    assert kernel_calls == ["tanh"]
    assert rel_error(fused, _eager_pooler_output(model, ids)) <= 2 * REL_TOL[torch.float32]
    assert class_patch.apply_to_transformers() == 0  # idempotent


def test_from_pretrained_after_apply_fuses(switched, kernel_calls, tmp_path):
    _tiny_bert().save_pretrained(tmp_path)
    model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        fused = model(input_ids=ids).pooler_output
    assert kernel_calls == ["tanh"]
    assert rel_error(fused, _eager_pooler_output(model, ids)) <= 2 * REL_TOL[torch.float32]


def test_unprovable_instances_run_their_original_forward(switched, kernel_calls):
    model = _tiny_bert()
    model.pooler.activation = nn.SiLU()  # no kernel equivalent: the class forward must not fuse
    ids = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        out = model(input_ids=ids).pooler_output
        hidden = model(input_ids=ids).last_hidden_state
    assert kernel_calls == []
    assert torch.equal(out, nn.functional.silu(model.pooler.dense(hidden[:, 0])))


def test_revert_restores_every_class_exactly(kernel_calls):
    before = _pooler_forwards()
    try:
        assert bertpool_fast.apply_to_transformers() > 0
        changed = {cls for cls, fwd in _pooler_forwards().items() if fwd is not before[cls]}
        assert changed == set(class_patch.switched_classes())
    finally:
        reverted = bertpool_fast.revert_transformers()
    assert reverted == len(changed)
    after = _pooler_forwards()
    assert all(after[cls] is before[cls] for cls in before)
    assert bertpool_fast.revert_transformers() == 0
    model = _tiny_bert()
    with torch.no_grad():
        model(input_ids=torch.randint(3, 99, (2, 5)))
    assert kernel_calls == []  # built after revert: the original pooler, no kernel


def test_instance_patch_still_works_under_the_switch(switched):
    model = _tiny_bert()
    assert bertpool_fast.patch(model) == 1
    assert isinstance(model.pooler, bertpool_fast.FastBertPooler)
    assert bertpool_fast.unpatch(model) == 1
    assert type(model.pooler).__name__ == "BertPooler"
