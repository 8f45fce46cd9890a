"""The layout holds: no import cycle, each layer imports only the layers below it, and the handlers import
nothing beyond torch, the standard library, TorchServe's `ts` and `training.nn`.

Every import counts (inside functions and under `TYPE_CHECKING` too: a type-only import is still a dependency).
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # layer -> the project layers (or single modules of one) it may import (itself included)
    "training.infra": {"training.infra"},
    "training.nn": {"training.nn"},  # shipped alone in every archive: torch only
    "training.data": {"training.infra", "training.nn", "training.data"},
    "training.fit": {"training.infra", "training.nn", "training.data", "training.fit"},
    "training.tracking": {"training.infra", "training.nn", "training.data", "training.fit", "training.tracking"},
    "training.search": {
        "training.infra",
        "training.nn",
        "training.data",
        "training.fit",
        "training.tracking",
        "training.search",
    },
    "training.serving": {"training.infra", "training.nn", "training.data", "training.tracking", "training.serving"},
    # the tracking server's operations (PostgreSQL, certificates, mlflow server, UIs): of tracking, the stores only
    "training.operations": {"training.infra", "training.tracking.mlflow_store", "training.operations"},
    "handlers": {"training.nn", "handlers"},
}
HANDLER_PACKAGES = {"torch", "ts"} | set(sys.stdlib_module_names)


def modules() -> dict[str, Path]:
    found = {}
    for root in ("training", "handlers"):
        for path in (ROOT / root).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules, outside top-level packages) that `name` imports anywhere in its file."""
    inside, outside = set(), set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ("training", "handlers"):
                while target not in known:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    inside.add(target)
            else:
                outside.add(target.split(".")[0])
    return inside, outside


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules()
    edges, outside = {}, {}
    for name, path in known.items():
        edges[name], outside[name] = imports(name, path, known)
    return edges, outside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str | None:
    return next((name for name in LAYERS if module == name or module.startswith(name + ".")), None)


def wrong_imports(edges: dict[str, set[str]]) -> list[str]:
    """`module imports target` for each import against the layer table."""
    return [
        f"{module} imports {target}"
        for module, targets in edges.items()
        if (own := layer(module)) is not None
        for target in targets
        if layer(target) not in LAYERS[own] and target not in LAYERS[own]
    ]


def test_no_import_cycle():
    assert cycles(graph()[0]) == []


def test_imports_inside_functions_and_type_only_imports_count_and_cycles_are_found(tmp_path):
    probe = tmp_path / "store.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from training.search.study import Study\n"
        "def f():\n    from training.serving import serve\n"
    )
    known = dict.fromkeys(["training.tracking.store", "training.search.study", "training.serving.serve"], probe)
    inside, outside = imports("training.tracking.store", probe, known)
    assert inside == {"training.search.study", "training.serving.serve"} and outside == {"typing"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("training.search.study") == "training.search" and "training.search" not in LAYERS["training.tracking"]


def test_each_layer_imports_only_the_layers_below_it():
    assert wrong_imports(graph()[0]) == []


def test_mlflow_records_never_import_the_tracking_servers_operations():
    edges = {
        "training.tracking.registry": {"training.operations.server", "training.infra.places"},
        "training.operations.ui": {"training.tracking.mlflow_store", "training.tracking.registry"},
        "training.search.report": {"training.operations.ui"},
    }
    assert wrong_imports(edges) == [
        "training.tracking.registry imports training.operations.server",
        "training.operations.ui imports training.tracking.registry",  # of tracking, only the stores
        "training.search.report imports training.operations.ui",
    ]


def test_handlers_import_only_torch_the_standard_library_ts_and_training_nn():
    edges, outside = graph()
    wrong = {module: sorted(outside[module] - HANDLER_PACKAGES) for module in edges if module.startswith("handlers")}
    assert {module: found for module, found in wrong.items() if found} == {}
