"""patch()/unpatch() on real transformers models built from small random configs."""

import copy

import pytest
import torch
import transformers
from torch import nn

import bertpool_fast
from bertpool_fast import FastBertPooler
from conftest import KERNEL_DEVICE, REL_TOL, assert_close_rel

SMALL = dict(
    hidden_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vocab_size=99,
)


def small_config(config_cls, **extra):
    config = config_cls(**SMALL, **extra)
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    return config


BERT_HEADS = [
    "BertModel",
    "BertForSequenceClassification",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForMultipleChoice",
]
# Heads built with add_pooling_layer=False: nothing to patch, and patch() must say so.
BERT_HEADS_WITHOUT_POOLER = [
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMaskedLM",
]
FAMILIES = [
    ("RobertaModel", "RobertaConfig"),
    ("XLMRobertaModel", "XLMRobertaConfig"),
    ("CamembertModel", "CamembertConfig"),
    ("ErnieModel", "ErnieConfig"),
    ("MPNetModel", "MPNetConfig"),
    ("ErnieForSequenceClassification", "ErnieConfig"),
]


def build(model_name, config_name="BertConfig", dtype=torch.float32):
    config = small_config(getattr(transformers, config_name))
    model = getattr(transformers, model_name)(config).eval()
    return model.to(device=KERNEL_DEVICE, dtype=dtype), config


def inputs_for(model_name, config, batch=3, seq=7):
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=KERNEL_DEVICE)
    if "MultipleChoice" in model_name:
        ids = ids[:, None].expand(batch, 2, seq).contiguous()
    return {"input_ids": ids}


def outputs_of(out):
    """The pooler-dependent outputs of a model: pooler_output and/or the head's logits."""
    found = {}
    for key in ("pooler_output", "logits", "seq_relationship_logits", "start_logits"):
        value = getattr(out, key, None)
        if value is not None:
            found[key] = value
    return found


def count_fast(model):
    return sum(isinstance(m, FastBertPooler) for m in model.modules())


@pytest.mark.parametrize(
    "model_name, config_name",
    [(name, "BertConfig") for name in BERT_HEADS] + FAMILIES,
)
def test_patched_model_matches_eager(model_name, config_name):
    model, config = build(model_name, config_name)
    fast = copy.deepcopy(model)
    assert bertpool_fast.patch(fast) == 1
    assert count_fast(fast) == 1
    inputs = inputs_for(model_name, config)
    with torch.no_grad():
        expected, got = outputs_of(model(**inputs)), outputs_of(fast(**inputs))
    assert expected and expected.keys() == got.keys()
    for key in expected:
        assert_close_rel(got[key], expected[key], torch.float32)


@pytest.mark.parametrize("model_name", BERT_HEADS_WITHOUT_POOLER)
def test_heads_without_pooler_are_left_alone(model_name):
    model, _ = build(model_name)
    assert bertpool_fast.patch(model) == 0
    assert count_fast(model) == 0


def test_state_dict_unchanged_and_unpatch_restores():
    model, config = build("BertForSequenceClassification")
    keys = list(model.state_dict())
    original_pooler = model.bert.pooler
    assert bertpool_fast.patch(model) == 1
    assert list(model.state_dict()) == keys
    assert model.bert.pooler.dense is original_pooler.dense  # shared, not copied
    assert bertpool_fast.patch(model) == 0  # idempotent
    assert count_fast(model) == 1
    assert bertpool_fast.unpatch(model) == 1
    assert model.bert.pooler is original_pooler
    assert type(model.bert.pooler).__name__ == "BertPooler"
    assert bertpool_fast.unpatch(model) == 0
    assert list(model.state_dict()) == keys


