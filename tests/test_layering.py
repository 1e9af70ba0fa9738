"""The package's layering, checked on every import statement (module level, inside a function, or
under `if TYPE_CHECKING:` — an annotation is a dependency too):

    errors, atomic, progress, machine, version                the ground: no subtune imports above it
    models                                                    architectures; a base model in memory
    delta                                                     a task delta in memory and its modules
    formats, graph_metadata, weights, synthetic, inspection   files
    passes, runtimes                                          ONNX passes; loaders and runners
    training  <  pruning, quantization  <  compiler           training first; the compiler orchestrates
    benchmarking, serving, sweeps                             built on the compiler and the trainer
    api                                                       the Python API
    commands, cli                                             the command line
    bench/ (the scripts beside the package)                   on top of everything

Rules:
1. A module imports from its own layer or any layer below, never from one above.
2. Imports between packages form no circle (two packages of one layer may not import each other).
3. Imports between the modules of one package form no circle.
4. The package face (`subtune/__init__.py`) imports only the ground at module level (the API
   lazily), and nothing inside the package imports the face (`import subtune`): what every
   module needs (`__version__`) lives in the ground.
5. The bench/ scripts import only what exists (a renamed module fails here, not in a
   benchmark run weeks later), and import each other without circles.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import subtune

LAYERS = [
    {"errors", "atomic", "progress", "machine", "version"},
    {"models"},
    {"delta"},
    {"formats", "graph_metadata", "weights", "synthetic", "inspection"},
    {"passes", "runtimes"},
    {"training"},
    {"pruning", "quantization"},
    {"compiler"},
    {"benchmarking", "serving", "sweeps"},
    {"api"},
    {"commands", "cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = Path(subtune.__file__).parent
BENCH = ROOT.parent / "bench"


def _part(module: str) -> str | None:
    """subtune.compiler.lower -> 'compiler'; subtune -> None (the package's face)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "subtune" and len(parts) > 1 else None


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for every absolute import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _targets(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The package modules an import statement reaches: `from subtune.delta import task` reaches
    subtune.delta.task; `from subtune.delta import TaskDelta` reaches subtune.delta."""
    out = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    if len(out) < len(names) or not names:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module:
            out.append(module)
    return out


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = _modules(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for _, module, names in imports(path):
            if module.split(".")[0] == root.name:
                graph[name].update(t for t in _targets(module, names, known) if t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        here = rel.parts[1].removesuffix(".py") if len(rel.parts) > 1 else None
        if here in (None, "__init__", "__main__"):
            continue
        assert here in RANK, f"{rel}: package {here!r} has no layer; add it to LAYERS (and to the docstring)"
        for line, module, names in sorted(imports(path)):
            if module.split(".")[0] != root.name:
                continue
            if module == root.name and names and all((root / n).is_dir() or (root / f"{n}.py").is_file()
                                                      for n in names):
                module = f"{module}.{names[0]}"  # from subtune import graph_metadata: a module, not the face
            there = _part(module)
            if there is None:
                bad.append(f"{rel}:{line}: imports the package face `{module}`; import from the module that "
                           "defines the name")
                continue
            if there == here or there == "__init__":
                continue
            assert there in RANK, f"{rel}:{line} imports {module}, a package with no layer"
            if RANK[there] > RANK[here]:
                bad.append(f"{rel}:{line}: {here} (layer {RANK[here]}) imports {module} (layer {RANK[there]})")
    return bad


def package_circles(root: Path = ROOT) -> list[list[str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in module_graph(root).items():
        for b in targets:
            pa, pb = _part(a), _part(b)
            if pa and pb and pa != pb:
                packages[pa].add(pb)
    return circles(packages)


def module_circles(root: Path = ROOT) -> list[list[str]]:
    graph = module_graph(root)
    same_package = {a: {b for b in targets if _part(b) == _part(a)} for a, targets in graph.items()}
    return circles(same_package)


def test_every_import_points_down_or_sideways():
    assert violations() == []


def test_no_circle_between_packages():
    assert package_circles() == []


def test_no_circle_between_the_modules_of_a_package():
    assert module_circles() == []


def test_the_package_face_imports_only_the_ground():
    top = [(line, module) for line, module, _ in imports(ROOT / "__init__.py", top_level_only=True)
           if module.startswith("subtune.")]
    assert top and all(RANK[_part(m)] == 0 for _, m in top), top


def test_bench_scripts_import_what_exists_without_circles():
    known = _modules(ROOT)
    scripts = {p.stem: p for p in sorted(BENCH.glob("*.py"))}
    assert scripts, f"no scripts found in {BENCH}"
    missing, graph = [], defaultdict(set)
    for stem, path in scripts.items():
        for line, module, names in imports(path):
            if module.split(".")[0] in scripts:
                graph[stem].add(module.split(".")[0])
            if not module.startswith("subtune"):
                continue
            if module not in known:
                missing.append(f"bench/{path.name}:{line}: no module {module}")
                continue
            defined = _defined_names(known[module])
            for n in names:
                if n not in defined and f"{module}.{n}" not in known:
                    missing.append(f"bench/{path.name}:{line}: {module} has no {n}")
    assert missing == []
    assert circles(graph) == []


def _defined_names(path: Path) -> set[str]:
    """Names a module defines or imports, and the names its module-level `__getattr__` serves
    (lazy exports, listed in a dict or set of public names or in `__all__`)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            lazy = isinstance(node.value, (ast.Dict, ast.Set)) or any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            if lazy:  # lazy-export tables ({"compile": ..., }) and __all__ served by __getattr__
                keys = node.value.keys if isinstance(node.value, ast.Dict) else getattr(node.value, "elts", [])
                names.update(k.value for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "subtune"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_the_checks_see_what_they_are_for(tmp_path):
    """The checks themselves: an upward import inside a function or under TYPE_CHECKING, an import
    of the face, two packages of one layer that import each other, and two modules of a package
    that import each other are each reported."""
    pkg = _write_package(tmp_path, {
        "formats.py": "def f():\n    from subtune.compiler.lower import MultiTaskModel\n",
        "synthetic.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from subtune.compiler.lower import MultiTaskModel\nimport subtune\n",
        "weights.py": "from subtune.inspection import describe\n",
        "inspection.py": "from subtune.weights import load\n",
        "compiler/__init__.py": "",
        "compiler/lower.py": "from subtune.compiler.verify import check\n",
        "compiler/verify.py": "def f():\n    from subtune.compiler import lower\n",
    })
    assert violations(pkg) == [
        "subtune/formats.py:2: formats (layer 3) imports subtune.compiler.lower (layer 7)",
        "subtune/synthetic.py:3: synthetic (layer 3) imports subtune.compiler.lower (layer 7)",
        "subtune/synthetic.py:4: imports the package face `subtune`; import from the module that defines the name",
    ]
    assert package_circles(pkg) == [["inspection", "weights"]]
    assert module_circles(pkg) == [["subtune.compiler.lower", "subtune.compiler.verify"]]
