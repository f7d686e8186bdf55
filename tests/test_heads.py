"""Fused pooler + classifier: kernel vs float64 reference, patched models vs unpatched, errors."""

import pytest
import torch
import transformers as T

import bertpool_fast
import bertpool_fast.head_op as head_op
from bertpool_fast import fused_classifier_head, patch_heads, unpatch_heads
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


@pytest.mark.parametrize("rows", ["hidden_states", "first_rows"])
@pytest.mark.parametrize("labels", [1, 2, 3, 17], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("m", PATH_ROWS, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_both_paths(m, labels, dtype, rows):
    # The launcher takes [B, S, H] itself (position 0 read through stride(0) / stride(-1)) or the
    # [B, H] rows; S = 3 so that reading any position but 0 would show.
    assert pick_head_config(m, dtype).split_n == (m <= SPLIT_MAX_M)
    h = randn(m, 3, 40, dtype=dtype)
    w1, b1, w2, b2 = params(40, 70, labels, dtype)
    out = poisoned((m, labels), dtype, KERNEL_DEVICE)
    x = h if rows == "hidden_states" else h[:, 0]
    assert classifier_head_fwd(x, w1, b1, w2, b2, "tanh", out=out) is out
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
MOBILE = dict(TINY, intra_bottleneck_size=16, embedding_size=16, true_hidden_size=16,
              num_feedforward_networks=1)  # fmt: skip
MODELS = {
    "bert-seqcls": lambda: T.BertForSequenceClassification(T.BertConfig(**TINY)),
    "bert-nsp": lambda: T.BertForNextSentencePrediction(T.BertConfig(**TINY)),
    "roberta-seqcls": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**TINY)),
    "mobilebert-seqcls": lambda: T.MobileBertForSequenceClassification(
        T.MobileBertConfig(**MOBILE)
    ),
}


def make(name: str) -> torch.nn.Module:
    # On the kernel's device: on a CUDA machine, CPU tensors would take the torch path ("auto").
    return MODELS[name]().to(KERNEL_DEVICE).eval()


def make_ids(b: int, s: int) -> torch.Tensor:
    return torch.randint(5, 60, (b, s), device=KERNEL_DEVICE)


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    real = head_op.classifier_head_fwd

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(head_op, "classifier_head_fwd", counting)
    return calls


def test_patched_model_logits(kernel_calls):
    model = make("roberta-seqcls")
    ids = make_ids(3, 7)
    mask = torch.ones(3, 7, dtype=torch.long, device=KERNEL_DEVICE)
    mask[1, 4:] = 0
    labels = torch.tensor([0, 1, 1], device=KERNEL_DEVICE)
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert patch_heads(model) == 1
        assert patch_heads(model) == 0  # idempotent
        fused = model(input_ids=ids, attention_mask=mask, labels=labels)
    hidden = model.config.hidden_size
    # one launch, handed hidden_states itself (not a [:, 0] copy or view)
    assert kernel_calls == [(3, 7, hidden)], "the fused kernel did not run once on [B, S, H]"
    assert_close_rel(fused.logits, eager.logits, torch.float32)
    # the loss stays eager, computed from the fused logits
    assert_close_rel(fused.loss, eager.loss, torch.float32)
    # unchanged state_dict keys; unpatch restores the class forward and leaves no marker
    assert set(model.state_dict()) == set(MODELS["roberta-seqcls"]().state_dict())
    assert unpatch_heads(model) == 1
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(k.startswith("_bertpool") for m in model.modules() for k in m.__dict__)


@pytest.mark.parametrize("name", ["bert-seqcls", "bert-nsp", "mobilebert-seqcls"])
def test_bert_heads_are_not_fused(name, kernel_calls):
    # Their pooler and classifier live in different modules; fusing them took a per-call deferral,
    # which was removed. patch(heads=True) swaps their pooler only; logits are unchanged.
    model = make(name)
    ids = make_ids(2, 6)
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        assert patch_heads(model) == 0
        assert not any("forward" in m.__dict__ for m in model.modules())
        assert bertpool_fast.patch(model, heads=True) == 1  # the pooler swap
        fused = model(input_ids=ids).logits
    assert kernel_calls == []
    assert_close_rel(fused, eager, torch.float32)


