"""The package arrows point one way: parsed from the source with `ast`, so no module needs importing.

store/ never imports embedders/, retrieval/ or LangChain; embedders/ never imports store/;
corpus/ imports neither; ingest/ never imports tasks/; the client backend never loads the
native edge module; and no two packages import each other (no circles between packages).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "mmrag"

FORBIDDEN = {
    "store": ("mmrag.embedders", "mmrag.retrieval", "mmrag.ingest", "mmrag.tasks", "langchain_core", "langchain"),
    "embedders": ("mmrag.store", "mmrag.retrieval", "mmrag.ingest", "mmrag.tasks"),
    "corpus": ("mmrag.store", "mmrag.embedders", "mmrag.retrieval", "mmrag.ingest", "mmrag.tasks"),
    "ingest": ("mmrag.tasks", "mmrag.retrieval", "mmrag.jobs", "mmrag.cli"),
    "retrieval": ("mmrag.ingest", "mmrag.tasks", "mmrag.jobs", "mmrag.cli"),
}


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement in `path`, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mmrag" and (ROOT / parts[1]).is_dir() else None


def _names(prefixes: tuple[str, ...], imported: set[str]) -> list[str]:
    return sorted(m for m in imported if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_does_not_import_against_the_arrows(package: str) -> None:
    bad = {
        str(f.relative_to(ROOT.parent)): _names(FORBIDDEN[package], imports_of(f))
        for f in sorted((ROOT / package).rglob("*.py"))
    }
    assert {f: names for f, names in bad.items() if names} == {}


def test_the_client_backend_never_loads_the_edge_module() -> None:
    """A server never loads qdrant-edge. The one exception: qdrant-client's in-process mode
    (`:memory:`) has no inference service for BM25, so `_sparse_in` / `_sparse_query` borrow the
    engine's own Bm25 from qdrant-edge there, imported inside those two functions only."""
    tree = ast.parse((ROOT / "store" / "client.py").read_text(encoding="utf-8"))
    allowed = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in ("_sparse_in", "_sparse_query")]
    spans = [(f.lineno, f.end_lineno or f.lineno) for f in allowed]
    imported = imports_of(ROOT / "store" / "base.py")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not any(lo <= node.lineno <= hi for lo, hi in spans):
            imported |= {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module or ""}
    assert not _names(("mmrag.store.edge", "qdrant_edge"), imported)
    assert len(allowed) == 2


def test_no_two_packages_import_each_other() -> None:
    edges: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        here = _package("mmrag." + ".".join(f.relative_to(ROOT).with_suffix("").parts))
        if here is None:
            continue
        for module in imports_of(f):
            there = _package(module)
            if there and there != here:
                edges.setdefault(here, set()).add(there)
    circles = sorted((a, b) for a, targets in edges.items() for b in targets if a < b and a in edges.get(b, set()))
    assert circles == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The parser catches the import forms that matter, including one inside a function."""
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from mmrag.tasks.tagging import make_ingest_tagger\nimport langchain_core.documents\n")
    assert _names(FORBIDDEN["ingest"], imports_of(sample)) == ["mmrag.tasks.tagging", "mmrag.tasks.tagging.make_ingest_tagger"]
    assert _names(FORBIDDEN["store"], imports_of(sample)) == ["langchain_core.documents", "mmrag.tasks.tagging",
                                                              "mmrag.tasks.tagging.make_ingest_tagger"]


def _module_graph() -> dict[str, set[str]]:
    """module -> the mmrag modules it imports (a name imported from a package counts as that module if it is one)."""
    modules = {
        "mmrag." + ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
        for f in ROOT.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def test_no_module_imports_itself_through_a_circle() -> None:
    """Package __init__ files re-export (they import their modules); other modules never circle back."""
    graph = _module_graph()
    packages = {n for n in graph if (ROOT.parent / n.replace(".", "/") / "__init__.py").is_file()}
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in packages:
                continue  # importing a package's public names
            if nxt == path[0]:
                circles.append(path + [nxt])
            elif nxt not in path and len(path) < 8:
                walk(nxt, path + [nxt])

    for start in sorted(set(graph) - packages):
        walk(start, [start])
    assert circles == []
