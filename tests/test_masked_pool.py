"""masked_pool: kernel vs float64 reference, sentence-transformers' own Pooling, odd shapes, errors."""

import pytest
import torch

from bertpool_fast.kernels.masked_pool import POOL_MODES, pick_pool_config
from bertpool_fast.masked_pooling import l2_normalize, masked_pool, masked_pool_reference
from conftest import KERNEL_DEVICE, assert_close_rel, randn

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def random_mask(b, s, padding="right", empty_rows=()):
    """0/1 int64 mask with random lengths in [1, s], padded on one side; listed rows all zero."""
    lengths = torch.randint(1, s + 1, (b,))
    pos = torch.arange(s)[None, :]
    if padding == "right":
        mask = pos < lengths[:, None]
    else:
        mask = pos >= (s - lengths)[:, None]
    mask = mask.long()
    for r in empty_rows:
        mask[r] = 0
    return mask.to(KERNEL_DEVICE)


def reference64(x, mask, mode, normalize):
    # float64 reference from the same rounded inputs; the kernel's only rounding is the final store
    return masked_pool_reference(x.double(), mask, mode, normalize)


def check(x, mask, mode, normalize, dtype):
    out = masked_pool(x, mask, mode, normalize, backend="triton")
    assert out.dtype == dtype and out.shape == (x.shape[0], x.shape[2])
    ref = reference64(x, mask, mode, normalize)
    # max over a row that keeps nothing is -inf by definition: compared exactly, then left out of
    # the norm-relative error (inf - inf would be NaN there)
    inf = torch.isinf(ref)
    assert torch.equal(out.double().cpu()[inf.cpu()], ref.cpu()[inf.cpu()])
    assert_close_rel(out[~inf], ref[~inf], dtype)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_modes_parity(mode, dtype, padding):
    x = randn(3, 7, 33, dtype=dtype)
    check(x, random_mask(3, 7, padding), mode, False, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["mean", "max", "weightedmean", "cls"])
@pytest.mark.parametrize("shape", [(2, 5, 40), (300, 3, 24), (2, 9, 5000)], ids=["row", "row-bigB", "split"])
def test_normalize_both_paths(mode, dtype, shape):
    b, s, h = shape
    # the three shapes take the in-kernel (whole-row) and the separate-kernel normalisation
    assert pick_pool_config(b, s, h, True)[1] == (h <= 4096)
    x = randn(b, s, h, dtype=dtype)
    out = check(x, random_mask(b, s, "left"), mode, True, dtype)
    assert torch.allclose(out.double().norm(dim=1), torch.ones(b, dtype=torch.float64), atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_all_zero_mask_rows(mode, dtype):
    x = randn(4, 6, 20, dtype=dtype)
    mask = random_mask(4, 6, "right", empty_rows=(1, 3))
    out = check(x, mask, mode, False, dtype)
    assert not torch.isnan(out).any()
    expected_empty = {"cls": x[[1, 3], 0].float(), "max": torch.full((2, 20), float("-inf"))}.get(
        mode, torch.zeros(2, 20)
    )
    torch.testing.assert_close(out[[1, 3]].float().cpu(), expected_empty.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("mode", POOL_MODES)
def test_all_zero_rows_normalized_match_f_normalize(mode):
    x = randn(3, 5, 16)
    mask = random_mask(3, 5, empty_rows=(0,))
    out = masked_pool(x, mask, mode, True, backend="triton")
    ref = torch.nn.functional.normalize(masked_pool_reference(x, mask, mode), dim=-1)
    # No NaN from a mask: zeros stay zeros, and max's empty row is defined as zeros (where
    # F.normalize of sentence-transformers' -inf row would give NaN); other rows as F.normalize.
    assert not torch.isnan(out).any()
    if mode == "cls":
        assert_close_rel(out[0], ref[0], torch.float32)
    else:
        assert torch.equal(out[0].cpu(), torch.zeros(16))
    assert_close_rel(out[1:], ref[1:], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["mean", "max", "lasttoken", "weightedmean"])
def test_non_contiguous_inputs(mode, dtype):
    # [S, B, H] seen as [B, S, H]; an H-slice of a wider tensor; a mask that is a column slice
    x_t = randn(7, 3, 33, dtype=dtype).transpose(0, 1)
    x_slice = randn(3, 7, 50, dtype=dtype)[:, :, 5:38]
    wide_mask = random_mask(3, 14, "left")[:, ::2]
    for x in (x_t, x_slice):
        assert not x.is_contiguous()
        check(x, wide_mask, mode, False, dtype)


@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 1, 33), (1, 7, 1), (5, 2, 129)])
def test_odd_shapes(mode, shape):
    x = randn(*shape)
    check(x, random_mask(shape[0], shape[1]), mode, False, torch.float32)


