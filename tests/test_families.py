"""Every *Pooler class of installed transformers: covered ones match eager, the rest are untouched.

The parametrisation reads the transformers source (no imports at collection); each case imports its
own modeling module, builds the pooler from the family's shrunk default config, swaps it with
``patch`` and compares against the original on fresh random input, with an fp64 reference.
"""

import copy
import importlib

import pytest
import torch
import transformers
from torch import nn

from bertpool_fast import families, patch, unpatch
from bertpool_fast.module import FastBertPooler, FastContextPooler
from bertpool_fast.patching import form_of_class, is_bert_pooler_form, refusal
from conftest import REL_TOL, rel_error

CANDIDATES = families.find_pooler_classes()


def _holder(pooler: nn.Module) -> nn.ModuleDict:
    # patch() swaps children, never the root it is given
    return nn.ModuleDict({"pooler": pooler})


def _check_swap_matches(pooler: nn.Module, batch: int = 3, seq: int = 5) -> None:
    """patch() swaps ``pooler``; the fused output matches the original's and an fp64 reference."""
    hidden = torch.randn(batch, seq, pooler.dense.in_features)
    reference = copy.deepcopy(pooler).double()
    holder = _holder(pooler)
    with torch.no_grad():
        eager = pooler(hidden)
        assert patch(holder) == 1, refusal(pooler)
        fast = holder["pooler"]
        assert isinstance(fast, (FastBertPooler, FastContextPooler))
        fused = fast(hidden)
        expected = reference(hidden.double())
    assert fused.shape == eager.shape == (batch, pooler.dense.out_features)
    assert rel_error(fused, expected) <= REL_TOL[torch.float32]
    assert rel_error(fused, eager) <= 2 * REL_TOL[torch.float32]
    assert unpatch(holder) == 1 and holder["pooler"] is pooler


@pytest.mark.parametrize("candidate", CANDIDATES, ids=[c.id for c in CANDIDATES])
def test_pooler_class(candidate):
    found = families.survey_one(candidate)
    if found.cls is None:
        pytest.skip(f"left out, recorded as: {found.reason}")
    module = importlib.import_module(candidate.module)
    try:
        pooler = families.build_tiny_pooler(found.cls, module)
    except RuntimeError:
        pooler = None
    if not found.covered:
        # left out: the survey says why, and patch() leaves the module alone
        assert found.reason
        if pooler is not None:
            assert patch(_holder(pooler)) == 0
        return
    assert form_of_class(found.cls).name == found.form
    _check_swap_matches(pooler)


def test_survey_accounts_for_every_candidate():
    surveyed = families.survey()
    ids = {f.id for f in surveyed}
    assert {c.id for c in CANDIDATES} <= ids
    for f in surveyed:
        assert f.covered or f.reason, f.id
    covered = {f.id for f in surveyed if f.covered}
    # the forms the issue names, one of each
    for expected in (
        "bert.BertPooler",
        "roberta.RobertaPooler",
        "vit.ViTPooler",
        "deberta_v2.ContextPooler",
        "mobilebert.MobileBertPooler",
    ):
        assert expected in covered
    block = families.markdown(surveyed)
    assert block.startswith("<!-- families:begin -->") and block.endswith("<!-- families:end -->")
    for f in surveyed:
        assert f"`{f.name}`" in block


FUSED_ACTS = [
    "tanh",
    "relu",
    "gelu",
    "gelu_python",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_python_tanh",
    "gelu_accurate",
    "gelu_fast",
    "linear",
]
EAGER_ACTS = ["silu", "quick_gelu", "gelu_10", "sigmoid", "mish", "leaky_relu"]


@pytest.mark.parametrize("act", FUSED_ACTS + EAGER_ACTS)
def test_vit_pooler_act_non_square(act):
    # ViT's pooler is ACT2FN[config.pooler_act] over a hidden -> pooler_output_size dense
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTPooler

    config = ViTConfig(hidden_size=40, pooler_output_size=24, pooler_act=act)
    pooler = ViTPooler(config).eval()
    if act in EAGER_ACTS:
        assert refusal(pooler) is not None and patch(_holder(pooler)) == 0
    else:
        _check_swap_matches(pooler)


