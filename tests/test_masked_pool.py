"""masked_pool: kernel vs float64 reference, sentence-transformers' own Pooling, odd shapes, errors."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import bertpool_fast.kernels.masked_pool as kmp
from bertpool_fast.embedding_ops import l2_normalize, masked_pool, masked_pool_reference
from bertpool_fast.kernels.masked_pool import (
    POOL_CONFIGS,
    POOL_MODES,
    l2_normalize_fwd,
    masked_pool_fwd,
    pick_pool_config,
    row_config,
)
from bertpool_fast.kernels.tiles import pick_tile
from conftest import KERNEL_DEVICE, assert_close_rel, poisoned, randn

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
@pytest.mark.parametrize(
    "shape", [(2, 5, 40), (300, 3, 24), (2, 9, 5000)], ids=["row", "row-bigB", "split"]
)
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


# Shapes that take each normalisation path: in-kernel (whole row) and H-split + l2_normalize_kernel.
# (2, 520, 128) is past ROW_MAX_ELEMS at a small batch, so it splits even though H fits one program.
PATH_SHAPES = {"whole-row": (3, 70, 40), "h-split": (2, 520, 128)}


@pytest.mark.parametrize("path", PATH_SHAPES)
@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalize"])
def test_every_output_written(mode, normalize, path):
    # the launcher's out= buffer starts as NaN (poisoned): an element no program writes fails
    b, s, h = PATH_SHAPES[path]
    assert pick_pool_config(b, s, h, True)[1] == (path == "whole-row")
    x = randn(b, s, h)
    mask = random_mask(b, s, "left")
    out = poisoned((b, h), torch.float32, KERNEL_DEVICE)
    assert masked_pool_fwd(x, mask, mode, normalize, out=out) is out
    assert_close_rel(out, reference64(x, mask, mode, normalize), torch.float32)


def test_l2_normalize_every_output_written():
    x = randn(5, 1100)  # past NORMALIZE_BLOCK_H: two chunks per row, the second partial
    out = poisoned((5, 1100), torch.float32, KERNEL_DEVICE)
    assert l2_normalize_fwd(x, out=out) is out
    assert_close_rel(out, F.normalize(x.double(), dim=-1), torch.float32)


def nan_position(mask, row, mode):
    """A kept token of ``row`` that ``mode`` reads: the first / last kept one for cls / lasttoken,
    else one in the first S chunk, so a later chunk's finite values must not overwrite it."""
    kept = mask[row].nonzero().flatten().tolist()
    if mode == "cls":
        return kept[0]
    if mode == "lasttoken":
        return kept[-1]
    return kept[min(2, len(kept) - 1)]


@pytest.mark.parametrize("path", PATH_SHAPES)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_nan_in_kept_token_propagates(mode, path):
    # torch and sentence-transformers give NaN; tl.max alone (maxnum) would drop it in max mode
    b, s, h = PATH_SHAPES[path]
    x = randn(b, s, h)
    mask = torch.ones(b, s, dtype=torch.long, device=KERNEL_DEVICE)
    mask[1, :3] = 0  # left padding on the NaN row: cls / weightedmean start past position 0
    t = nan_position(mask, 1, mode)
    x[1, t, 7] = float("nan")

    out = masked_pool(x, mask, mode, backend="triton")
    expected_nan = torch.zeros(b, h, dtype=torch.bool)
    expected_nan[1, 7] = True
    assert torch.equal(torch.isnan(out).cpu(), expected_nan)
    assert_close_rel(out, reference64(x, mask, mode, False), torch.float32)

    # normalised: the norm is NaN, so the whole row is NaN (F.normalize), and only that row
    out = masked_pool(x, mask, mode, True, backend="triton")
    assert torch.isnan(out[1]).all()
    assert not torch.isnan(out[[0] + list(range(2, b))]).any()
    assert_close_rel(out, reference64(x, mask, mode, True), torch.float32)


@pytest.mark.parametrize("path", PATH_SHAPES)
@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalize"])
def test_nan_in_masked_token_never_appears(mode, normalize, path):
    # masked-out tokens are not read: a NaN or inf there reaches no output, in any mode
    b, s, h = PATH_SHAPES[path]
    x = randn(b, s, h)
    mask = random_mask(b, s, "right")
    mask[1, -1] = 0
    mask[1, 0] = 1
    x[1, -1, :] = float("nan")
    x[1, -1, 3] = float("inf")
    out = masked_pool(x, mask, mode, normalize, backend="triton")
    assert torch.isfinite(out).all()
    assert_close_rel(out, reference64(x, mask, mode, normalize), torch.float32)


# (dtype, scale): fp16 squares overflow past |x| = 256 and underflow below ~2e-4; bf16 and fp32
# squares overflow fp32 past ~1.8e19; the tiny rows have norms below eps = 1e-12 (x / eps then).
MAGNITUDES = [
    (torch.float16, 300.0),
    (torch.float16, 1e4),
    (torch.float16, 1e-4),
    (torch.bfloat16, 1e20),
    (torch.bfloat16, 1e-30),
    (torch.float32, 1e25),
    (torch.float32, 1e-25),
]
MAGNITUDE_IDS = [f"{str(d).split('.')[-1]}-x{sc:g}" for d, sc in MAGNITUDES]


@pytest.mark.parametrize("dtype,scale", MAGNITUDES, ids=MAGNITUDE_IDS)
def test_l2_normalize_large_and_tiny_magnitudes(dtype, scale):
    x = randn(4, 1100, dtype=dtype, scale=scale)  # two H chunks per row
    assert torch.isfinite(x).all()
    out = l2_normalize(x, backend="triton")
    ref = F.normalize(x.double(), dim=-1, eps=1e-12)
    assert torch.isfinite(out).all()
    assert_close_rel(out, ref, dtype)