def test_training_mode_and_grad_run_eager(kernel_calls):
    model = MODELS["roberta-seqcls"]().to(KERNEL_DEVICE)
    assert model.training and patch_heads(model) == 1  # patched in training mode
    ids = make_ids(2, 5)
    out = model(input_ids=ids, labels=torch.tensor([0, 2], device=KERNEL_DEVICE))
    out.loss.backward()  # exact eager path: autograd through nn.Linear, dropout active
    assert model.classifier.out_proj.weight.grad is not None
    assert model.base_model.embeddings.word_embeddings.weight.grad is not None
    model.eval()
    with torch.enable_grad():
        model(input_ids=ids)  # eval with grad recorded: eager too
    assert kernel_calls == []


def test_patch_with_heads_and_unpatch(kernel_calls):
    model = make("roberta-seqcls")
    ids = make_ids(2, 6)
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        assert bertpool_fast.patch(model, heads=True) == 1  # no pooler (add_pooling_layer=False)
        fused = model(input_ids=ids).logits
        assert bertpool_fast.unpatch(model) == 1
        model(input_ids=ids)
    assert kernel_calls == [(2, 6, 40)]
    assert_close_rel(fused, eager, torch.float32)


def test_patch_heads_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        patch_heads("bert")
    with pytest.raises(TypeError, match="model"):
        unpatch_heads(None)


# --- hooks, instance forwards and replaced modules: the exact eager path ------------------------


def _zero(module, args, output):
    return output * 0


# (module path under the head, hook kind): every submodule the fused kernel would skip. "pre" /
# "forward" hooks record the shapes they see, "zero" replaces the output with zeros.
HOOK_SITES = {
    "dense-forward-zero": ("dense", "zero"),
    "dense-pre": ("dense", "pre"),
    "dropout-forward": ("dropout", "forward"),
    "out_proj-pre": ("out_proj", "pre"),
    "out_proj-forward": ("out_proj", "forward"),
}


def _shapes(*values):
    return [tuple(v.shape) for v in values if isinstance(v, torch.Tensor)]


def _register(module, kind, seen):
    if kind == "pre":
        return module.register_forward_pre_hook(lambda m, args: seen.append(_shapes(*args)))
    if kind == "zero":
        return module.register_forward_hook(_zero)
    return module.register_forward_hook(lambda m, args, out: seen.append(_shapes(*args, out)))


@pytest.mark.parametrize("site", list(HOOK_SITES))
def test_hooks_registered_after_patch_run_eager(site, kernel_calls):
    import copy

    path, kind = HOOK_SITES[site]
    model = make("roberta-seqcls")
    twin = copy.deepcopy(model)  # never patched: what eager gives with the same hook
    patch_heads(model)
    ids = make_ids(3, 7)
    seen, seen_eager = [], []
    handle = _register(model.classifier.get_submodule(path), kind, seen)
    _register(twin.classifier.get_submodule(path), kind, seen_eager)
    with torch.no_grad():
        fused = model(input_ids=ids).logits
        eager = twin(input_ids=ids).logits
        assert kernel_calls == [], "a hooked head was fused"
        assert seen == seen_eager  # the hook fired, and saw what it sees in eager
        assert_close_rel(fused, eager, torch.float32)
        handle.remove()
        model(input_ids=ids)
    assert len(kernel_calls) == 1, "fusion did not resume once the hook was removed"


def test_hook_on_the_head_itself_still_fuses(kernel_calls):
    # the head's own hooks run around our forward and see what they see in eager
    model = make("roberta-seqcls")
    patch_heads(model)
    seen = []
    model.classifier.register_forward_hook(lambda m, args, out: seen.append(_shapes(*args, out)))
    with torch.no_grad():
        model(input_ids=make_ids(2, 5))
    assert kernel_calls == [(2, 5, 40)] and seen == [[(2, 5, 40), (2, 3)]]


def test_global_hook_runs_eager(kernel_calls):
    model = make("roberta-seqcls")
    patch_heads(model)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(type(m).__name__)
    )
    try:
        with torch.no_grad():
            model(input_ids=make_ids(2, 5))
    finally:
        handle.remove()
    assert kernel_calls == [] and "Linear" in seen