def test_empty_batch_and_no_mask():
    x = randn(0, 4, 8)
    assert masked_pool(x, None, backend="triton").shape == (0, 8)
    x = randn(2, 5, 12, dtype=torch.float16)
    check(x, None, "mean", False, torch.float16)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.float32])
def test_mask_dtypes(mask_dtype):
    x = randn(3, 6, 10)
    mask = random_mask(3, 6, "left")
    out = masked_pool(x, mask.to(mask_dtype), "weightedmean", backend="triton")
    assert_close_rel(out, reference64(x, mask, "weightedmean", False), torch.float32)


def test_every_output_written():
    # outputs start as NaN (poisoned) in the launcher's out= buffer: none may survive
    from bertpool_fast.kernels.masked_pool import masked_pool_fwd
    from conftest import poisoned

    for h in (33, 300):
        x = randn(3, 4, h)
        out = poisoned((3, h), torch.float32, KERNEL_DEVICE)
        masked_pool_fwd(x, random_mask(3, 4), "mean", False, out=out)
        assert not torch.isnan(out).any()


def test_matches_sentence_transformers_pooling():
    st_models = pytest.importorskip("sentence_transformers.models")
    for mode in POOL_MODES:
        pool = st_models.Pooling(24, pooling_mode=mode)
        for padding in ("right", "left"):
            x = randn(4, 6, 24)
            mask = random_mask(4, 6, padding, empty_rows=(2,))
            ours = masked_pool(x, mask, mode, backend="triton")
            theirs = pool({"token_embeddings": x, "attention_mask": mask})["sentence_embedding"]
            # row 2 keeps nothing: -inf for max in both, compared exactly
            assert torch.equal(ours[2], theirs[2].to(ours.device))
            assert_close_rel(ours[[0, 1, 3]], theirs[[0, 1, 3]], torch.float32)


def test_l2_normalize():
    x = randn(4, 3, 33, dtype=torch.float16)
    out = l2_normalize(x, backend="triton")
    assert_close_rel(out, torch.nn.functional.normalize(x.double(), dim=-1), torch.float16)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        ({"hidden_states": [1.0]}, TypeError, "hidden_states"),
        ({"hidden_states": torch.zeros(2, 3)}, ValueError, "hidden_states"),
        ({"hidden_states": torch.zeros(2, 0, 4)}, ValueError, "seq"),
        ({"hidden_states": torch.zeros(2, 3, 4, dtype=torch.int32)}, TypeError, "hidden_states"),
        ({"attention_mask": torch.ones(2, 4)}, ValueError, "attention_mask"),
        ({"attention_mask": "mask"}, TypeError, "attention_mask"),
        ({"attention_mask": torch.ones(2, 3, dtype=torch.complex64)}, TypeError, "attention_mask"),
        ({"mode": "median"}, ValueError, "mode"),
        ({"normalize": 1}, TypeError, "normalize"),
        ({"backend": "cuda"}, ValueError, "backend"),
    ],
)
def test_bad_inputs(kwargs, exc, word):
    args = {"hidden_states": torch.randn(2, 3, 4), "attention_mask": None, "mode": "mean"}
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        masked_pool(**args)


@pytest.mark.parametrize("s,h", [(5, 16), (520, 128)], ids=["whole-row", "h-split"])
def test_empty_max_row_normalized_is_zero_on_both_paths(s, h):
    # (520, 128) is past the whole-row limit, so normalisation runs as a second kernel there.
    whole_row = pick_pool_config(2, s, h, True)[1]
    assert whole_row == (s == 5)
    x = randn(2, s, h)
    mask = random_mask(2, s, empty_rows=(1,))
    out = masked_pool(x, mask, "max", True, backend="triton")
    assert torch.equal(out[1].cpu(), torch.zeros(h))
    ref = torch.nn.functional.normalize(masked_pool_reference(x[:1], mask[:1], "max"), dim=-1)
    assert_close_rel(out[:1], ref, torch.float32)
