"""The house layout, checked by reading the source (ast): ultralytics only behind
``fastsam_train/ultra/``, no import cycle among ``fastsam_train``'s modules, and every name
imported from a project module exists (the last one imports the project's modules)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = [*sorted((REPO / "fastsam_train").rglob("*.py")), *sorted((REPO / "eval").rglob("*.py")),
        REPO / "train.py", *sorted((REPO / "data_tools").rglob("*.py"))]
ADAPTER = REPO / "fastsam_train" / "ultra"
# Scripts that measure or check us against ultralytics itself, so they must import it:
ULTRALYTICS_EXEMPT = {
    "data_tools/bench/bench_loader.py",  # times ultralytics' own YOLODataset loader beside ours
    "data_tools/bench/bench_train.py",  # times ultralytics' own trainer beside ours
    "data_tools/parity/parity_8_0.py",  # drives the 8.0.120 venv (imports only the worker's name)
    "data_tools/parity/parity_worker_8_0.py",  # runs inside the real ultralytics 8.0.120
}


def from_imports(path: Path) -> list[tuple[ast.ImportFrom, str]]:
    """Every ``from x import ...`` of ``path`` (inside functions too) with the absolute name of
    ``x`` (relative imports resolved)."""
    package = list(path.relative_to(REPO).with_suffix("").parts)[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append((node, base))
    return found


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Absolute module names ``path`` imports (``from x import y`` gives ``x`` and ``x.y``, as
    y may be a submodule) with their line numbers; relative imports resolved."""
    found = [(alias.name, node.lineno)
             for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
             if isinstance(node, ast.Import) for alias in node.names]
    for node, base in from_imports(path):
        found.append((base, node.lineno))
        found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_layout_sees_the_code():
    names = {p.relative_to(REPO).as_posix() for p in CODE}
    assert "fastsam_train/ultra/model.py" in names and "eval/core.py" in names
    assert ULTRALYTICS_EXEMPT <= names, ULTRALYTICS_EXEMPT - names  # no stale exemption


def test_only_the_adapter_imports_ultralytics():
    offenders = []
    for path in CODE:
        rel = path.relative_to(REPO).as_posix()
        if ADAPTER in path.parents or rel in ULTRALYTICS_EXEMPT:
            continue
        offenders += [f"{rel}:{line} imports {name}" for name, line in imported_modules(path)
                      if name == "ultralytics" or name.startswith("ultralytics.")]
    assert not offenders, "ultralytics outside fastsam_train/ultra/:\n" + "\n".join(offenders)


def import_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes run when a module is imported: everything but function bodies (imports inside
    a function are deferred to its call) and ``if TYPE_CHECKING:`` blocks (annotations only)."""
    out, todo = [], list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        out.append(node)
        todo += ast.iter_child_nodes(node)
    return out


def import_graph() -> dict[str, set[str]]:
    """fastsam_train module -> the fastsam_train modules it imports when it is imported."""
    modules = {module_name(p): p for p in sorted((REPO / "fastsam_train").rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in import_time_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            edges |= {t for t in targets if t in modules and t != name}
        # a package's own __init__ is imported on the way to any of its modules: not an edge
        graph[name] = {t for t in edges if not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_fastsam_train():
    graph = import_graph()
    assert "fastsam_train.masks" in graph["fastsam_train.infer.postprocess"]
    assert "fastsam_train.infer.postprocess" not in graph["fastsam_train.infer.output"]
    assert "fastsam_train.infer.output" not in graph["fastsam_train.infer.postprocess"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_output_imports_fresh():
    """infer.output imported first in a new interpreter (it once needed postprocess, which
    needed it back: a cycle that only worked in one import order)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", "import fastsam_train.infer.output"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_project_import_resolves():
    """Every ``from <project module> import name`` in the code, including the imports inside
    functions that only run on some paths (the after-training evaluation, SAM, ...), names
    something that exists: a moved helper must not leave a caller behind."""
    import importlib

    missing = []
    for path in CODE:
        for node, base in from_imports(path):
            if base.split(".")[0] not in ("fastsam_train", "eval"):
                continue
            module = importlib.import_module(base)
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    try:  # a submodule not yet imported as an attribute
                        importlib.import_module(f"{base}.{alias.name}")
                    except ModuleNotFoundError:
                        where = f"{path.relative_to(REPO)}:{node.lineno}"
                        missing.append(f"{where} {base}.{alias.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)
