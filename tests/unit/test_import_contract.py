"""The import contract: module imports form no cycle, and the pure modules (the math and data structures:
tree, verify, sampling, cache, datastore, goodput, options, paths) reach nothing of the engine, the CLI,
the benchmark, the server or training, at module level or inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import quickdraft

PACKAGE = Path(quickdraft.__file__).parent
PURE = ("tree", "verify", "sampling", "cache", "datastore", "goodput", "options", "paths")
UPPER = ("quickdraft.engine", "quickdraft.batching", "quickdraft.cli", "quickdraft.bench", "quickdraft.server",
         "quickdraft.training")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in it, but under ``if TYPE_CHECKING:``; the drafters
    package imports each of its modules by discovery)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        stack = [ast.parse(path.read_text(encoding="utf-8"))]
        while stack:
            node = stack.pop()
            if _type_checking_only(node):
                continue
            stack.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    graph[name].add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] = {m for m in graph[name] if m in mods and m != name}
    # quickdraft.drafters imports every module of its package at run time (discover())
    graph["quickdraft.drafters"] |= {m for m in mods if m.startswith("quickdraft.drafters.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_pure_modules_reach_nothing_above_them():
    graph = import_graph()
    for name in PURE:
        above = sorted(m for m in reachable(graph, f"quickdraft.{name}")
                       if any(m == u or m.startswith(u + ".") for u in UPPER))
        assert above == [], f"quickdraft.{name} imports {above}"


def test_the_contract_catches_a_cycle_added_back():
    """Negative control: the datastore importing the engine again (as it once did) is reported."""
    graph = import_graph()
    graph["quickdraft.datastore"].add("quickdraft.engine")
    assert any("quickdraft.datastore" in c and "quickdraft.engine" in c for c in cycles(graph))
    assert "quickdraft.engine" in reachable(graph, "quickdraft.datastore")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


MAX_FUNCTION_LINES = 60


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str, int]]:
    """(file, function, lines) of every function longer than ``limit`` lines of code (docstring, blank and
    comment lines aside), outside the CLI (whose commands are long lists of options by nature)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py":
            continue
        source = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = set()
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                doc = set(range(first.lineno, first.end_lineno + 1))
            code = [i for i in range(node.lineno, node.end_lineno + 1)
                    if i not in doc and source[i - 1].strip() and not source[i - 1].strip().startswith("#")]
            if len(code) > limit:
                out.append((str(path.relative_to(PACKAGE)), node.name, len(code)))
    return out


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == []
    assert long_functions(limit=20), "the measure finds long functions (negative control)"
