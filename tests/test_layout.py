"""The package layout rules of DESIGN.md."""

import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO


def test_no_platform_package():
    # A package named `platform` would shadow the standard library module that torch, Ray and MLflow import.
    assert not (REPO / "platform" / "__init__.py").exists()


def test_import_sgdlab_and_status_do_not_import_torch_or_ray():
    code = ("import sys, sgdlab, sgdlab.cli.main, sgdlab.tracking.query, sgdlab.sweep.expand; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_runs_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()


# ---------------------------------------------------------------- the import graph of platform/sgdlab, read by ast

PACKAGE = REPO / "platform" / "sgdlab"

# The written layering rule (DESIGN.md): subpackage -> the other sgdlab subpackages it may import. "sgdlab" is
# the package's own __init__.py, "paths" the module sgdlab/paths.py. Imports within a subpackage are always allowed.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "sgdlab": set(),  # `import sgdlab` stays light
    "paths": set(),
    "numerics": set(),
    "params": set(),
    "config": {"paths"},  # compose finds conf/
    # spec finds sweeps/, expand composes, identity drops the non-identity keys; run names show values as params do
    "sweep": {"config", "paths", "params"},
    "training": set(),  # torch only
    "probes": set(),  # torch only
    "tracking": {"paths", "numerics", "params"},  # the default store; runs record the numerics version, params
    "jobs": {"training", "probes", "tracking", "sweep"},  # sweep: the identity of an end probe (probe_id)
    # jobs, plus what the data flow feeds the plan and the scheduler: trials (sweep) and records (tracking);
    # config: a plan rejects bad input with ConfigError; runtime ships the package itself to Ray workers
    "orchestration": {"sgdlab", "config", "params", "jobs", "tracking", "sweep"},
    "analysis": {"config", "tracking"},  # records, and the non-identity keys of trial configs
    "cli": {"sgdlab", "paths", "numerics", "params", "config", "sweep", "training", "probes", "tracking", "jobs",
            "orchestration", "analysis"},
    # the Hydra app: another front end, which composes and plans as the command line does and reuses its printing
    "app": {"paths", "config", "sweep", "orchestration", "tracking", "cli"},
}


@dataclass(frozen=True)
class Import:
    """One import statement in an sgdlab module: `import target` (no names) or `from target import names`."""

    module: str  # the importing module, e.g. sgdlab.orchestration.tasks
    line: int
    target: str  # absolute: relative imports resolved
    names: tuple[str, ...]

    def where(self) -> str:
        return f"{module_files()[self.module].relative_to(REPO)}:{self.line}"


@functools.cache
def module_files() -> dict[str, Path]:
    """Module name -> file, for every module under platform/sgdlab (a package is its __init__.py)."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def subpackage(module: str) -> str:
    """sgdlab.jobs.train -> jobs, sgdlab.paths -> paths, sgdlab -> sgdlab."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def absolute_target(module: str, node: ast.ImportFrom) -> str:
    """The module a `from ... import` reads from, `from .x import y` resolved against the importing module."""
    if not node.level:
        return node.module
    package = module if module_files()[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0]
    return f"{base}.{node.module}" if node.module else base


