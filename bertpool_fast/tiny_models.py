"""Tiny poolers: a pooler class built from its family's default config, shrunk.

The family survey builds one per candidate class to ask the proof about a real instance, and
``tests/test_families.py`` checks each covered class numerically on one.
"""

from __future__ import annotations

import os

from torch import nn

# Small enough that each pooler builds in microseconds; odd sizes and a non-square output (where a
# config has pooler_output_size) so that no kernel tile divides them evenly.
TINY_SIZES = {"hidden_size": 40, "pooler_hidden_size": 40, "pooler_output_size": 24}


def _config_classes(module) -> list[type]:
    from transformers import PretrainedConfig  # optional dependency, imported when asked

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