def test_save_pretrained_round_trip(tmp_path):
    model, config = build("BertForSequenceClassification")
    inputs = inputs_for("BertForSequenceClassification", config)
    with torch.no_grad():
        expected = model(**inputs).logits
    bertpool_fast.patch(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    loaded = loaded.to(KERNEL_DEVICE)
    assert type(loaded.bert.pooler).__name__ == "BertPooler"  # a plain model comes back
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
        assert bertpool_fast.patch(loaded) == 1
        assert_close_rel(loaded(**inputs).logits, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_patch_model_already_in_half_precision(dtype):
    model, config = build("BertModel", dtype=dtype)
    fast = copy.deepcopy(model)
    bertpool_fast.patch(fast)
    inputs = inputs_for("BertModel", config)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
        expected = model.pooler(hidden)
        got = fast.pooler(hidden)
    assert got.dtype == dtype
    # Eager rounds the pre-activation to the dtype before tanh; the kernel does not. Both are
    # within rounding of the exact result, so compare with the dtype's tolerance doubled.
    assert_close_rel(got, expected, dtype, scale=2.0)


def test_patch_then_move_dtype_and_unpatch():
    model, config = build("BertModel")
    bertpool_fast.patch(model)
    model.to(torch.bfloat16)
    assert model.pooler.dense.weight.dtype == torch.bfloat16
    bertpool_fast.unpatch(model)
    assert model.pooler.dense.weight.dtype == torch.bfloat16
    assert type(model.pooler).__name__ == "BertPooler"


def test_gradients_match_eager():
    model, config = build("BertForSequenceClassification")
    model.train()
    fast = copy.deepcopy(model)
    bertpool_fast.patch(fast)
    inputs = inputs_for("BertForSequenceClassification", config)
    labels = torch.randint(0, 2, (3,), device=KERNEL_DEVICE)
    for m in (model, fast):
        m(**inputs, labels=labels).loss.backward()
    # Compared as one vector: some gradients are exactly zero in exact arithmetic (attention key
    # biases cancel in the softmax), so their own relative error is rounding noise over ~1e-12.
    fast_params = dict(fast.named_parameters())
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    assert "bert.pooler.dense.weight" in names and "bert.pooler.dense.bias" in names
    expected = torch.cat([model.get_parameter(n).grad.flatten() for n in names])
    got = torch.cat([fast_params[n].grad.flatten() for n in names])
    # Backprop through a layer of attention adds a few roundings per element: 5x the fp32 entry.
    assert_close_rel(got, expected, torch.float32, scale=5.0)
    for n in ("bert.pooler.dense.weight", "bert.pooler.dense.bias"):
        assert_close_rel(fast_params[n].grad, model.get_parameter(n).grad, torch.float32)


def test_fast_pooler_from_config_matches_bert_pooler():
    config = small_config(transformers.BertConfig)
    eager = transformers.models.bert.modeling_bert.BertPooler(config).to(KERNEL_DEVICE)
    fast = FastBertPooler(config).to(KERNEL_DEVICE)
    assert list(fast.state_dict()) == list(eager.state_dict())
    fast.load_state_dict(eager.state_dict())
    hidden = torch.randn(4, 5, config.hidden_size, device=KERNEL_DEVICE)
    with torch.no_grad():
        assert_close_rel(fast(hidden), eager(hidden), torch.float32)


def test_swapped_activation_falls_back_to_eager():
    # An activation the kernel cannot reproduce is never approximated: the module runs it eagerly.
    config = small_config(transformers.BertConfig)
    fast = FastBertPooler(config).to(KERNEL_DEVICE)
    fast.activation = nn.Softsign()
    hidden = torch.randn(2, 3, config.hidden_size, device=KERNEL_DEVICE)
    expected = nn.functional.softsign(fast.dense(hidden[:, 0]))
    assert torch.equal(fast(hidden), expected)


def test_look_alike_pooler_is_not_patched():
    # Same attribute names, different computation (mean over tokens): must be left alone.
    class MeanPooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(8, 8)
            self.activation = nn.Tanh()

        def forward(self, hidden_states):
            return self.activation(self.dense(hidden_states.mean(1)))

    model = nn.Sequential(MeanPooler())
    assert bertpool_fast.patch(model) == 0
    with pytest.raises(ValueError, match="MeanPooler cannot be fused"):
        FastBertPooler.from_pooler(model[0])


def test_fused_output_close_to_float64_reference():
    # The fused pooler in a real model against float64 of the same hidden states.
    model, config = build("BertModel")
    fast = copy.deepcopy(model)
    bertpool_fast.patch(fast)
    with torch.no_grad():
        hidden = model(**inputs_for("BertModel", config)).last_hidden_state
        got = fast.pooler(hidden)
    w, b = model.pooler.dense.weight.double(), model.pooler.dense.bias.double()
    expected = torch.tanh(hidden[:, 0].double() @ w.t() + b)
    err = (got.double() - expected).norm() / expected.norm()
    assert err <= REL_TOL[torch.float32]


def test_patched_context_undoes_exactly_its_own_changes():
    model, config = build("BertForSequenceClassification")
    original_pooler = model.bert.pooler
    inputs = inputs_for("BertForSequenceClassification", config)
    with torch.no_grad():
        expected = model(**inputs).logits
        with bertpool_fast.patched(model) as same:
            assert same is model and count_fast(model) == 1
            assert_close_rel(model(**inputs).logits, expected, torch.float32)
    assert model.bert.pooler is original_pooler
    assert not any(k.startswith("_bertpool") for m in model.modules() for k in m.__dict__)
    # an earlier patch() stays: the block undoes only what it did itself (here, nothing)
    assert bertpool_fast.patch(model) == 1
    with bertpool_fast.patched(model):
        pass
    assert count_fast(model) == 1
    assert bertpool_fast.unpatch(model) == 1 and model.bert.pooler is original_pooler


def test_patched_context_undoes_on_error():
    model, _ = build("BertModel")
    original_pooler = model.pooler
    with pytest.raises(RuntimeError, match="inside"):
        with bertpool_fast.patched(model):
            assert count_fast(model) == 1
            raise RuntimeError("inside")
    assert model.pooler is original_pooler


def test_integrations_are_opt_in():
    model, _ = build("RobertaForSequenceClassification", "RobertaConfig")
    assert bertpool_fast.patch(model) == 0  # no pooler, and the head only with heads=True
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert bertpool_fast.patch(model, poolers=False, heads=True) == 1
    assert "forward" in model.classifier.__dict__
    with pytest.raises(TypeError, match="heads must be a bool"):
        bertpool_fast.patch(model, heads="yes")
    assert bertpool_fast.unpatch(model) == 1
    assert "forward" not in model.classifier.__dict__


def test_unpatch_undoes_what_patch_did_on_a_deepcopy():
    # the registry lives in the modules' __dict__, so a copy of a patched model unpatches too
    model, _ = build("BertModel")
    bertpool_fast.patch(model)
    twin = copy.deepcopy(model)
    assert bertpool_fast.unpatch(twin) == 1 and type(twin.pooler).__name__ == "BertPooler"
    assert count_fast(model) == 1  # the original is untouched


def test_pooler_replaced_after_patch_is_kept_by_unpatch():
    # the user's own module set over ours is theirs: unpatch does not put the original back
    model, _ = build("BertModel")
    bertpool_fast.patch(model)
    mine = nn.Identity()
    model.pooler = mine
    assert bertpool_fast.unpatch(model) == 0
    assert model.pooler is mine
    assert not any(k.startswith("_bertpool") for m in model.modules() for k in m.__dict__)
