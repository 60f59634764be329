"""Evaluate a model on a benchmark in several modes and shot counts, with cost next to quality.

Writes predictions (appended as they are made; a rerun resumes), results.json, results.md and plots to --output.
Shard across processes with `accelerate launch --multi_gpu --num_processes N -m aim_icl.cli eval ...` (also on
CPU-only machines, where it forms a CPU group; or `torchrun --nproc_per_node N -m aim_icl.cli eval ...`).
Zero-shot is reported once, as mode `zero` at 0 shots. Tasks: the built-in benchmarks, the embedded world's tasks,
tasks a `--task-module` registers and tasks of installed packages (entry-point group `aim_icl.tasks`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aim_icl.commands._model import (
    add_device_arguments,
    add_model_arguments,
    add_output_argument,
    add_workers_argument,
    load_aim,
    model_placement,
    non_negative_int,
    positive_int,
)
from aim_icl.core.modes import MODES
from aim_icl.errors import AIMError

EXTRA = "eval"  # the optional extra this verb runs on (the CLI checks it first)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--task", required=True, help=f"one of: {', '.join(_known_tasks())}, or a task of yours"
    )
    parser.add_argument(
        "--task-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="a Python module (name or .py file) that registers tasks with aim_icl.eval.TASKS.register "
        "(repeatable)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="the dataset's folder (official files or a `datasets` dir)"
    )
    parser.add_argument(
        "--image-root", type=Path, help="folder the image paths start at (default: --data-dir)"
    )
    parser.add_argument(
        "--file", action="append", default=[], metavar="NAME=PATH", help="override one data file (repeatable)"
    )
    parser.add_argument("--eval-split", help="evaluation split (default: the task's, e.g. val, test, dev)")
    parser.add_argument(
        "--shots", type=non_negative_int, nargs="+", default=[0, 4, 8, 16], help="demos per query"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="prompt modes to compare"
    )
    parser.add_argument(
        "--trials",
        type=positive_int,
        help="demo draws with different seeds (default: 3 with random selection, else 1)",
    )
    parser.add_argument(
        "--selection",
        choices=("random", "similarity", "support"),
        help="how demos are chosen (default: the task's: support where items bring their own demos, else random)",
    )
    parser.add_argument(
        "--bank", type=Path, help="Demonstration Bank file (created if missing): pool demos read once, ever"
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N queries (quick runs)")
    parser.add_argument(
        "--pool-size", type=positive_int, default=2048, help="train items demos are drawn from"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo pool and of trial 0's draws")
    add_output_argument(
        parser, "results directory (default: eval-results/<task>)", old="--output-dir", type=Path
    )
    parser.add_argument("--max-new-tokens", type=positive_int, help="longest answer (default: the task's)")
    parser.add_argument(
        "--batch-size", type=positive_int, help="queries per forward pass (default: 64, halved on OOM)"
    )
    add_workers_argument(parser)
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from aim_icl.core.placement import process_state
    from aim_icl.eval.report import markdown_table
    from aim_icl.eval.runner import run_eval

    placement = model_placement(args)
    task, selection, trials = prepare_task(args)  # data and arguments checked before the model (minutes)
    state = process_state(placement["device"])
    torch.manual_seed(args.seed)  # a fresh projector's initialisation, identical in every process
    aim = load_aim(args.model, args.projector, **placement)
    rows = run_eval(
        aim,
        task,
        shots=args.shots,
        modes=args.modes,
        trials=trials,
        selection=selection,
        limit=args.limit,
        output_dir=args.output or Path("eval-results") / task.name,
        pool_size=args.pool_size,
        seed=args.seed,
        bank=args.bank,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    if state.is_main_process:
        print(markdown_table(rows))
    return 0


def prepare_task(args: argparse.Namespace):
    """The task with its items read, its selection and trials, and every check that needs no model: in CLI words."""
    from aim_icl.eval.items import DataPaths
    from aim_icl.eval.runner import check_arguments, plan_pool

    task = find_task(args.task, args.task_module)
    paths = DataPaths(args.data_dir, args.image_root, _file_overrides(args.file))
    task = task.loaded(paths, args.eval_split)
    selection = args.selection or task.selection
    trials = args.trials or (3 if selection == "random" else 1)
    check_arguments(task, args.shots, args.modes, trials, selection, args.bank)
    queries = task.test if args.limit is None else task.test[: args.limit]
    plan_pool(task, queries, args.shots, args.modes, selection, args.pool_size, args.seed)
    return task, selection, trials


def find_task(name: str, modules: list[str]):
    """The task called `name`: after importing `--task-module`s, among the built-in, world and installed tasks."""
    from aim_icl.commands._world_tasks import register_world_tasks
    from aim_icl.eval.tasks import get_task, import_task_module

    for module in modules:
        import_task_module(module)
    register_world_tasks()
    return get_task(name)


def _known_tasks() -> list[str]:
    from aim_icl.commands._world_tasks import world_task_names
    from aim_icl.eval.tasks import task_names

    return [*task_names(), *world_task_names()]


def _file_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise AIMError(f"--file takes NAME=PATH, got {pair!r}")
        overrides[name] = path
    return overrides
