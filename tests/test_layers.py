"""The import contract (docs/ARCHITECTURE.md "Layers"): each part of the package imports only the layers below it,
and no modules import each other in a circle. Every import counts: at the top of a module, inside a function (a
lazy import is still a dependency) and under `TYPE_CHECKING`.

The root package `aim_icl` is the facade: it may name anything (lazily), and `from aim_icl import X` inside the
package counts as importing the module that defines X (`_EXPORTS`); `__version__` belongs to the bottom layer.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "aim_icl"
# bottom to top; a part imports the layers below its own, and within its layer only what SIDEWAYS allows
LAYERS = (
    {"errors", "__version__"},
    {"registry"},
    {"core"},
    {"bank"},
    {"eval", "train", "world", "models", "hub", "testing"},
    {"integrations"},  # adapters to other tools (lmms-eval), over the harness and the world
    {"serve", "commands"},
    {"cli"},
)
SIDEWAYS = {
    "world": {"eval"},  # the world's tasks are harness Tasks, its report reads the harness's rows
    "hub": {"eval"},  # model cards show `aim-icl eval` results tables
    "models": {"world"},  # the default model is the shipped world model
    "commands": {"serve"},  # `aim-icl serve` starts the server (serve imports nothing of commands)
}
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module (or `aim_icl.__version__`)
    where: str  # path:line, for the message

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def part(module: str) -> str:
    """The layer part a module belongs to: `aim_icl.core.aim` -> core, `aim_icl.cli` -> cli."""
    names = module.split(".")
    return names[1] if len(names) > 1 else ROOT


def modules(src: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        names = list(path.relative_to(src).with_suffix("").parts)
        if names[-1] == "__init__":
            names.pop()
        found[".".join(names)] = path
    return found


def exports(src: Path) -> dict[str, str]:
    """The facade's table: public name -> the module defining it (`_EXPORTS` in `aim_icl/__init__.py`)."""
    for node in ast.parse((src / ROOT / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imports(src: Path) -> list[Import]:
    """Every import of a module of the package by another module of it."""
    known, facade = modules(src), exports(src)

    def owner(name: str) -> str:  # the longest known module that `name` lies in
        while name not in known and "." in name:
            name = name.rpartition(".")[0]
        return name

    found = []
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        relative = path.relative_to(src)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names if alias.name.startswith(ROOT + ".")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.rstrip(".")
                if base != ROOT and not base.startswith(ROOT + "."):
                    continue
                targets = []
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    if base == ROOT:  # through the facade: the defining module, or the version
                        name = facade.get(alias.name, name)
                    targets.append(name if name in known or name == f"{ROOT}.__version__" else owner(base))
            else:
                continue
            found += [
                Import(module, t, f"{relative}:{node.lineno}") for t in dict.fromkeys(targets) if t != module
            ]
    return found


def upward(found: list[Import]) -> list[str]:
    """Imports that break the layer order, each with what its part may import."""
    broken = []
    for imp in found:
        source, target = part(imp.module), part(imp.target)
        if source in (ROOT, target):
            continue
        if source not in RANK or target not in RANK:
            broken.append(f"{imp}: {source if source not in RANK else target} has no layer in LAYERS")
        elif RANK[target] > RANK[source] or (
            RANK[target] == RANK[source] and target not in SIDEWAYS.get(source, ())
        ):
            below = sorted(p for p in RANK if RANK[p] < RANK[source]) + sorted(SIDEWAYS.get(source, ()))
            broken.append(f"{imp}: {source} may import only {', '.join(below)}")
    return broken


def cycles(found: list[Import]) -> list[str]:
    """Each circle of modules importing each other (the facade aside), as `a -> b -> a` with the imports."""
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in found:
        if ROOT not in (imp.module, imp.target):
            graph[imp.module].setdefault(imp.target, imp)
    circles, done = [], set()
    for start in sorted(graph):
        path = _circle(graph, start, [start], {start}, done)
        done.add(start)
        if path:
            steps = [graph[a][b] for a, b in zip(path, path[1:])]
            circles.append(" -> ".join(path) + "; " + "; ".join(str(s) for s in steps))
    return circles


def _circle(graph, start: str, path: list[str], seen: set[str], done: set[str]) -> list[str] | None:
    """A path from `start` back to it (depth first), avoiding modules whose circles were already reported."""
    for nxt in sorted(graph.get(path[-1], ())):
        if nxt == start:
            return [*path, start]
        if nxt not in seen and nxt not in done:
            seen.add(nxt)
            if found := _circle(graph, start, [*path, nxt], seen, done):
                return found
    return None


def test_no_module_imports_a_layer_above_its_own():
    found = imports(SRC)
    assert len(found) > 100  # the walk sees the package's imports
    assert not upward(found), "upward imports:\n" + "\n".join(upward(found))


def test_no_modules_import_each_other_in_a_circle():
    circles = cycles(imports(SRC))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in modules(SRC)} - {ROOT}
    assert parts <= set(RANK), f"give {sorted(parts - set(RANK))} a layer in LAYERS"


@pytest.fixture
def house(tmp_path) -> Path:
    """A small package breaking the contract: core imports bank inside a function, two core modules import each
    other, and a module imports the facade's name for a bank class."""
    files = {
        "__init__.py": '_EXPORTS = {"Bank": "aim_icl.bank.store"}\n__version__ = "0"\n',
        "errors.py": "",
        "core/__init__.py": "",
        "core/aim.py": "from aim_icl.core import batching\n\ndef push():\n    from aim_icl.bank.store import Bank\n",
        "core/batching.py": "from aim_icl import __version__\nfrom .aim import push\n",
        "core/prompt.py": "from aim_icl import Bank\n",
        "bank/__init__.py": "",
        "bank/store.py": "from aim_icl.core.aim import push\nfrom aim_icl.errors import AIMError\n",
    }
    for name, text in files.items():
        path = tmp_path / ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_contract_names_each_offending_import(house):
    found = imports(house)
    assert upward(found) == [
        "aim_icl/core/aim.py:4: aim_icl.core.aim imports aim_icl.bank.store: core may import only "
        "__version__, errors, registry",
        "aim_icl/core/prompt.py:1: aim_icl.core.prompt imports aim_icl.bank.store: core may import only "
        "__version__, errors, registry",
    ]
    circles = cycles(found)
    assert circles[0].startswith("aim_icl.bank.store -> aim_icl.core.aim -> aim_icl.bank.store; ")
    assert any(c.startswith("aim_icl.core.aim -> aim_icl.core.batching -> aim_icl.core.aim") for c in circles)
