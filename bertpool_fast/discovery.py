"""Runtime discovery: which transformers classes are first-token pooler candidates.

Every class named ``*Pooler`` in the installed ``transformers.models.*`` source is a candidate
(read, not imported). The class-level switch (:mod:`bertpool_fast.class_patch`) proves and
switches them; the survey behind the README (:mod:`bertpool_fast.families`) reports on them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

# The transformers releases whose class layouts we support; the same bounds as pyproject.toml's
# dependency. 4.x (modeling files "Copied from" BERT) and 5.x (modular-generated files) define the
# poolers with the same forwards; tests/test_families.py checks the installed release.
SUPPORTED_TRANSFORMERS = ((4, 40), (6, 0))  # >= 4.40, < 6


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