@pytest.mark.parametrize("act", FUSED_ACTS + EAGER_ACTS)
def test_deberta_context_pooler_act(act):
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler

    config = DebertaV2Config(hidden_size=40, pooler_hidden_size=40, pooler_hidden_act=act)
    pooler = ContextPooler(config).eval()
    if act in EAGER_ACTS:
        assert refusal(pooler) is not None and patch(_holder(pooler)) == 0
    else:
        _check_swap_matches(pooler)


def test_deberta_context_pooler_training_runs_dropout_eagerly():
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler

    config = DebertaV2Config(hidden_size=40, pooler_hidden_size=40, pooler_dropout=0.5)
    holder = _holder(ContextPooler(config).train())
    assert patch(holder) == 1
    hidden = torch.randn(64, 3, 40)
    fast = holder["pooler"]
    # A live dropout zeroes about half the first-token features; the fused path would zero none.
    torch.manual_seed(1234)
    trained = fast(hidden)
    assert unpatch(holder) == 1
    torch.manual_seed(1234)
    expected = holder["pooler"](hidden)
    assert torch.equal(trained, expected)


def test_mobilebert_without_classifier_activation_is_left_alone():
    from transformers import MobileBertConfig
    from transformers.models.mobilebert.modeling_mobilebert import MobileBertPooler

    pooler = MobileBertPooler(MobileBertConfig(hidden_size=40, classifier_activation=False))
    assert "first token" in refusal(pooler) and patch(_holder(pooler)) == 0


