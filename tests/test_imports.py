"""The shape of the house: no cycle among audit's modules (counting every import:
inside functions, under ``TYPE_CHECKING``, and the packages' ``__init__`` files),
entry points that load no heavy library, and no module over 800 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's ``__init__``) for every module of
    ``package`` under ``root``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        names[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever the import statement is
    (``ast.walk`` sees function bodies and ``if TYPE_CHECKING:`` blocks).  Importing
    ``a.b.c`` also runs ``a`` and ``a.b``: those count too, except the importer's own
    enclosing packages, which always run before it."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                imported.add(source)
                imported.update(f"{source}.{alias.name}" for alias in node.names)
        parts = name.split(".")
        enclosing = {".".join(parts[:i]) for i in range(1, len(parts))}
        targets = set()
        for target in imported:
            if target not in modules:
                continue  # another library, or a name imported from a module
            pieces = target.split(".")
            targets.update(".".join(pieces[:i]) for i in range(1, len(pieces) + 1))
        graph[name] = {t for t in targets if t in modules and t != name and t not in enclosing}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_audit():
    assert [sorted(cycle) for cycle in cycles(import_graph(REPO, "audit"))] == []


MAX_MODULE_LINES = 800
"""A module that would grow past this is split by concern first."""


def test_no_module_is_over_800_lines():
    sizes = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
             for path, _ in module_names(REPO, "audit").values()}
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert len(sizes) > 50  # the walk saw the package


def test_the_walk_sees_hidden_imports(tmp_path):
    """A cycle closed by a function-level import, by a ``TYPE_CHECKING`` import or
    through a package's ``__init__`` is a cycle; a submodule that imports its own
    package's ``__init__`` is not."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg.b import g\n",
        "pkg/b.py": "import pkg.a\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n",
        "pkg/d.py": "from . import c\n",
        "pkg/sub/__init__.py": "from pkg.sub.e import x\n",
        "pkg/sub/e.py": "from pkg.f import y\nimport pkg.sub\n",
        "pkg/f.py": "from pkg.sub.e import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.f"] == {"pkg.sub", "pkg.sub.e"}
    assert sorted(sorted(cycle) for cycle in cycles(graph)) == [
        ["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"], ["pkg.f", "pkg.sub", "pkg.sub.e"]]


LIGHT_IMPORTS = {
    "audit.plugin": ("numpy", "yaml", "torch", "transformers", "rich"),
    "audit, audit.backends, audit.backends.torch_backend, audit.backends.gguf_meta, "
    "audit.backends.locate": ("torch", "transformers", "gguf", "tokenizers", "safetensors",
                              "onnxruntime"),
    "audit.cli, audit.calibrate": ("torch", "transformers", "gguf"),
    "audit.corpus": ("torch", "transformers", "pytest", "rich"),
    "audit.stats.layer_stats": ("scipy", "torch", "sklearn", "pytest"),
    "audit.backends.onnx_export": ("torch", "transformers", "onnx", "onnxscript",
                                   "onnxruntime", "numpy"),
    "audit.synthetic.damage": ("torch", "transformers", "numpy"),
    "audit.synthetic.training": ("torch", "transformers"),
}
"""Modules imported together in a fresh interpreter -> libraries they must not load."""


@pytest.mark.parametrize("modules", LIGHT_IMPORTS)
def test_imports_stay_light(modules):
    heavy = LIGHT_IMPORTS[modules]
    code = (f"import sys, {modules}\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, ""), done.stderr
