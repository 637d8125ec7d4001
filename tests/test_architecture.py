"""The structure docs/architecture.md promises, checked on the source: every module has a
layer and imports only from its own layer or those above it (module-level and lazy imports
alike), no import cycle at module level, no production module imports the benchmark package
(but the command line and the package itself), no module over the size limit, and no module
reads another object's underscore attributes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "eophis_hpc"
MAX_LINES = 500

# module (dotted, relative to eophis_hpc) or package prefix -> layer; the longest match wins
LAYERS = {
    "version": 1, "errors": 1, "checks": 1, "grid": 1,
    "decomposition": 2, "reference": 2,
    "plan": 3, "protocol": 3,
    "kernels": 4,
    "transport": 5, "oasis.component": 5, "oasis.partition": 5, "oasis.namcouple": 5,
    "device": 6, "staging": 6,
    "runtime": 7, "oasis.engine": 7, "oasis": 7, "tunnel": 7, "client": 7, "config": 7,
    "halo": 7, "compat": 7, "fortran": 7, "launch": 7, "script": 7, "_ext": 4,
    "cli": 8, "cli_args": 8, "tune": 8, "bench": 8, "demo": 8, "info": 8, "__init__": 8,
    "gpucheck": 8,
    "sizing": 3, "sizing.calibrate": 8, "sizing.validate": 8, "sizing.cli": 8, "measure": 8,
}
BENCH_USERS = ("cli", "bench")
ALLOWED = {"os._exit"}  # the standard library's own underscore names


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(name: str) -> int:
    best = None
    for key, layer in LAYERS.items():
        if name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best[0]):
                best = (key, layer)
    if best is None:
        raise KeyError(f"module eophis_hpc.{name} has no layer: add it to LAYERS in "
                       f"tests/test_architecture.py and to the table in docs/architecture.md")
    return best[1]


def imports_of(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Package modules ``name`` imports (resolved to dotted names relative to eophis_hpc)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("eophis_hpc"):
                mod = node.module[len("eophis_hpc"):].lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                found.add(sub if sub in ALL else mod)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("eophis_hpc."):
                    found.add(alias.name[len("eophis_hpc."):])
    return {m for m in found if m}


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_follow_the_layers(name):
    mine = layer_of(name)
    for dep in imports_of(name, ALL[name]):
        if dep == "version" or dep == name or name.startswith(dep + ".") or dep.startswith(name + "."):
            continue
        assert layer_of(dep) <= mine, (f"eophis_hpc.{name} (layer {mine}) imports "
                                       f"eophis_hpc.{dep} (layer {layer_of(dep)})")
        if dep == "bench" or dep.startswith("bench."):
            assert name.split(".")[0] in BENCH_USERS, (f"eophis_hpc.{name} imports the benchmark "
                                                       f"package ({dep})")


def test_no_import_cycle_at_module_level():
    graph = {n: {d for d in imports_of(n, p, top_level_only=True) if d in ALL and d != n
                 and not n.startswith(d + ".")}
             for n, p in ALL.items()}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [n, d]))
            if d not in state:
                visit(d, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


@pytest.mark.parametrize("name", sorted(ALL))
def test_module_size(name):
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"eophis_hpc.{name}: {lines} lines (limit {MAX_LINES}): split it"


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_foreign_private_attributes(name):
    """``x._attr`` only on ``self``/``cls`` (or a module-level name of the same module)."""
    tree = ast.parse(ALL[name].read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            owner = node.value
            ok = isinstance(owner, ast.Name) and (owner.id in ("self", "cls")
                                                  or f"{owner.id}.{node.attr}" in ALLOWED)
            assert ok, (f"eophis_hpc.{name}:{node.lineno}: reads {ast.unparse(node)} "
                        "(another object's private attribute)")


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_private_names_imported_from_other_modules(name):
    tree = ast.parse(ALL[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                "eophis_hpc")):
            private = [a.name for a in node.names
                       if a.name.startswith("_") and not a.name.startswith("__")]
            assert not private, (f"eophis_hpc.{name}:{node.lineno}: imports private names "
                                 f"{private} from {node.module}")
