"""bertpool_fast: fused Triton kernels for BERT-family poolers, drop-in for Hugging Face models.

    import bertpool_fast
    bertpool_fast.patch(model)          # every BertPooler-form pooler now runs one fused kernel
    with bertpool_fast.patched(model): ...   # the same, undone on leaving the block
    y = bertpool_fast.fused_pooler(hidden_states, weight, bias)   # the op itself

Names are imported on first use, so ``import bertpool_fast`` does not import triton: the command
line (``python -m bertpool_fast``) can still switch on Triton's interpreter on a machine without
a GPU, which must happen before triton is imported.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use. No exported name may also be
# a submodule's name: importing that submodule would set the package attribute to the module and
# hide the export (tests/test_package.py checks this).
_EXPORTS = {
    "fused_pooler": ".ops",
    "fused_classifier_head": ".head_op",
    "masked_pool": ".embedding_ops",
    "l2_normalize": ".embedding_ops",
    "FastBertPooler": ".module",
    "FastContextPooler": ".module",
    "patch": ".patching",
    "patched": ".patching",
    "unpatch": ".patching",
    "refusal": ".pooler_swap",
    "is_bert_pooler_form": ".pooler_swap",
    "patch_heads": ".heads",
    "unpatch_heads": ".heads",
    "patch_sentence_transformer": ".sentence_pooling",
    "unpatch_sentence_transformer": ".sentence_pooling",
    "apply_to_transformers": ".class_patch",
    "revert_transformers": ".class_patch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertpool_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
