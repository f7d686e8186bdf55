"""Which transformers pooler classes the fused kernel covers, found from the installed transformers.

Every class named ``*Pooler`` in ``transformers.models.*`` is a candidate. A candidate is covered
when its ``forward`` matches one of the templates in :mod:`bertpool_fast.patching` and the pooler
built from its family's default config (shrunk) is provably swappable; anything else is listed
with the reason. ``tests/test_families.py`` checks every covered class numerically, and

    python -m bertpool_fast.families --markdown

prints the README's families block from the same survey.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
from dataclasses import dataclass
from typing import Optional

from torch import nn

# The transformers releases whose class layouts we support; the same bounds as pyproject.toml's
# dependency. 4.x (modeling files "Copied from" BERT) and 5.x (modular-generated files) define the
# poolers with the same forwards; tests/test_families.py checks the installed release.
SUPPORTED_TRANSFORMERS = ((4, 40), (6, 0))  # >= 4.40, < 6

# Small enough that each pooler builds in microseconds; odd sizes and a non-square output (where a
# config has pooler_output_size) so that no kernel tile divides them evenly.
TINY_SIZES = {"hidden_size": 40, "pooler_hidden_size": 40, "pooler_output_size": 24}

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


@dataclass
class Family:
    """One candidate pooler class and what the survey found."""

    family: str  # the transformers.models subpackage, e.g. "bert"
    module: str  # the modeling module that defines it
    name: str  # the class name
    cls: Optional[type] = None
    form: Optional[str] = None  # the matched template, None when left out
    reason: Optional[str] = None  # why it is left out; None when covered

    @property
    def id(self) -> str:
        return f"{self.family}.{self.name}"

    @property
    def covered(self) -> bool:
        return self.reason is None


def transformers_supported(version: str) -> bool:
    major_minor = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    low, high = SUPPORTED_TRANSFORMERS
    return low <= major_minor < high


def find_pooler_classes() -> list[Family]:
    """Every ``class *Pooler(`` in the installed ``transformers.models`` source, read not imported.

    Reading the source first keeps this cheap (transformers has hundreds of model packages); the
    survey imports only the modules that define a candidate.
    """
    import transformers.models

    root = transformers.models.__path__[0]
    found = []
    for family in sorted(os.listdir(root)):
        folder = os.path.join(root, family)
        if not os.path.isdir(folder):
            continue
        for filename in sorted(os.listdir(folder)):
            if not (filename.startswith("modeling_") and filename.endswith(".py")):
                continue
            with open(os.path.join(folder, filename), encoding="utf-8") as f:
                source = f.read()
            module = f"transformers.models.{family}.{filename[:-3]}"
            for name in re.findall(r"^class (\w*Pooler)\(", source, re.MULTILINE):
                found.append(Family(family, module, name))
    return found


def _config_classes(module) -> list[type]:
    from transformers import PretrainedConfig

    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, PretrainedConfig)
        and obj is not PretrainedConfig
    ]


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def tiny_config(cls: type, module) -> object:
    """The family's default config, shrunk; the config class named most like ``cls`` that builds it.

    Raises ``RuntimeError`` naming every config tried when none builds the pooler.
    """
    candidates = sorted(
        _config_classes(module), key=lambda c: -_common_prefix(c.__name__, cls.__name__)
    )
    errors = []
    for config_cls in candidates:
        try:
            config = config_cls()
            for attr, size in TINY_SIZES.items():
                if hasattr(config, attr):
                    setattr(config, attr, size)
            cls(config)
        # any error: a config that does not fit this pooler; try the next one
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{config_cls.__name__}: {type(exc).__name__}: {exc}"[:200])
            continue
        return config
    raise RuntimeError(f"no config in {module.__name__} builds {cls.__name__}: {errors}")


def build_tiny_pooler(cls: type, module) -> nn.Module:
    """A randomly initialised ``cls`` from its family's shrunk default config, in eval mode."""
    return cls(tiny_config(cls, module)).eval()


def survey_one(candidate: Family) -> Family:
    """A copy of ``candidate`` with what was found: its class, the matched form, or the reason."""
    from .patching import form_of_class, refusal

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