# Template matching: what a forward computes decides, not its name or cosmetics.
class _Cosmetic(nn.Module):
    """Renamed locals, a docstring, annotations and comments: the same computation."""

    def __init__(self, n: int = 24):
        super().__init__()
        self.dense = nn.Linear(n, n + 8)
        self.activation = nn.Tanh()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Pool the first token."""
        cls_row = states[:, 0]  # the [CLS] row
        out = self.dense(cls_row)
        out = self.activation(out)
        return out


def _variant(body):
    # same submodules as _Cosmetic, a different forward
    return type("Variant", (_Cosmetic,), {"forward": body})(24)


SEMANTIC_VARIANTS = {
    "last_token": lambda self, h: self.activation(self.dense(h[:, -1])),
    "second_token": lambda self, h: self.activation(self.dense(h[:, 1])),
    "no_activation": lambda self, h: self.dense(h[:, 0]),
    "activation_twice": lambda self, h: self.activation(self.activation(self.dense(h[:, 0]))),
    "scaled": lambda self, h: self.activation(self.dense(h[:, 0]) * 2),
    "mean_pool": lambda self, h: self.activation(self.dense(h.mean(1))),
}


def _def_variant(name):
    # real `def` bodies, written like the template but changed in one place each
    src = {
        "last_token": "h[:, -1]",
        "second_token": "h[:, 1]",
        "mean_pool": "h.mean(1)",
    }[name]
    ns = {}
    exec(  # noqa: S102 - a fixed test-local source: a def compiled as transformers' would be
        "def forward(self, hidden_states):\n"
        f"    first_token_tensor = {src.replace('h', 'hidden_states')}\n"
        "    pooled_output = self.dense(first_token_tensor)\n"
        "    pooled_output = self.activation(pooled_output)\n"
        "    return pooled_output\n",
        ns,
    )
    return ns["forward"]


def test_cosmetic_differences_are_accepted():
    module = _Cosmetic()
    assert is_bert_pooler_form(module)
    _check_swap_matches(module)


@pytest.mark.parametrize("name", sorted(SEMANTIC_VARIANTS))
def test_semantic_differences_are_refused(name):
    assert not is_bert_pooler_form(_variant(SEMANTIC_VARIANTS[name]))


@pytest.mark.parametrize("name", ["last_token", "second_token", "mean_pool"])
def test_one_changed_expression_is_refused(name):
    assert not is_bert_pooler_form(_variant(_def_variant(name)))


def test_modules_a_swap_cannot_reproduce_are_refused():
    class LoraLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    with_sub = _Cosmetic()
    with_sub.dense = LoraLinear(24, 32)
    hooked = _Cosmetic()
    hooked.dense.register_forward_hook(lambda m, i, o: o * 2)
    hooked_pooler = _Cosmetic()
    hooked_pooler.register_forward_pre_hook(lambda m, i: None)
    silu = _Cosmetic()
    silu.activation = nn.SiLU()
    for module in (with_sub, hooked, hooked_pooler, silu):
        assert refusal(module) is not None
        assert patch(_holder(module)) == 0


def test_fast_pooler_falls_back_when_dense_is_replaced_after_patch():
    holder = _holder(_Cosmetic())
    patch(holder)
    fast = holder["pooler"]
    fast.dense.register_forward_hook(lambda m, i, o: o * 0)  # must run, so the kernel must not
    out = fast(torch.randn(2, 3, 24))
    assert torch.equal(out, torch.zeros_like(out))


def test_installed_transformers_is_supported_and_its_bert_pooler_matches_the_template():
    from transformers.models.bert.modeling_bert import BertPooler

    assert families.transformers_supported(transformers.__version__), transformers.__version__
    assert families.transformers_supported("4.40.0") and families.transformers_supported("5.24.0")
    assert not families.transformers_supported("4.39.3")
    assert not families.transformers_supported("6.0.0")
    # No template is ever taken from the installed library: a release that changed BertPooler's
    # computation would fail here rather than be patched on trust.
    assert form_of_class(BertPooler).name == "bert"


# A handful of full models: the patched model's outputs against the original's.
def _tiny_text_config(config_cls, **extra):
    return config_cls(
        vocab_size=99,
        hidden_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        **extra,
    )


FULL_MODELS = {
    "BertModel": ("BertConfig", "BertModel", "pooler_output"),
    "BertForSequenceClassification": ("BertConfig", "BertForSequenceClassification", "logits"),
    "RobertaModel": ("RobertaConfig", "RobertaModel", "pooler_output"),
    # XLM-R's (and RoBERTa's) classification models build no pooler: the base model has one
    "XLMRobertaModel": ("XLMRobertaConfig", "XLMRobertaModel", "pooler_output"),
    "CamembertModel": ("CamembertConfig", "CamembertModel", "pooler_output"),
    "ErnieModel": ("ErnieConfig", "ErnieModel", "pooler_output"),
    "MPNetModel": ("MPNetConfig", "MPNetModel", "pooler_output"),
    "DebertaV2ForSequenceClassification": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        "logits",
    ),
    "MobileBertModel": ("MobileBertConfig", "MobileBertModel", "pooler_output"),
}


@pytest.mark.parametrize("name", sorted(FULL_MODELS))
def test_full_model(name):
    config_name, model_name, output = FULL_MODELS[name]
    extra = {"embedding_size": 40, "intra_bottleneck_size": 40} if "MobileBert" in name else {}
    if "Deberta" in name:
        extra = {"pooler_hidden_size": 40}
    config = _tiny_text_config(getattr(transformers, config_name), **extra)
    model = getattr(transformers, model_name)(config).eval()
    fast = copy.deepcopy(model)
    assert patch(fast) == 1
    ids = torch.randint(3, config.vocab_size, (3, 7))
    with torch.no_grad():
        expected = getattr(model(input_ids=ids), output)
        actual = getattr(fast(input_ids=ids), output)
    assert rel_error(actual, expected) <= 2 * REL_TOL[torch.float32]
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_vit_model_non_square_pooler():
    config = transformers.ViTConfig(
        hidden_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=8,
        patch_size=4,
        pooler_output_size=24,
        pooler_act="gelu",
    )
    model = transformers.ViTModel(config).eval()
    fast = copy.deepcopy(model)
    assert patch(fast) == 1
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(pixel_values=pixels).pooler_output
        actual = fast(pixel_values=pixels).pooler_output
    assert actual.shape == (2, 24)
    assert rel_error(actual, expected) <= 2 * REL_TOL[torch.float32]
