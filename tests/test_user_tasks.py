"""A user's own task: registered in their module (`--task-module`) or by an installed package (entry point
`aim_icl.tasks`), run by `aim-icl eval --task NAME` and by `run_eval(aim, TASKS.get(NAME))` with no load step."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import pytest

from aim_icl.cli import main
from aim_icl.eval import TASKS, run_eval
from aim_icl.eval import tasks as task_registry

# a module as a user writes it (the README's "Your own task" example): a loader over image files it generates
MODULE = '''
from pathlib import Path

from PIL import Image

from aim_icl.eval import TASKS, Item, Task

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def load_squares(paths, split):
    """(DataPaths, split name) -> the split's Items; here: one square image per colour, written on first use."""
    root = Path(paths.data_dir or "DATA_ROOT") / split
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        image = root / f"{name}.png"
        if not image.exists():
            Image.new("RGB", (32, 32), rgb).save(image)
        items.append(Item(f"{split}-{i}", image, {"question": "what colour?"}, (name,)))
    return items


TASKS.register(
    "TASK_NAME",
    Task("TASK_NAME", "Question: {question} Answer:", ("exact_match",), load=load_squares, closed_set=True,
         max_new_tokens=2),
)
'''


@pytest.fixture
def registry():
    """TASKS as it was before the test: the test's registrations and entry-point discovery undone after it."""
    items, discover = dict(TASKS._items), TASKS._discover
    TASKS._discover = task_registry.load_entry_points
    yield TASKS
    TASKS._items, TASKS._discover = items, discover


def write_module(directory, module: str, task: str):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module}.py"
    path.write_text(MODULE.replace("TASK_NAME", task).replace("DATA_ROOT", str(directory / "data")))
    return path


def eval_args(task: str, out) -> list[str]:
    return ["eval", "--task", task, "--shots", "0", "1", "--modes", "zero", "text", "--output", str(out),
            "--workers", "0"]  # fmt: skip


def rows_of(out) -> set:
    return {(r["mode"], r["shots"], r["metric"]) for r in json.loads((out / "results.json").read_text())}


@pytest.mark.parametrize("spelling", ["name", "path"])
def test_a_task_module_registers_a_task_eval_runs(
    spelling, registry, tmp_path, monkeypatch, saved_llava, capsys
):
    module = f"user_tasks_{spelling}"
    path = write_module(tmp_path / "src", module, f"squares_{spelling}")
    monkeypatch.chdir(path.parent)  # a module name is found from the current directory, as `python -m` does
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(path.parent))])
    monkeypatch.delitem(sys.modules, module, raising=False)
    given = module if spelling == "name" else str(path)
    out = tmp_path / "out"
    args = eval_args(f"squares_{spelling}", out)
    assert main([*args, "--model", str(saved_llava.model), "--task-module", given]) == 0
    assert rows_of(out) >= {("zero", 0, "exact_match"), ("text", 1, "exact_match")}
    assert "| squares_" in capsys.readouterr().out


def test_an_unknown_task_module_is_one_line(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--task", "x", "--task-module", "no_such_tasks_module"]) == 2
    assert capsys.readouterr().err == (
        "aim-icl eval: error: --task-module no_such_tasks_module: no module named 'no_such_tasks_module' here "
        "(give a module importable from the current directory, or a path to a .py file)\n"
    )


@pytest.mark.parametrize("value", ["module", "task"])
def test_an_installed_packages_entry_point_is_found_when_the_name_is_unknown(
    value, registry, tmp_path, monkeypatch, saved_llava
):
    """Group `aim_icl.tasks`: a module that registers its tasks, or a `Task` object registered under the entry
    point's name. Nothing is imported before a name is missing."""
    module = f"installed_tasks_{value}"
    write_module(tmp_path / "site", module, "dots_module")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    target = module if value == "module" else f"{module}:TASKS._items"  # a module, or an object (not a Task)
    if value == "task":
        (tmp_path / "site" / f"{module}_object.py").write_text(
            f"from {module} import TASKS\nDOTS = TASKS._items.pop('dots_module')\n"
        )
        target = f"{module}_object:DOTS"
    entry = importlib.metadata.EntryPoint(name="dots_ep", value=target, group="aim_icl.tasks")
    broken = importlib.metadata.EntryPoint(
        name="broken", value="no_such_package.tasks", group="aim_icl.tasks"
    )
    seen = []

    def entry_points(group=None, **_):
        seen.append(group)
        return [broken, entry] if group == "aim_icl.tasks" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert TASKS.get("coco") and seen == []  # a built-in name: no discovery
    name = "dots_module" if value == "module" else "dots_ep"
    out = tmp_path / "out"
    assert main([*eval_args(name, out), "--model", str(saved_llava.model)]) == 0
    assert seen == ["aim_icl.tasks"] and name in TASKS
    assert rows_of(out) >= {("zero", 0, "exact_match"), ("text", 1, "exact_match")}


def test_run_eval_loads_a_registered_task_itself(registry, tmp_path, monkeypatch, llava):
    path = write_module(tmp_path, "api_tasks", "squares_api")
    task_registry.import_task_module(str(path))
    rows = run_eval(llava, TASKS.get("squares_api"), shots=[0, 1], modes=["zero", "text"], trials=1, workers=0,
                    progress=False)  # fmt: skip
    assert {(r["mode"], r["shots"], r["metric"]) for r in rows} >= {("zero", 0, "exact_match")}
    assert {r["queries"] for r in rows} == {3}
