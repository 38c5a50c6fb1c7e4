"""Dependencies point one way: server -> runtime -> adapters -> native_overrides -> attention_backend.

Checked statically (every import statement, also those inside functions), so a lazy import the
tests never execute cannot hide a reverse dependency; and each package imports on its own.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# directory -> (import prefix, layer); a module may import its own layer and those below
PACKAGES = {
    "attention_backend": ("anymodel.attention_backend", 0),
    "native_overrides": ("anymodel.native_overrides", 1),
    "adapters": ("anymodel.adapters", 2),
    "runtime": ("anymodel", 3),
    "server": ("anymodel.server", 4),
}
# Leaf modules of runtime/ that every layer may use (shared vocabulary: parallel state, errors, the
# model protocol that adapters and native classes implement, what a config says about its model):
# they import nothing from anymodel.
LEAVES = {"anymodel.distributed", "anymodel.errors", "anymodel.model_facts", "anymodel.model_protocol"}


def layer_of(module: str) -> int:
    if module in LEAVES:
        return -1
    for prefix, layer in sorted(PACKAGES.values(), key=lambda p: -len(p[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(module)


def anymodel_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "anymodel" else [f"anymodel.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("anymodel")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("anymodel")]
    return found


def source_files(directory: str) -> list[Path]:
    return sorted((ROOT / directory).rglob("*.py"))


@pytest.mark.parametrize("directory", sorted(PACKAGES))
def test_no_reverse_imports(directory):
    own = PACKAGES[directory][1]
    wrong = []
    for path in source_files(directory):
        for line, module in anymodel_imports(path):
            if layer_of(module) > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_nothing_of_anymodel(leaf):
    path = ROOT / "runtime" / (leaf.removeprefix("anymodel.") + ".py")
    assert anymodel_imports(path) == []


@pytest.mark.parametrize("directory", sorted(PACKAGES))
def test_each_package_imports_alone(directory):
    prefix = PACKAGES[directory][0]
    modules = [prefix + "." + ".".join(p.relative_to(ROOT / directory).with_suffix("").parts)
               for p in source_files(directory)]
    modules = [m.removesuffix(".__init__") for m in modules
               if not m.endswith("__main__") and ".demo.train" not in m]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
