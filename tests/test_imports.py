"""No import cycles inside grok, the layers in order, and every module imports on its own.

The graph: an edge A -> B for every `import`/`from ... import` of a grok module B at the top
level of module A (including B's parent packages, whose `__init__` runs first, except A's own
ancestors, which are already importing). It must be acyclic. An import inside a function runs
later, so it cannot break the import itself, but one that goes back up the graph (its target
imports the importer) hides a cycle: none is allowed (LAZY_ALLOWED is empty).

The layers (README, "Layout"): ops <- model <- engine <- serving <- the entry points (loading,
grok.LLM, benchmarks, cli), with checkpoint, parallel and kernels beside the model; the leaves
(axes, runtime_config, tokenizer, then config) under everything. A module imports, at import time
or inside a function, only its own layer and those below (LAYERS; the same rank imports only
within one package).
"""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (importer, function) whose lazy imports may point back up the graph: none
LAZY_ALLOWED: set = set()
# Module-name prefix -> rank; the longest matching prefix decides. Lower ranks never import
# higher ones; equal ranks import each other only within one prefix (one package).
LAYERS = {
    "grok": 0, "grok.axes": 0, "grok.runtime_config": 0, "grok.tokenizer": 0,
    "grok.config": 1,
    "grok.ops": 2,
    "grok.parallel": 3, "grok.checkpoint": 3, "grok.kernels": 3,
    "grok.model": 4,
    "grok.engine": 5,
    "grok.serving": 6,
    "grok.demo": 7,
    "grok.loading": 8,
    "grok.llm": 9,
    "grok.bench": 10, "grok.benchmarks": 10,
    "grok.cli": 11,
    "grok.__main__": 12,
}


def grok_modules() -> dict:
    """module name -> source path, for every .py file under grok/."""
    modules = {}
    for root, _, files in os.walk(os.path.join(REPO, "grok")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def _targets(node, importer: str, modules: dict) -> list:
    """The grok modules an Import/ImportFrom node imports (with their parent packages)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:   # relative: resolve against the importer's package
            package = importer.split(".")
            package = package[:len(package) - node.level + (importer in _packages(modules))]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if ".".join(parts[:i]) in modules:
                found.add(".".join(parts[:i]))
    # A module's own ancestor packages are already importing when it runs (a package's
    # __init__ importing its submodules, which import siblings, is no cycle).
    ancestors = {importer.rsplit(".", i)[0] for i in range(importer.count(".") + 1)}
    return sorted(found - ancestors)


def _packages(modules: dict) -> set:
    return {m for m, path in modules.items() if path.endswith("__init__.py")}


def _imports(node, scope: str = ""):
    """(import node, enclosing function's qualified name or "") under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, scope
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.ClassDef) and not scope:
                inner = "class:" + child.name   # a class body runs at import time
            yield from _imports(child, inner)
        else:
            yield from _imports(child, scope)


def import_graph(modules: dict) -> tuple[dict, list]:
    """({module: set of modules it imports at import time}, [(importer, imported, function)]
    of imports inside functions)."""
    graph, lazy = {m: set() for m in modules}, []
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node, scope in _imports(tree):
            for target in _targets(node, module, modules):
                if scope in ("",) or (scope.startswith("class:") and "." not in scope):
                    graph[module].add(target)
                else:
                    lazy.append((module, target, scope.removeprefix("class:")))
    return graph, lazy


def find_cycle(graph: dict):
    """A list of modules forming a cycle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def reaches(graph: dict, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return False


def test_the_checker_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_grok():
    modules = grok_modules()
    assert "grok.serving.scheduler" in modules and "grok.parallel.multihost" in modules
    graph, lazy = import_graph(modules)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    hidden = [(a, b, function) for a, b, function in lazy
              if (a, function) not in LAZY_ALLOWED and reaches(graph, b, a)]
    assert hidden == [], f"imports inside functions that hide a cycle: {hidden}"


def layer_of(module: str) -> tuple[int, str]:
    """(rank, the LAYERS prefix that decides it)."""
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix], prefix


def layer_violations(graph: dict, lazy: list) -> list:
    """(importer, imported) edges, import-time or lazy, that go up the layers."""
    edges = [(a, b) for a, targets in graph.items() for b in targets]
    edges += [(a, b) for a, b, _ in lazy]
    bad = []
    for a, b in edges:
        (rank_a, prefix_a), (rank_b, prefix_b) = layer_of(a), layer_of(b)
        if b == "grok" or a == "grok":
            continue   # the package root: lazy re-exports only (grok/__init__.py)
        if rank_b > rank_a or (rank_b == rank_a and prefix_a != prefix_b):
            bad.append((a, b))
    return sorted(set(bad))


def test_the_layer_checker_finds_an_upward_import():
    graph = {"grok.engine.x": {"grok.serving.y"}, "grok.serving.y": {"grok.engine.z"},
             "grok.ops.a": {"grok.parallel.b"}, "grok.parallel.b": set(), "grok.engine.z": set()}
    assert layer_violations(graph, []) == [("grok.engine.x", "grok.serving.y"),
                                           ("grok.ops.a", "grok.parallel.b")]
    assert layer_violations({}, [("grok.model.m", "grok.engine.e", "f")]) == [
        ("grok.model.m", "grok.engine.e")]


def test_layers_import_downwards_only():
    modules = grok_modules()
    graph, lazy = import_graph(modules)
    assert all(layer_of(m) for m in modules)   # every module has a layer
    assert layer_violations(graph, lazy) == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first (grok's modules dropped before each), in one interpreter."""
    names = sorted(m for m in grok_modules() if m != "grok.__main__")
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'grok' or m.startswith('grok.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        print(f'FAILED {name}: {type(e).__name__}: {e}')\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAILED" not in done.stdout, done.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
