"""DistributedDataParallel: the patched model trains under DDP (gloo, 2 CPU processes on loopback)
and its gradients equal a single-process run on the whole batch.

DDP averages the ranks' gradients; each rank's loss is the mean over its half of the batch, so the
average is the gradient of the mean loss over the whole batch, which one process computes directly.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bertpool_fast
from conftest import assert_close_rel

WORLD = 2
STEPS = 2


def tiny_model():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def train(model, batches, shard=slice(None)):
    """SGD steps on ``shard`` of each batch; returns the gradients of every step, by name."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for input_ids, labels in batches:
        loss = model(input_ids=input_ids[shard], labels=labels[shard]).loss
        loss.backward()
        inner = getattr(model, "module", model)  # DDP's parameter names carry a "module." prefix
        grads.append({n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad()
    return grads


def _worker(rank, port, state, batches, out_path):
    # 2 processes on 2 cores: one thread each, or they fight over the cores
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from bertpool_fast.kernels import interpreter_enabled

        model = tiny_model()
        model.load_state_dict(state)
        assert bertpool_fast.patch(model) == 1
        ddp = DDP(model)
        per_rank = batches[0][0].shape[0] // WORLD
        grads = train(ddp, batches, slice(rank * per_rank, (rank + 1) * per_rank))
        if rank == 0:
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            torch.save(
                {"grads": grads, "params": params, "interp": interpreter_enabled()}, out_path
            )
        # Neither rank tears gloo down while the other still uses it: a rank that exits first
        # closes the pair, and the other's gloo thread may then abort the process (seen here,
        # about 1 run in 7: "terminate called without an active exception").
        dist.barrier()
        # every collective done: what follows is gloo's teardown (see _spawn_workers)
        open(f"{out_path}.done{rank}", "w").close()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_workers(state, batches, out_path):
    # spawn: fresh interpreters that inherit os.environ, TRITON_INTERPRET included (conftest)
    try:
        mp.spawn(_worker, args=(free_port(), state, batches, out_path), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as exc:
        # The barrier does not stop every abort in gloo's teardown (seen once in CI after it:
        # "terminate called without an active exception", SIGABRT): a rank that aborts after
        # both ranks finished every collective has computed all the test reads. Any other exit
        # (an abort before that, an exception, another signal) still fails the test.
        done = all(os.path.exists(f"{out_path}.done{rank}") for rank in range(WORLD))
        if not (done and exc.signal_name == "SIGABRT"):
            raise
        print(f"rank {exc.error_index} aborted in gloo's teardown after its work: {exc}")


def test_ddp_gradients_equal_single_process(tmp_path):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randint(0, 64, (8, 10)), torch.randint(0, 3, (8,))) for _ in range(STEPS)]
    out_path = str(tmp_path / "rank0.pt")
    _spawn_workers(state, batches, out_path)
    ranked = torch.load(out_path)
    # the ranks ran the Triton kernels wherever this process does (the interpreter on CPU)
    assert ranked["interp"] == bertpool_fast.kernels.interpreter_enabled()

    single = tiny_model()
    single.load_state_dict(state)
    bertpool_fast.patch(single)
    expected = train(single, batches)
    # Sums over the batch split in two halves and averaged by allreduce instead of summed at once:
    # fp32 reassociation only, a few ulps; the table's fp32 entry holds it.
    for step, (got, ref) in enumerate(zip(ranked["grads"], expected)):
        assert got.keys() == ref.keys()
        flat_got = torch.cat([got[n].flatten() for n in ref])
        flat_ref = torch.cat([ref[n].flatten() for n in ref])
        assert_close_rel(flat_got, flat_ref, torch.float32)
        for name in ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight"):
            assert_close_rel(got[name], ref[name], torch.float32)
            assert got[name].abs().sum() > 0, f"step {step}: no gradient reached {name}"
    # The trained parameters agree as one vector. Not tensor by tensor: the attention key bias has
    # a zero true gradient (softmax ignores it) and starts at zero, so it holds rounding noise only.
    names = [n for n, _ in single.named_parameters()]
    flat_ddp = torch.cat([ranked["params"][n].flatten() for n in names])
    flat_single = torch.cat([p.detach().flatten() for p in single.parameters()])
    assert_close_rel(flat_ddp, flat_single, torch.float32)
