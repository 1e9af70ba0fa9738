"""The package's layering, checked on every import statement (module level or inside a function;
`if TYPE_CHECKING:` imports are for annotations only and are not counted):

    errors, atomic, progress, host                            the ground: no subtune imports above it
    formats, models, delta, weights, synthetic, inspection    files, architectures, a task as modules
    passes, runtimes                                          ONNX passes; loaders and runners
    training  <  pruning, quantization  <  compiler           training first; the compiler orchestrates
    bench, serving, cluster                                   built on the compiler and the trainer
    api                                                       the Python API
    commands, cli                                             the command line

A module may import from its own layer or any layer below, never from one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import subtune

LAYERS = [
    {"errors", "atomic", "progress", "host"},
    {"formats", "models", "delta", "weights", "synthetic", "inspection"},
    {"passes", "runtimes"},
    {"training"},
    {"pruning", "quantization"},
    {"compiler"},
    {"bench", "serving", "cluster"},
    {"api"},
    {"commands", "cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = Path(subtune.__file__).parent


def _part(module: str) -> str | None:
    """subtune.compiler.lower -> 'compiler'; subtune -> None (the package's face)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "subtune" and len(parts) > 1 else None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "subtune":  # from subtune import compiler
                found += [(node.lineno, f"subtune.{a.name}") for a in node.names]
    return found


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        here = rel.parts[1].removesuffix(".py") if len(rel.parts) > 1 else None
        if here in (None, "__init__", "__main__"):
            continue
        assert here in RANK, f"{rel}: package {here!r} has no layer; add it to LAYERS (and to the docstring)"
        for line, module in imports(path):
            there = _part(module)
            if there is None or there == here or there == "__init__":
                continue
            assert there in RANK, f"{rel}:{line} imports {module}, a package with no layer"
            if RANK[there] > RANK[here]:
                bad.append(f"{rel}:{line}: {here} (layer {RANK[here]}) imports {module} (layer {RANK[there]})")
    return bad


def test_every_import_points_down_or_sideways():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself: a formats-level file that imports the compiler inside a function is
    reported; an annotation-only import under TYPE_CHECKING is not."""
    pkg = tmp_path / "subtune"
    (pkg / "compiler").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "formats.py").write_text("def f():\n    from subtune.compiler.lower import MultiTaskModel\n")
    (pkg / "delta.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from subtune.compiler.lower import MultiTaskModel\n")
    assert violations(pkg) == ["subtune/formats.py:2: formats (layer 1) imports subtune.compiler.lower (layer 5)"]
