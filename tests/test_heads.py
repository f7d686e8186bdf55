"""Fused pooler + classifier: kernel vs float64 reference, patched models vs unpatched, errors."""

import pytest
import torch
import transformers as T

import bertpool_fast.heads as heads
from bertpool_fast.heads import fused_classifier_head, patch_heads, unpatch_heads
from bertpool_fast.kernels.classifier_head import SPLIT_MAX_M, classifier_head_fwd, pick_head_config
from bertpool_fast.reference import apply_activation_torch
from conftest import KERNEL_DEVICE, assert_close_rel, poisoned, randn

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def reference64(h, w1, b1, w2, b2, act, dtype):
    # float64 from the same rounded inputs, with the pooled rows rounded to the input dtype in
    # between: the kernel (and eager) round them there, so a reference without that rounding would
    # charge the kernel for eager's own intermediate rounding.
    d = lambda t: None if t is None else t.double()  # noqa: E731
    pooled = apply_activation_torch(torch.nn.functional.linear(d(h[:, 0]), d(w1), d(b1)), act)
    return torch.nn.functional.linear(pooled.to(dtype).double(), d(w2), d(b2))


def params(k, n, labels, dtype, bias=True):
    # weights scaled by 1/sqrt(fan_in), as nn.Linear initialises them, so tanh is not saturated
    w1 = randn(n, k, dtype=dtype, scale=k**-0.5)
    w2 = randn(labels, n, dtype=dtype, scale=n**-0.5)
    b1 = randn(n, dtype=dtype) if bias else None
    b2 = randn(labels, dtype=dtype) if bias else None
    return w1, b1, w2, b2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "b, s, k, n, labels",
    [(3, 5, 40, 24, 3), (1, 1, 33, 70, 2), (20, 2, 64, 64, 17), (70, 1, 16, 33, 1)],
    ids=["N!=K", "B1-S1", "B20-L17", "B70-L1"],
)
def test_parity(b, s, k, n, labels, dtype):
    h = randn(b, s, k, dtype=dtype)
    w1, b1, w2, b2 = params(k, n, labels, dtype)
    out = fused_classifier_head(h, w1, b1, w2, b2, backend="triton")
    assert out.dtype == dtype and out.shape == (b, labels)
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, "tanh", dtype), dtype)


# Both launch paths and the switch between them (split-N up to SPLIT_MAX_M rows, fused above), with
# N and K off every block multiple (N = 70: two N chunks, the second partial; K = 40 off 32 and 64)
# and label counts from 1 to 17 (BLOCK_L 16 and 32).
PATH_ROWS = [1, 17, SPLIT_MAX_M, SPLIT_MAX_M + 1]


@pytest.mark.parametrize("labels", [1, 2, 3, 17], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("m", PATH_ROWS, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_both_paths(m, labels, dtype):
    assert pick_head_config(m, dtype).split_n == (m <= SPLIT_MAX_M)
    h = randn(m, 2, 40, dtype=dtype)
    w1, b1, w2, b2 = params(40, 70, labels, dtype)
    out = poisoned((m, labels), dtype, KERNEL_DEVICE)
    assert classifier_head_fwd(h[:, 0], w1, b1, w2, b2, "tanh", out=out) is out
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, "tanh", dtype), dtype)


@pytest.mark.parametrize("m", [16, SPLIT_MAX_M + 1], ids=["split", "fused"])
def test_deterministic(m):
    h = randn(m, 3, 72, dtype=torch.bfloat16)
    w1, b1, w2, b2 = params(72, 136, 5, torch.bfloat16)
    first = classifier_head_fwd(h[:, 0], w1, b1, w2, b2, "tanh")
    assert torch.equal(first, classifier_head_fwd(h[:, 0], w1, b1, w2, b2, "tanh"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paths_agree_on_shared_rows(dtype):
    # Not bitwise (the paths add the N chunks with different roundings, see the kernel docstring):
    # a row's logits agree between a split-N batch and a fused batch to the dtype's tolerance.
    h = randn(SPLIT_MAX_M + 1, 1, 40, dtype=dtype)
    w1, b1, w2, b2 = params(40, 130, 3, dtype)
    small = classifier_head_fwd(h[:16, 0], w1, b1, w2, b2, "tanh")
    large = classifier_head_fwd(h[:, 0], w1, b1, w2, b2, "tanh")
    assert_close_rel(small, large[:16], dtype)


def test_bf16_rounds_to_nearest():
    # Truncation (the interpreter's own fp32 -> bf16 cast) never moves a value away from zero; the
    # GPU's round-to-nearest does so about half the time. Both roundings (pooled chunk, logits)
    # go through round_to, so about half the logits lie above the exact value in magnitude.
    h = randn(64, 1, 48, dtype=torch.bfloat16)
    w1, b1, w2, b2 = params(48, 80, 17, torch.bfloat16)
    for m in (16, 64):  # both tiles of the split path (the fused one is checked by parity above)
        out = classifier_head_fwd(h[:m, 0], w1, b1, w2, b2, "tanh").double()
        exact = reference64(h[:m], w1, b1, w2, b2, "tanh", torch.bfloat16)
        away = (out.abs() > exact.abs()).double().mean().item()
        assert 0.3 < away < 0.7, f"{away:.2f} of the logits rounded away from zero"


def test_zero_width_pooler():
    # N = 0: the split grid would be empty, so the fused path runs; logits are b2 alone
    w1, b1, w2, b2 = randn(0, 8), randn(0), randn(3, 0), randn(3)
    out = classifier_head_fwd(randn(4, 8), w1, b1, w2, b2, "tanh")
    assert torch.equal(out, b2.expand(4, 3))


@pytest.mark.parametrize("act", ["gelu", "relu", "identity"])
def test_activations_and_no_bias(act):
    h = randn(3, 4, 40)
    w1, b1, w2, b2 = params(40, 24, 5, torch.float32, bias=False)
    out = fused_classifier_head(h, w1, b1, w2, b2, activation=act, backend="triton")
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, act, torch.float32), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous(dtype):
    # [S, B, H] seen as [B, S, H], an H-slice of a wider tensor, transposed (column-major) weights
    h = randn(5, 3, 48, dtype=dtype).transpose(0, 1)[:, :, 4:44]
    w1 = randn(40, 24, dtype=dtype, scale=40**-0.5).t()
    w2 = randn(24, 3, dtype=dtype, scale=24**-0.5).t()
    b1, b2 = randn(24, dtype=dtype), randn(3, dtype=dtype)
    out = fused_classifier_head(h, w1, b1, w2, b2, backend="triton")
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, "tanh", dtype), dtype)


