"""The product's import graph: no cycle anywhere, the library free of Ray and MLflow, no
``sys.path`` edits or pickling by value (Ray workers import the installed packages by name).

``lint-imports`` (import-linter, run by ``.ci/run``) checks the layers; this test checks the
whole module graph, function-level imports included, for strongly connected components.
"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stadv", "defenses", "stadv_sweeps", "stadv_cli")


def _packages() -> tuple[str, ...]:
    return tuple(p for p in PACKAGES if (REPO / p / "__init__.py").is_file())


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycle_in_the_product() -> None:
    graph = grimp.build_graph(*_packages())
    assert len(graph.modules) > 40
    assert _cycles(graph) == []


def test_library_imports_neither_ray_nor_mlflow_nor_the_layers_above() -> None:
    graph = grimp.build_graph(*_packages(), "ray", "mlflow")
    for library in ("stadv", "defenses"):
        for upper in ("ray", "mlflow", "stadv_sweeps", "stadv_cli"):
            if upper not in graph.modules:
                continue
            chain = graph.find_shortest_chain(importer=library, imported=upper, as_packages=True)
            assert chain is None, f"{library} reaches {upper}: {' -> '.join(chain or ())}"
    chain = graph.find_shortest_chain(importer="stadv", imported="defenses", as_packages=True)
    assert chain is None, f"stadv imports defenses: {' -> '.join(chain or ())}"


def test_no_sys_path_edits_or_pickling_by_value_outside_tests() -> None:
    pattern = re.compile(r"sys\.path|register_pickle_by_value")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in (*_packages(), "sweeps", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
