"""Drop-in for sentence-transformers: its ``Pooling`` (and a following ``Normalize``) run fused.

``patch_sentence_transformer(model)`` switches, in place, the class of each ``Pooling`` module of a
``SentenceTransformer`` to ``FastPooling`` (a subclass of ``Pooling``: ``isinstance`` checks,
config, ``save`` and every attribute stay as they were; nothing is copied) and of a ``Normalize``
that directly follows it to ``FastNormalize``. When that Normalize L2-normalises the pooled
``sentence_embedding`` in place and the pooling has a single mode, the normalisation runs inside
the pooling kernel and the Normalize passes its input through. ``unpatch_sentence_transformer``
switches the classes back. Only the given model changes; sentence-transformers itself is untouched.
Unpatch before ``save()``: a saved module records its class.

sentence-transformers is an optional dependency: this module imports it on first use.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .embedding_ops import l2_normalize, masked_pool
from .install import Change, changes_under, install, undo
from .validation import KERNEL_DTYPES

_KIND = "sentence_transformers"

# Feature keys that put sentence-transformers' Pooling on paths the kernel does not cover (unpadded
# flash-attention batches, given token weights or CLS embeddings): the original forward runs then.
_EAGER_FEATURES = ("cu_seq_lens_q", "token_weights_sum", "cls_token_embeddings")
# Instance flags, in __dict__ so they add no state_dict keys.
_FUSE_NORMALIZE = "_bertpool_fuse_normalize"
_NORMALIZED_UPSTREAM = "_bertpool_normalized_upstream"


def _st_classes() -> tuple[type, type]:
    try:
        from sentence_transformers.models import Normalize, Pooling
    except ImportError as e:  # optional extra
        raise ImportError(
            "patching a SentenceTransformer needs the sentence-transformers package"
        ) from e
    return Pooling, Normalize


def _needs_eager(module: nn.Module, features: dict) -> bool:
    if any(k in features for k in _EAGER_FEATURES):
        return True
    # prompt exclusion rewrites the mask (with left-padding detection): left to the original
    return not module.include_prompt and "prompt_length" in features


# The two forwards below become methods of FastPooling / FastNormalize (built in fast_classes()).
def _fast_pooling_forward(self, features: dict, **kwargs) -> dict:
    x = features["token_embeddings"]
    fuse_norm_flag = self.__dict__.get(_FUSE_NORMALIZE, False)
    if _needs_eager(self, features) or x.dtype not in KERNEL_DTYPES:
        features = _st_classes()[0].forward(self, features, **kwargs)
        if fuse_norm_flag:
            emb = features["sentence_embedding"]
            features["sentence_embedding"] = F.normalize(emb, p=2, dim=-1)
        return features
    mask = features.get("attention_mask")
    if mask is not None and mask.shape[-1] != x.shape[1]:
        mask = None  # as Pooling: a mask of another length is ignored (every token kept)
    modes = (self.pooling_mode,) if isinstance(self.pooling_mode, str) else self.pooling_mode
    in_kernel = fuse_norm_flag and len(modes) == 1
    outs = [masked_pool(x, mask, mode, normalize=in_kernel) for mode in modes]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    if fuse_norm_flag and not in_kernel:
        out = l2_normalize(out)  # concatenated modes are normalised together, as Normalize does
    features["sentence_embedding"] = out
    return features


def _fast_normalize_forward(self, features: dict) -> dict:
    # one kernel, or nothing when the fused pooling already normalised
    x = features.get(self.module_input_name)
    if x is None:
        return features
    if self.__dict__.get(_NORMALIZED_UPSTREAM, False):
        return features  # the fused pooling wrote a normalised sentence_embedding
    features[self.module_output_name] = l2_normalize(x)
    return features


@functools.cache
def fast_classes() -> tuple[type, type]:
    """(FastPooling, FastNormalize), built on first use as subclasses of the installed modules."""
    pooling, normalize = _st_classes()
    # Single base and no slots of their own: an instance's __class__ can then be switched both ways
    # (a second base, even an empty mixin, makes CPython refuse the switch).
    fast_pooling = type(
        "FastPooling",
        (pooling,),
        {
            "__module__": __name__,
            "__slots__": (),
            "__doc__": "sentence-transformers' Pooling, fused: same config, same output.",
            "forward": _fast_pooling_forward,
        },
    )
    fast_normalize = type(
        "FastNormalize",
        (normalize,),
        {
            "__module__": __name__,
            "__slots__": (),
            "__doc__": "sentence-transformers' Normalize as one kernel (or none, when fused upstream).",
            "forward": _fast_normalize_forward,
        },
    )
    return fast_pooling, fast_normalize


def __getattr__(name: str):
    # FastPooling / FastNormalize exist only with sentence-transformers installed
    if name in ("FastPooling", "FastNormalize"):
        return fast_classes()[0 if name == "FastPooling" else 1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_sentence_transformer(model: object) -> bool:
    """True for a sentence-transformers model (checked without importing the package)."""
    return any(
        c.__module__.startswith("sentence_transformers.") and c.__name__ == "SentenceTransformer"
        for c in type(model).__mro__
    )


def fuse_sentence_pooling(model: nn.Module) -> list[Change]:
    """Switch each ``Pooling`` / following ``Normalize`` child of a ``SentenceTransformer``; the
    changes made. Only modules of exactly the sentence-transformers classes are switched, never
    subclasses, whose forward may differ."""
    pooling, normalize = _st_classes()
    fast_pooling, fast_normalize = fast_classes()
    children = list(model.children())
    changes = []
    for i, module in enumerate(children):
        if type(module) is not pooling:
            continue
        changes.append(install(module, Change(_KIND, module, "__class__", fast_pooling)))
        nxt = children[i + 1] if i + 1 < len(children) else None
        if type(nxt) is normalize:
            changes.append(install(nxt, Change(_KIND, nxt, "__class__", fast_normalize)))
            # Fuse only the plain case: Normalize rewrites the pooled embedding in place.
            in_place = nxt.module_input_name == nxt.module_output_name == "sentence_embedding"
            for target, flag in ((module, _FUSE_NORMALIZE), (nxt, _NORMALIZED_UPSTREAM)):
                changes.append(
                    install(target, Change(_KIND, target, flag, in_place, counted=False))
                )
    return changes


def patch_sentence_transformer(model: nn.Module) -> int:
    """Switch each ``Pooling`` / following ``Normalize`` of ``model`` to the fused classes; count them.

    The same as ``bertpool_fast.patch(model, poolers=False, sentence_transformers=True)``.
    Idempotent (a second call switches nothing and returns 0).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(c.counted for c in fuse_sentence_pooling(model))


def unpatch_sentence_transformer(model: nn.Module) -> int:
    """Switch the modules that :func:`patch_sentence_transformer` changed back; count them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return undo(model, changes_under(model, [_KIND]))