@functools.cache
def all_imports() -> tuple[Import, ...]:
    """Every import statement of every sgdlab module: module level, in functions, in any block."""
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(module, node.lineno, alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = tuple(alias.name for alias in node.names)
                found.append(Import(module, node.lineno, absolute_target(module, node), names))
    return tuple(sorted(found, key=lambda imp: (imp.module, imp.line)))


def top_level(name: str) -> str:
    return name.split(".")[0]


def imported_modules(imp: Import) -> set[str]:
    """The sgdlab modules an import loads (none for a third-party one): `import a.b` loads a.b,
    `from a import b` loads a.b where that is a module, else a."""
    if top_level(imp.target) != "sgdlab":
        return set()
    if not imp.names:
        return {imp.target}
    return {f"{imp.target}.{name}" if f"{imp.target}.{name}" in module_files() else imp.target
            for name in imp.names}


def outside_owner(library: str, owner: str) -> list[str]:
    """Imports of `library` (or any submodule) by modules outside sgdlab/<owner>/."""
    return [f"{imp.where()}: {imp.module} imports {imp.target}" for imp in all_imports()
            if top_level(imp.target) == library and subpackage(imp.module) != owner]


def import_graph() -> dict[str, dict[str, Import]]:
    """module -> {imported sgdlab module: the first import statement that loads it}."""
    graph: dict[str, dict[str, Import]] = {module: {} for module in module_files()}
    for imp in all_imports():
        for target in imported_modules(imp) & graph.keys():
            graph[imp.module].setdefault(target, imp)
    return graph


def reachable(graph: dict[str, dict[str, Import]], start: str) -> set[str]:
    """Modules reachable from start through one import or more (start itself only through a cycle)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


def shortest_cycle(graph: dict[str, dict[str, Import]], start: str) -> list[tuple[Import, str]]:
    """(import, imported module) along a shortest path of imports from start back to start (breadth first)."""
    paths: dict[str, list[tuple[Import, str]]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target, imp in graph[module].items():
                if target == start:
                    return paths[module] + [(imp, target)]
                if target not in paths:
                    paths[target] = paths[module] + [(imp, target)]
                    following.append(target)
        frontier = following
    return []


def import_cycles() -> list[list[tuple[Import, str]]]:
    """One shortest cycle through each strongly connected component of the module graph (a set of modules that
    all reach each other by imports; a module importing itself counts)."""
    graph = import_graph()
    reach = {module: reachable(graph, module) for module in graph}
    cycles, covered = [], set()
    for module in sorted(graph):
        if module in reach[module] and module not in covered:
            covered |= {other for other in reach[module] if module in reach[other]}
            cycles.append(shortest_cycle(graph, module))
    return cycles


def test_only_tracking_imports_mlflow():
    """mlflow and its submodules are imported only by modules under sgdlab/tracking/."""
    offenders = outside_owner("mlflow", "tracking")
    assert not offenders, "mlflow imported outside sgdlab/tracking/:\n" + "\n".join(offenders)


def test_only_orchestration_imports_ray():
    """ray and its submodules are imported only by modules under sgdlab/orchestration/."""
    offenders = outside_owner("ray", "orchestration")
    assert not offenders, "ray imported outside sgdlab/orchestration/:\n" + "\n".join(offenders)


def test_every_subpackage_has_a_layering_rule():
    """ALLOWED_IMPORTS has one row per subpackage of sgdlab, no more, no fewer."""
    assert set(ALLOWED_IMPORTS) == {subpackage(module) for module in module_files()}


def test_layering():
    """A subpackage imports only the subpackages its ALLOWED_IMPORTS row names (DESIGN.md: training and probes
    import torch only; jobs import training, probes, tracking; orchestration imports jobs; cli everything)."""
    offenders = [
        f"{imp.where()}: {imp.module} imports {target} ({subpackage(target)!r} is not in "
        f"ALLOWED_IMPORTS[{subpackage(imp.module)!r}])"
        for imp in all_imports() for target in sorted(imported_modules(imp))
        if subpackage(target) != subpackage(imp.module)
        and subpackage(target) not in ALLOWED_IMPORTS.get(subpackage(imp.module), set())]
    assert not offenders, "imports against the layering:\n" + "\n".join(offenders)


def test_no_import_cycles():
    """No sgdlab module reaches itself through imports, counting imports inside functions."""
    cycles = ["  " + " -> ".join(f"{imp.module} ({imp.where()})" for imp, _ in cycle) + f" -> {cycle[-1][1]}"
              for cycle in import_cycles()]
    assert not cycles, "import cycles (each import at the line named):\n" + "\n".join(cycles)


def test_no_private_names_imported():
    """No module imports another sgdlab module's private name (`from sgdlab.a.b import _x`; dunders are public)."""
    offenders = [f"{imp.where()}: {imp.module} imports {name} from {imp.target}"
                 for imp in all_imports() if top_level(imp.target) == "sgdlab"
                 for name in imp.names if name.startswith("_") and not name.endswith("__")]
    assert not offenders, "private names imported:\n" + "\n".join(offenders)