def test_instance_forward_set_after_patch_runs(kernel_calls):
    # a dense forward set by the user is what runs, eagerly
    model = make("roberta-seqcls")
    patch_heads(model)
    dense = model.classifier.dense
    dense.forward = lambda x: torch.nn.functional.linear(x, dense.weight) * 0
    ids = make_ids(2, 5)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert kernel_calls == []
    torch.testing.assert_close(logits, model.classifier.out_proj.bias.expand(2, -1))


class _DoublingDropout(torch.nn.Dropout):
    def forward(self, x):
        return x * 2


class _ShiftedLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) + 1


@pytest.mark.parametrize("replace", ["dropout", "out_proj", "dense"])
def test_replaced_by_subclass_runs_eager(replace, kernel_calls):
    model = make("roberta-seqcls")
    patch_heads(model)
    head = model.classifier
    if replace == "dropout":
        head.dropout = _DoublingDropout()
    else:
        old = getattr(head, replace)
        new = _ShiftedLinear(old.in_features, old.out_features).to(KERNEL_DEVICE)
        new.load_state_dict(old.state_dict())
        setattr(head, replace, new)
    ids = make_ids(2, 5)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        unpatch_heads(model)
        eager = model(input_ids=ids).logits
    assert kernel_calls == []
    torch.testing.assert_close(logits, eager)


def test_dropout_left_training_runs_eager(kernel_calls):
    # model.eval() then one dropout back in training: it draws a mask, which the kernel skips
    model = make("roberta-seqcls")
    patch_heads(model)
    dropout = model.classifier.dropout
    dropout.train()
    dropout.p = 1.0  # zeroes what passes: the fused result would differ visibly
    with torch.no_grad():
        logits = model(input_ids=make_ids(2, 5)).logits
    assert kernel_calls == []
    torch.testing.assert_close(logits, model.classifier.out_proj.bias.expand(2, -1))


# --- instance forwards that were there before patch_heads ---------------------------------------


def test_roberta_head_with_instance_forward_is_left_alone(kernel_calls):
    model = make("roberta-seqcls")
    bound = model.classifier.forward
    calls = []

    def wrapper(*args, **kwargs):  # what head.forward = torch.compile(head.forward) leaves
        calls.append(1)
        return bound(*args, **kwargs)

    model.classifier.forward = wrapper
    assert patch_heads(model) == 0 and model.classifier.__dict__["forward"] is wrapper
    with torch.no_grad():
        model(input_ids=make_ids(2, 5))
    assert calls and kernel_calls == []
    assert unpatch_heads(model) == 0
    assert model.classifier.__dict__["forward"] is wrapper


def test_forward_set_over_ours_survives_unpatch(kernel_calls):
    model = make("roberta-seqcls")
    patch_heads(model)
    head = model.classifier
    ours = head.forward
    head.forward = lambda *a, **k: ours(*a, **k)  # e.g. torch.compile(head.forward)
    wrapper = head.forward
    ids = make_ids(2, 5)
    with torch.no_grad():
        model(input_ids=ids)
        assert len(kernel_calls) == 1
        assert unpatch_heads(model) == 1
        assert head.__dict__["forward"] is wrapper  # the user's, kept
        model(input_ids=ids)  # ours inside it now runs the class forward
    assert len(kernel_calls) == 1


# --- autocast -----------------------------------------------------------------------------------


def test_functional_autocast_matches_eager(kernel_calls):
    h = randn(3, 5, 40)
    w1, b1, w2, b2 = params(40, 24, 3, torch.float32)
    with torch.autocast(KERNEL_DEVICE, dtype=torch.bfloat16):
        out = fused_classifier_head(h, w1, b1, w2, b2)
        eager = torch.nn.functional.linear(
            torch.tanh(torch.nn.functional.linear(h[:, 0], w1, b1)), w2, b2
        )
    assert out.dtype == eager.dtype == torch.bfloat16
    # only the first-token rows were cast ([B, 1, H]), never the whole [B, S, H]
    assert kernel_calls == [(3, 1, 40)]
    bf = [None if t is None else t.to(torch.bfloat16) for t in (h, w1, b1, w2, b2)]
    assert_close_rel(out, reference64(*bf, "tanh", torch.bfloat16), torch.bfloat16)
    # eager rounds the dense output before tanh as well: two roundings apart at most
    assert_close_rel(out, eager, torch.bfloat16, scale=2)


