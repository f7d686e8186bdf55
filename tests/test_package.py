"""The package surface: lazy exports resolve, and no submodule import can shadow one."""

import importlib
import pkgutil

import bertpool_fast


def test_exports_resolve_after_every_submodule_is_imported():
    # Importing bertpool_fast.X sets the package attribute X to the submodule; an export named like
    # a submodule would then turn into a module object (it did once: masked_pool).
    for info in pkgutil.iter_modules(bertpool_fast.__path__):
        if info.name != "__main__":
            importlib.import_module(f"bertpool_fast.{info.name}")
    for name in bertpool_fast.__all__:
        value = getattr(bertpool_fast, name)
        assert callable(value), f"bertpool_fast.{name} is {type(value).__name__}, not the export"


def test_import_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, bertpool_fast; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
