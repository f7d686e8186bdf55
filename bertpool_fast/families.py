"""The family survey (a tool): which transformers pooler classes the fused kernel covers, and why not.

Every class named ``*Pooler`` in ``transformers.models.*`` is a candidate
(:mod:`bertpool_fast.discovery`). A candidate is covered when its ``forward`` matches one of the
templates in :mod:`bertpool_fast.proof` and the pooler built from its family's default config
(shrunk, :mod:`bertpool_fast.tiny_models`) is provably swappable; anything else is listed with
the reason. ``tests/test_families.py`` checks every covered class numerically, and

    python -m bertpool_fast.families --markdown

prints the README's families block from the same survey.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from typing import Optional

# Re-exported: the survey's vocabulary, and where these names lived before the split.
from .discovery import SUPPORTED_TRANSFORMERS, Family, find_pooler_classes, transformers_supported
from .pooler_swap import refusal
from .proof import form_of_class
from .tiny_models import TINY_SIZES, build_tiny_pooler, tiny_config

__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "TINY_SIZES",
    "Family",
    "build_tiny_pooler",
    "find_pooler_classes",
    "main",
    "markdown",
    "survey",
    "survey_one",
    "tiny_config",
    "transformers_supported",
]

# Why a class the survey leaves out is left out, in words. Membership is never decided here: these
# notes only explain what the bytecode comparison found.
NOTES = {
    "beit.BeitPooler": "mean of the patch tokens plus layernorm, not a first-token dense layer",
    "data2vec.Data2VecVisionPooler": "mean of the patch tokens plus layernorm, not first-token",
    "hiera.HieraPooler": "average pooling plus layernorm over all tokens",
    "gemma4.Gemma4VisionPooler": "average pooling by positions over all tokens",
    "llava_next_video.LlavaNextVideoPooler": "2-D spatial pooling of video features",
    "poolformer.PoolFormerFinalPooler": "dense over every token: no first-token row, no activation",
    "vjepa2.VJEPA2AttentivePooler": "attention pooling with learned queries",
    "sew_d.ContextPooler": (
        "DeBERTa's ContextPooler copied into SEW-D, which never builds it (SEWDConfig has no "
        "pooler_hidden_size); its dropout is StableDropout, not the nn.Dropout we prove"
    ),
}

# What each template computes, for the README.
FORM_DESCRIPTIONS = {
    "bert": "`activation(dense(h[:, 0]))`, dense any `nn.Linear` (non-square too)",
    "context": "`ACT2FN[pooler_hidden_act](dense(dropout(h[:, 0])))`; eager while dropout is live",
    "mobilebert": "`tanh(dense(h[:, 0]))`; with `classifier_activation=False` it returns "
    "`h[:, 0]` and is left as is",
}
ACTIVATIONS_NOTE = (
    "Activations fused: tanh, exact GELU (`gelu`, `gelu_python`, `nn.GELU()`), tanh-approximate "
    "GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`, `gelu_accurate`, `gelu_fast`, "
    "`nn.GELU('tanh')`), relu, identity (`linear`, `nn.Identity`). A pooler whose activation is "
    "anything else (e.g. `silu`, `quick_gelu`) is left eager."
)

# Poolers that are not a *Pooler module, so no instance swap can reach them.
INLINE_POOLERS = {
    "AlbertModel": (
        "albert",
        (
            "its pooler is two attributes (pooler: nn.Linear, pooler_activation: nn.Tanh) applied "
            "inline in AlbertModel.forward; there is no pooler module to swap, and replacing the "
            "attributes would need AlbertModel.forward itself proven equivalent, which we do not template"
        ),
    ),
}


def survey_one(candidate: Family) -> Family:
    """A copy of ``candidate`` with what was found: its class, the matched form, or the reason."""
    fam = dataclasses.replace(candidate)
    try:
        module = importlib.import_module(fam.module)
    # any import error: an optional dependency of that model is missing; recorded, not raised
    except Exception as exc:  # noqa: BLE001
        fam.reason = f"module does not import here: {type(exc).__name__}: {exc}"[:200]
        return fam
    fam.cls = getattr(module, fam.name)
    form = form_of_class(fam.cls)
    if form is None:
        fam.reason = NOTES.get(fam.id, "forward is not a first-token dense + activation form")
        return fam
    fam.form = form.name
    try:
        pooler = build_tiny_pooler(fam.cls, module)
    except RuntimeError as exc:
        fam.reason = NOTES.get(fam.id, f"could not build from its config: {exc}"[:200])
    else:
        fam.reason = refusal(pooler)
    return fam


def survey() -> list[Family]:
    """Every candidate pooler class (plus the inline ones), each covered or with its reason."""
    results = [survey_one(fam) for fam in find_pooler_classes()]
    for name, (family, why) in INLINE_POOLERS.items():
        module = f"transformers.models.{family}.modeling_{family}"
        results.append(Family(family, module, name, reason=why))
    return results


def markdown(families: Optional[list[Family]] = None) -> str:
    """The README block: covered families (by form) and the left-out ones with reasons."""
    import transformers

    families = survey() if families is None else families
    covered = [f for f in families if f.covered]
    left_out = [f for f in families if not f.covered]
    lines = [
        "<!-- families:begin -->",
        (
            f"Generated by `python -m bertpool_fast.families --markdown` from transformers "
            f"{transformers.__version__}: {len(covered)} pooler classes covered, "
            f"{len(left_out)} left out."
        ),
        "",
        "| family | pooler class | form |",
        "|---|---|---|",
    ]
    lines += [f"| {f.family} | `{f.name}` | {f.form} |" for f in covered]
    lines += ["", "Forms:", ""]
    lines += [f"- {name}: {text}" for name, text in FORM_DESCRIPTIONS.items()]
    lines += ["", ACTIVATIONS_NOTE]
    lines += ["", "Left out:", "", "| family | class | why |", "|---|---|---|"]
    lines += [f"| {f.family} | `{f.name}` | {f.reason} |" for f in left_out]
    lines.append("<!-- families:end -->")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertpool_fast.families")
    parser.add_argument("--markdown", action="store_true", help="print the README families block")
    args = parser.parse_args(argv)
    families = survey()
    if args.markdown:
        print(markdown(families))
        return 0
    for f in families:
        print(f"{f.id:50s} {'covered (' + f.form + ')' if f.covered else 'left out: ' + f.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
