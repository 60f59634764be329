"""The evaluation package imports in one direction: no module reaches itself again, metrics need no model code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import aim_icl

PACKAGE = Path(aim_icl.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """aim_icl modules a file imports, at module level or inside functions (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from aim_icl.eval import loaders` imports the submodule
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_eval_module_imports_itself_in_a_circle():
    graph = import_graph()
    eval_modules = sorted(m for m in graph if m.startswith("aim_icl.eval."))
    assert "aim_icl.eval.task" in eval_modules and "aim_icl.eval.tasks" in eval_modules
    circles = [c for c in (cycle_through(graph, m) for m in eval_modules) if c]
    assert circles == []


def test_the_circle_check_sees_function_level_imports(tmp_path):
    """The check above must catch the kind of circle it guards against (task -> tasks inside a function)."""
    graph = import_graph()
    graph["aim_icl.eval.task"] = graph["aim_icl.eval.task"] | {"aim_icl.eval.tasks"}
    assert cycle_through(graph, "aim_icl.eval.task") == [
        "aim_icl.eval.task",
        "aim_icl.eval.tasks",
        "aim_icl.eval.task",
    ]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from aim_icl.eval import tasks\n")
    assert imported_modules(source, {"aim_icl.eval.tasks", "aim_icl.eval"}) == {
        "aim_icl.eval.tasks",
        "aim_icl.eval",
    }


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_metrics_and_tasks_load_without_model_code():
    for statement in (
        "import aim_icl.eval.metrics",
        "from aim_icl.eval import TASKS, get_task; get_task('vqav2')",
    ):
        loaded = loaded_after(statement)
        assert not {"torch", "transformers", "aim_icl.eval.runner", "aim_icl.core.aim"} & loaded, statement
    assert "aim_icl.eval.runner" in loaded_after("from aim_icl.eval import run_eval")