@pytest.mark.parametrize("path", PATH_SHAPES)
@pytest.mark.parametrize("dtype,scale", MAGNITUDES, ids=MAGNITUDE_IDS)
def test_masked_pool_normalize_large_and_tiny_magnitudes(dtype, scale, path):
    b, s, h = PATH_SHAPES[path]
    x = randn(b, s, h, dtype=dtype, scale=scale)
    mask = random_mask(b, s)
    for mode in ("mean", "max"):
        out = masked_pool(x, mask, mode, True, backend="triton")
        assert torch.isfinite(out).all()
        assert_close_rel(out, reference64(x, mask, mode, True), dtype)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf / inf
def test_l2_normalize_inf_row_as_f_normalize():
    x = randn(3, 40)
    x[1, 5] = float("inf")
    out = l2_normalize(x, backend="triton")
    ref = F.normalize(x, dim=-1)  # the inf element: inf / inf = NaN; the rest of its row: 0
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(out[1].nan_to_num(0.0), torch.zeros(40, device=out.device))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_normalize_strided_inputs(dtype):
    # read through both strides, no copy needed: a transposed [H, B], column slices in 2-D and 3-D
    xs = (
        randn(1100, 3, dtype=dtype).t(),
        randn(3, 70, dtype=dtype)[:, ::2],
        randn(3, 4, 14, dtype=dtype)[..., ::2],
    )
    for x in xs:
        assert x.stride(-1) != 1
        out = l2_normalize(x, backend="triton")
        assert out.shape == x.shape and out.dtype == dtype
        assert_close_rel(out, F.normalize(x.double(), dim=-1), dtype)


def test_grid_keeps_batch_off_the_capped_axes(monkeypatch):
    # CUDA caps gridDim.y / z at 65535; the interpreter does not, so the grid is checked directly
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    # the launchers reach the kernels through their launch caches
    monkeypatch.setattr(kmp._launch_masked_pool, "kernel", Recorder())
    monkeypatch.setattr(kmp._launch_l2_normalize_kernel, "kernel", Recorder())
    b = 70_000
    for h, normalize in ((768, False), (5000, True)):  # the second launches l2_normalize too
        x = torch.empty(b, 2, h, device="meta", dtype=torch.float16)
        masked_pool_fwd(x, None, "mean", normalize)
    assert len(grids) == 3
    for grid in grids:
        assert all(n <= 65535 for n in grid[1:]), grid
        assert grid[0] < 2**31
    assert grids[0][0] == b * -(-768 // pick_pool_config(b, 2, 768, False)[0].block_h)


def test_pool_config_from_the_tile_table_and_bounded():
    for b in (1, 16, 17, 128, 129, 70_000):
        assert pick_pool_config(b, 512, 768, False) == (pick_tile(POOL_CONFIGS, b), False)
    assert pick_pool_config(256, 512, 768, True) == (row_config(768), True)
    assert pick_pool_config(8, 512, 4097, True)[1] is False
    # a server sees every (B, S): nothing may cache per distinct pair without a bound
    for f in (pick_pool_config, row_config):
        info = getattr(f, "cache_info", None)
        assert info is None or info().maxsize is not None


def test_eps_defined_once():
    # COUNT_EPS / NORM_EPS reach the kernels as constexpr globals, never as literals
    for kernel in (kmp.masked_pool_fwd_kernel, kmp.l2_normalize_kernel, kmp._inv_norm):
        src = inspect.getsource(kernel.fn)
        code = "\n".join(line.split("#")[0] for line in src.splitlines())
        assert "1e-9" not in code and "1e-12" not in code
    assert kmp._COUNT_EPS.value == kmp.COUNT_EPS and kmp._NORM_EPS.value == kmp.NORM_EPS


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
        ({"attention_mask": torch.ones(2, 3, 1)}, ValueError, "attention_mask"),
        ({"attention_mask": torch.ones(2, 3, device="meta")}, ValueError, "attention_mask"),
        ({"mode": "median"}, ValueError, "mode"),
        ({"mode": None}, ValueError, "mode"),
        ({"mode": 3}, ValueError, "mode"),
        ({"normalize": 1}, TypeError, "normalize"),
        ({"normalize": "yes"}, TypeError, "normalize"),
        ({"normalize": torch.tensor(True)}, TypeError, "normalize"),
        ({"backend": "cuda"}, ValueError, "backend"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
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


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (torch.ones(2, 3, dtype=torch.int32), TypeError, "x must be a floating-point"),
        (torch.ones(2, 3, dtype=torch.bool), TypeError, "x must be a floating-point"),
        (torch.tensor(1.0), ValueError, "x must have at least one dimension"),
        ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
    ],
    ids=["int32", "bool", "0-d", "list"],
)
def test_l2_normalize_bad_inputs(x, exc, match):
    with pytest.raises(exc, match=match):
        l2_normalize(x)


@pytest.mark.parametrize("shape", [(2, 3, 0), (0, 5), (2, 0, 5)])
def test_l2_normalize_empty(shape):
    # as F.normalize: an empty tensor of the same shape (an empty last dim used to crash reshape)
    x = torch.empty(shape, device=KERNEL_DEVICE)
    out = l2_normalize(x, backend="triton")
    assert out.shape == x.shape and out.dtype == x.dtype
