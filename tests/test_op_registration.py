"""The torch.library registration: fake implementation, autograd, tracing by torch.compile."""

import pytest
import torch

import bertpool_fast
from bertpool_fast.ops import pooler_op
from conftest import KERNEL_DEVICE, assert_close_rel


def test_opcheck():
    # torch.library.opcheck runs the schema, fake-tensor, autograd-registration and
    # (de)functionalization checks that torch.compile relies on.
    x = torch.randn(4, 3, 32, device=KERNEL_DEVICE)[:, 0]
    w = torch.randn(24, 32, device=KERNEL_DEVICE, requires_grad=True)
    b = torch.randn(24, device=KERNEL_DEVICE, requires_grad=True)
    torch.library.opcheck(pooler_op, (x, w, b, "tanh", "triton"))
    torch.library.opcheck(pooler_op, (x, w, None, "gelu", "torch"))


def test_fullgraph_trace_without_a_gpu():
    # backend="eager" traces with Dynamo (fake tensors through register_fake) but runs the op as
    # is, so this checks the graph has no break without needing a GPU compiler.
    hidden = torch.randn(3, 4, 32, device=KERNEL_DEVICE)
    weight = torch.randn(16, 32, device=KERNEL_DEVICE)
    bias = torch.randn(16, device=KERNEL_DEVICE)
    compiled = torch.compile(
        lambda h: bertpool_fast.fused_pooler(h, weight, bias), fullgraph=True, backend="eager"
    )
    assert_close_rel(compiled(hidden), torch.tanh(hidden[:, 0] @ weight.t() + bias), torch.float32)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_patched_model_fullgraph_without_a_gpu(backend):
    # The whole patched model in one graph (no break at the pooler); inductor compiles the rest of
    # the model for the CPU and calls the op, which runs the kernel as it would uncompiled.
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        vocab_size=64, max_position_embeddings=32,
    )  # fmt: skip
    model = BertModel(config).eval().to(KERNEL_DEVICE)
    ids = torch.randint(0, 64, (3, 6), device=KERNEL_DEVICE)
    with torch.no_grad():
        expected = model(input_ids=ids).pooler_output
        assert bertpool_fast.patch(model) == 1
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True, backend=backend)(input_ids=ids).pooler_output
    assert_close_rel(got, expected, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_torch_compile_fullgraph_on_gpu(dtype):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertPooler

    config = BertConfig(hidden_size=768)
    eager = BertPooler(config).cuda().to(dtype).eval()
    fast = bertpool_fast.FastBertPooler.from_pooler(eager)
    compiled = torch.compile(fast, fullgraph=True)
    hidden = torch.randn(8, 128, 768, device="cuda", dtype=dtype)
    with torch.no_grad():
        assert_close_rel(compiled(hidden), eager(hidden), dtype, scale=2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_capture(dtype):
    hidden = torch.randn(16, 64, 768, device="cuda", dtype=dtype)
    weight = torch.randn(768, 768, device="cuda", dtype=dtype) * 768**-0.5
    bias = torch.randn(768, device="cuda", dtype=dtype)
    expected = bertpool_fast.fused_pooler(hidden, weight, bias)  # also compiles the kernel
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        bertpool_fast.fused_pooler(hidden, weight, bias)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = bertpool_fast.fused_pooler(hidden, weight, bias)
    hidden.copy_(torch.randn_like(hidden))
    graph.replay()
    torch.cuda.synchronize()
    assert_close_rel(out, bertpool_fast.fused_pooler(hidden, weight, bias), dtype)
    assert not torch.equal(out, expected)  # the replay saw the new input


@pytest.mark.gpu
def test_compiled_kernel_uses_no_interpreter():
    from bertpool_fast.kernels import interpreter_enabled

    assert not interpreter_enabled(), "GPU tests must exercise the compiled kernel"


@pytest.mark.gpu
def test_tensors_on_a_device_that_is_not_current():
    # Triton launches on the current CUDA device; the launchers switch to the tensors' device.
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices; this machine has one")
    hidden = torch.randn(4, 8, 256, device="cuda:1", dtype=torch.float16)
    weight = torch.randn(256, 256, device="cuda:1", dtype=torch.float16) * 256**-0.5
    bias = torch.randn(256, device="cuda:1", dtype=torch.float16)
    with torch.cuda.device(0):
        out = bertpool_fast.fused_pooler(hidden, weight, bias)
    torch.cuda.synchronize(1)
    expected = torch.tanh(hidden[:, 0].double() @ weight.double().t() + bias.double())
    assert out.device == hidden.device
    assert_close_rel(out, expected, torch.float16)


class _SubclassTensor(torch.Tensor):
    pass


@pytest.mark.parametrize(
    "case", ["plain", "autocast", "grad", "float64", "subclass", "bad_activation"]
)
def test_inference_shortcut_only_in_the_common_case(monkeypatch, case):
    # pooler_inference skips the full path (autocast casts, validation messages, backend choice,
    # subclass refusal, the custom op) only when none of them could matter; every other call must
    # reach _fused_pooler, which does all of them.
    from bertpool_fast import ops

    full_path = []
    original = ops._fused_pooler

    def spy(*args):
        full_path.append(args[3])
        return original(*args)

    monkeypatch.setattr(ops, "_fused_pooler", spy)
    dtype = torch.float64 if case == "float64" else torch.float32
    hidden = torch.randn(3, 2, 16, device=KERNEL_DEVICE, dtype=dtype)
    weight = torch.randn(8, 16, device=KERNEL_DEVICE, dtype=dtype) * 0.25
    bias = torch.randn(8, device=KERNEL_DEVICE, dtype=dtype)
    activation = "tanh"
    if case == "grad":
        weight.requires_grad_(True)
    if case == "subclass":
        hidden = hidden.as_subclass(_SubclassTensor)
    if case == "bad_activation":
        activation = "swish"
        with pytest.raises(ValueError, match="activation must be one of"):
            bertpool_fast.fused_pooler(hidden, weight, bias, activation=activation)
        assert full_path == ["swish"]
        return
    if case == "autocast":
        with torch.autocast(torch.device(KERNEL_DEVICE).type, dtype=torch.bfloat16):
            out = bertpool_fast.fused_pooler(hidden, weight, bias)
        assert out.dtype == torch.bfloat16
    else:
        out = bertpool_fast.fused_pooler(hidden, weight, bias, activation=activation)
    # under autocast the kernel sees the inputs rounded to bf16, as nn.Linear would
    seen = [t.to(out.dtype) if case == "autocast" else t for t in (hidden[:, 0], weight, bias)]
    expected = torch.tanh(torch.nn.functional.linear(*(t.detach().double() for t in seen)))
    assert_close_rel(out.detach(), expected, out.dtype)
    assert full_path == ([] if case == "plain" else [activation])
