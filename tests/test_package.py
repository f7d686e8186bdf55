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


# The layers, lowest first: a module may import only from its own layer or below (NOTES.md has the
# map). Tools may import anything; the deprecated alias modules sit just above what they alias.
LAYERS = [
    ["kernels"],
    ["reference", "validation"],
    ["ops", "head_op", "embedding_ops", "masked_pooling"],
    ["proof", "activation_modules"],
    ["module"],
    ["install", "discovery"],
    ["pooler_swap", "heads", "sentence_pooling", "class_patch"],
    ["patching"],
    ["tiny_models", "families", "demo", "inspect_kernels", "__main__"],
]
TOOLS = set(LAYERS[-1])


def _package_imports(tree, nested: bool) -> list[tuple[str, int]]:
    """(bertpool_fast submodule, line) for each relative import, at module level or nested."""
    import ast

    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and (id(node) not in top) == nested:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found += [(name, node.lineno) for name in names]
    return found


def test_imports_run_one_way():
    import ast
    import pathlib

    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    root = pathlib.Path(bertpool_fast.__file__).parent
    files = sorted(p for p in root.glob("*.py") if p.name != "__init__.py")
    assert {p.stem for p in files} == set(layer_of) - {"kernels"}, "a module missing from LAYERS"
    for path in files:
        tree = ast.parse(path.read_text())
        for name, line in _package_imports(tree, nested=False):
            assert layer_of[name] <= layer_of[path.stem], f"{path.name}:{line} imports up: {name}"
        if path.stem not in TOOLS:
            # an import inside a function is how a cycle hides; tools defer theirs for triton
            nested = _package_imports(tree, nested=True)
            assert not nested, f"{path.name}: import inside a function: {nested}"