def test_every_output_written_and_empty_batch():
    w1, b1, w2, b2 = params(33, 40, 7, torch.float32)
    h = randn(19, 2, 33)
    out = poisoned((19, 7), torch.float32, KERNEL_DEVICE)
    classifier_head_fwd(h[:, 0], w1, b1, w2, b2, "tanh", out=out)
    assert not torch.isnan(out).any()
    assert fused_classifier_head(randn(0, 2, 33), w1, b1, w2, b2, backend="triton").shape == (0, 7)


def test_many_labels_fall_back_to_two_launches():
    w1, b1, w2, b2 = params(16, 16, 200, torch.float32)
    h = randn(2, 3, 16)
    out = fused_classifier_head(h, w1, b1, w2, b2, backend="triton")
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, "tanh", torch.float32), torch.float32)


@pytest.mark.parametrize(
    "change, exc, word",
    [
        ({"hidden_states": torch.zeros(2, 8)}, ValueError, "hidden_states"),
        ({"weight": torch.zeros(6, 9)}, ValueError, "weight"),
        ({"classifier_weight": torch.zeros(3, 7)}, ValueError, "classifier_weight"),
        ({"classifier_bias": torch.zeros(4)}, ValueError, "classifier_bias"),
        ({"classifier_weight": torch.zeros(3, 6, dtype=torch.float16)}, TypeError, "dtype"),
        ({"weight": "w"}, TypeError, "weight"),
        ({"activation": "swish"}, ValueError, "activation"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_inputs(change, exc, word):
    args = {
        "hidden_states": torch.randn(2, 3, 8), "weight": torch.randn(6, 8), "bias": torch.randn(6),
        "classifier_weight": torch.randn(3, 6), "classifier_bias": torch.randn(3),
    }  # fmt: skip
    kw = {k: change.pop(k) for k in ("activation", "backend") if k in change}
    args.update(change)
    with pytest.raises(exc, match=word):
        fused_classifier_head(*args.values(), **kw)


TINY = dict(
    vocab_size=60, hidden_size=40, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=24, num_labels=3, max_position_embeddings=32,
)  # fmt: skip
MODELS = {
    "bert-seqcls": lambda: T.BertForSequenceClassification(T.BertConfig(**TINY)),
    "bert-nsp": lambda: T.BertForNextSentencePrediction(T.BertConfig(**TINY)),
    "roberta-seqcls": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**TINY)),
}


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    real = heads.classifier_head_fwd

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(heads, "classifier_head_fwd", counting)
    return calls


@pytest.mark.parametrize("name", list(MODELS))
def test_patched_model_logits(name, kernel_calls):
    model = MODELS[name]().eval()
    ids = torch.randint(5, 60, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert patch_heads(model) == 1
        assert patch_heads(model) == 0  # idempotent
        fused = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert len(kernel_calls) == 1, "the fused kernel did not run"
    assert_close_rel(fused.logits, eager.logits, torch.float32)
    # the loss stays eager, computed from the fused logits
    assert_close_rel(fused.loss, eager.loss, torch.float32)
    # unchanged state_dict keys; unpatch restores the class forwards
    assert set(model.state_dict()) == set(MODELS[name]().state_dict())
    assert unpatch_heads(model) == 1
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("name", ["bert-seqcls", "roberta-seqcls"])
def test_training_mode_and_grad_run_eager(name, kernel_calls):
    model = MODELS[name]()
    patch_heads(model)
    ids = torch.randint(5, 60, (2, 5))
    model.train()
    out = model(input_ids=ids, labels=torch.tensor([0, 2]))
    out.loss.backward()  # exact eager path: autograd through nn.Linear, dropout active
    model.eval()
    with torch.enable_grad():
        model(input_ids=ids)  # eval with grad recorded: eager too
    assert kernel_calls == []
    assert model.classifier.weight.grad is not None if hasattr(model.classifier, "weight") else True


def test_works_with_pooler_patched_first(kernel_calls):
    import bertpool_fast

    model = MODELS["bert-seqcls"]().eval()
    ids = torch.randint(5, 60, (2, 6))
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        bertpool_fast.patch(model)
        assert patch_heads(model) == 1
        fused = model(input_ids=ids).logits
        # the backbone alone still returns the real pooled output, fused pooler
        pooled = model.bert(input_ids=ids).pooler_output
    assert kernel_calls and pooled.shape == (2, 40)
    assert_close_rel(fused, eager, torch.float32)


def test_patch_heads_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        patch_heads("bert")
    with pytest.raises(TypeError, match="model"):
        unpatch_heads(None)
