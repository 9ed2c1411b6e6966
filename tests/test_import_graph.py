"""The package's imports form a DAG: later modules import earlier ones only.

Every import is counted, top-level or inside a function, and so are
``importlib.import_module("kerasssl....")`` calls with a literal name: a
function-level import hides a cycle from Python, not from a reader.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kerasssl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict):
    """The kerasssl module that importing ``name`` names (None outside the package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, modules: dict) -> set:
    """kerasssl modules that the file at ``path`` imports, anywhere in it.

    Counted: ``import``/``from`` statements at any depth, and string literals
    that spell a kerasssl module's full name (what ``importlib`` is given).
    """
    this = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this if is_package else this.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule when there is one.
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                     for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            # A module's full name as a string feeds importlib.import_module
            # (directly, or from a tuple of names looped over).
            names = [node.value]
        for name in names:
            if name.startswith("kerasssl"):
                target = _resolve(name, modules)
                if target and target != this:
                    found.add(target)
    return found


def import_graph() -> dict:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _is_parent(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_import_graph_is_acyclic():
    graph = import_graph()
    # A package's __init__ re-exporting its own submodules is not a cycle:
    # Python runs the parent first by definition. Every other edge counts.
    graph = {v: {w for w in ws if not _is_parent(v, w) and not _is_parent(w, v)} for v, ws in graph.items()}
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# The package's tiers, earliest first: a module may import its own tier and
# earlier ones, never a later one. A module is placed by its longest prefix.
TIERS = [
    ["kerasssl.errors", "kerasssl.importhooks", "kerasssl.registry"],
    ["kerasssl.config", "kerasssl.rundir"],
    ["kerasssl.data", "kerasssl.simulate", "kerasssl.metrics", "kerasssl.completeness", "kerasssl.plots",
     "kerasssl.fingerprints"],
    ["kerasssl.layers", "kerasssl.encoders", "kerasssl.heads", "kerasssl.losses", "kerasssl.schedules",
     "kerasssl.distribute", "kerasssl.optimizers", "kerasssl.nandebug", "kerasssl.batchnorm"],
    ["kerasssl.methods", "kerasssl.checkpoints", "kerasssl.callbacks", "kerasssl.classifier", "kerasssl.models"],
    ["kerasssl.poolplan", "kerasssl.pretrain", "kerasssl.finetune", "kerasssl.evaluate", "kerasssl.tflite", "kerasssl.export",
     "kerasssl.predict", "kerasssl.survey", "kerasssl.inference", "kerasssl.scan", "kerasssl.similarity",
     "kerasssl.pipelines"],
    # The TFX Trainer's run_fn is `kerasssl fit` inside TFX: it sits with fit.
    ["kerasssl.fit", "kerasssl.pipelines.tfx_trainer"],
    ["kerasssl.cli", "kerasssl.__main__"],
]


def tier_of(module):
    best = None
    for index, prefixes in enumerate(TIERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def test_every_module_has_a_tier_and_imports_go_one_way():
    graph = import_graph()
    untiered = sorted(m for m in graph if m != "kerasssl" and tier_of(m) is None)
    assert not untiered, f"modules without a tier in TIERS: {untiered}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "kerasssl"
                    for b in targets if b != "kerasssl" and tier_of(b) > tier_of(a))
    assert not upward, "imports from an earlier tier into a later one: " + "; ".join(upward)


def test_import_graph_sees_function_level_and_importlib_imports(tmp_path, monkeypatch):
    # The checker itself must catch what it promises to catch.
    pkg = tmp_path / "kerasssl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from kerasssl.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "import importlib\n\ndef g():\n    for name in ('kerasssl.a',):\n        importlib.import_module(name)\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["kerasssl.a"] == {"kerasssl.sub.b"}
    assert graph["kerasssl.sub.b"] == {"kerasssl.a"}
    assert cycles(graph) == [["kerasssl.a", "kerasssl.sub.b"]]


if __name__ == "__main__":  # `python tests/test_import_graph.py` prints cycles and upward imports
    g = import_graph()
    for c in cycles({v: {w for w in ws if not _is_parent(v, w) and not _is_parent(w, v)} for v, ws in g.items()}):
        print("cycle:", " <-> ".join(c))
    for a, targets in sorted(g.items()):
        for b in sorted(targets):
            if a != "kerasssl" and b != "kerasssl" and None not in (tier_of(a), tier_of(b)) \
                    and tier_of(b) > tier_of(a):
                print("upward:", a, "->", b)
    pytest.main([__file__, "-q"])