def test_patched_model_under_autocast(kernel_calls):
    model = make("roberta-seqcls")
    ids = make_ids(3, 7)
    with torch.no_grad(), torch.autocast(KERNEL_DEVICE, dtype=torch.bfloat16):
        eager = model(input_ids=ids).logits
        patch_heads(model)
        fused = model(input_ids=ids).logits
    assert kernel_calls == [(3, 1, 40)]
    assert fused.dtype == eager.dtype == torch.bfloat16
    assert_close_rel(fused, eager, torch.bfloat16, scale=2)


# --- the launch runs on the tensors' device ------------------------------------------------------


def test_launch_inside_device_guard(monkeypatch):
    import contextlib

    import bertpool_fast.kernels.classifier_head as ch

    guarded = []

    @contextlib.contextmanager
    def recording(t):
        guarded.append(t)
        yield

    monkeypatch.setattr(ch, "device_of", recording)
    h = randn(2, 3, 16)
    w1, b1, w2, b2 = params(16, 16, 2, torch.float32)
    classifier_head_fwd(h, w1, b1, w2, b2, "tanh")
    assert guarded and guarded[0] is h


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_while_first_is_current():
    with torch.cuda.device(0):
        h = randn(17, 3, 64, device="cuda:1")
        w1, b1, w2, b2 = (t.to("cuda:1") for t in params(64, 48, 5, torch.float32))
        out = fused_classifier_head(h, w1, b1, w2, b2, backend="triton")
    assert out.device == h.device
    assert_close_rel(out, reference64(h, w1, b1, w2, b2, "tanh", torch.float32), torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA auto path needs a GPU")
@pytest.mark.parametrize("batch", [1, head_op.FUSED_HEAD_MAX_BATCH + 3])
def test_head_auto_leaves_float32_on_a_gpu_to_cublas(monkeypatch, batch):
    # the pooler's rule: under "auto" float32 on a GPU is eager's computation (cuBLAS), fused batch
    # or not, so the logits are bitwise the torch path's and no kernel launches
    launched = []
    monkeypatch.setattr(head_op, "classifier_head_fwd", lambda *a: launched.append(a))
    h = randn(batch, 4, 64, device="cuda")
    w1, b1, w2, b2 = (t.to("cuda") for t in params(64, 64, 5, torch.float32))
    with torch.no_grad():
        auto = fused_classifier_head(h, w1, b1, w2, b2)
        torch_path = fused_classifier_head(h, w1, b1, w2, b2, backend="torch")
    torch.testing.assert_close(auto, torch_path, rtol=0, atol=0)
    assert not launched


@pytest.mark.parametrize(
    "batch", [1, head_op.FUSED_HEAD_MAX_BATCH, head_op.FUSED_HEAD_MAX_BATCH + 1]
)
def test_head_fuses_only_where_it_measured_faster(monkeypatch, batch):
    # Up to FUSED_HEAD_MAX_BATCH rows the head is one launch; above it, the pooler kernel and then
    # F.linear (the H100 measured that faster). Both give eager's logits.
    launched = []
    original = head_op.classifier_head_fwd

    def spy(*args, **kwargs):
        launched.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(head_op, "classifier_head_fwd", spy)
    h = randn(batch, 3, 64)
    w1, b1 = randn(64, 64, scale=64**-0.5), randn(64, scale=0.1)
    w2, b2 = randn(5, 64, scale=64**-0.5), randn(5, scale=0.1)
    with torch.no_grad():
        logits = fused_classifier_head(h, w1, b1, w2, b2)
    assert launched == ([batch] if batch <= head_op.FUSED_HEAD_MAX_BATCH else [])
    x = h[:, 0].double()
    pooled = torch.tanh(x @ w1.double().T + b1.double()).to(h.dtype).double()
    assert_close_rel(logits, pooled @ w2.double().T + b2.double(), h.dtype)
