"""Evaluate a model on a benchmark in several modes and shot counts, with cost next to quality.

Writes predictions (appended as they are made; a rerun resumes), results.json, results.md and plots to
--output-dir. Shard across processes with `accelerate launch --multi_gpu --num_processes N -m aim_icl.cli eval ...`
(also on CPU-only machines, where it forms a CPU group; or `torchrun --nproc_per_node N -m aim_icl.cli eval ...`).
Zero-shot is reported once, as mode `zero` at 0 shots.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aim_icl.commands._model import (
    add_model_arguments,
    add_workers_argument,
    fresh_projector,
    load_aim,
    positive_int,
    torch_device,
)
from aim_icl.core.dtypes import FLOAT_DTYPES
from aim_icl.core.modes import MODES
from aim_icl.errors import AIMError
from aim_icl.eval.tasks import task_names

logger = logging.getLogger(__name__)
EXTRA = "eval"  # the optional extra this verb runs on (the CLI checks it first)

DTYPES = ("auto", *FLOAT_DTYPES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)  # with --model and no --projector, `aim` fits the copy map on the pool
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(task_names())}")
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
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--trials", type=int, default=3, help="demo draws with different seeds")
    parser.add_argument("--selection", choices=("random", "similarity"), default="random")
    parser.add_argument(
        "--bank", type=Path, help="Demonstration Bank file (created if missing): pool demos read once, ever"
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N queries (quick runs)")
    parser.add_argument("--pool-size", type=int, default=2048, help="train items demos are drawn from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, help="default: eval-results/<task>")
    parser.add_argument("--max-new-tokens", type=positive_int, help="default: the task's")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="queries per forward pass (default: 64, halved on OOM)",
    )
    add_workers_argument(parser)
    parser.add_argument(
        "--fit-demos", type=int, default=256, help="pool demos to fit the copy map on (no projector)"
    )
    parser.add_argument(
        "--device", type=torch_device, help="torch device (default: this process's accelerate device)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="model weights dtype")


def run(args: argparse.Namespace) -> int:
    import torch

    from aim_icl.core.placement import process_state
    from aim_icl.eval.items import DataPaths
    from aim_icl.eval.report import markdown_table
    from aim_icl.eval.runner import run_eval
    from aim_icl.eval.tasks import get_task

    if args.limit is not None and args.limit < 1:
        raise AIMError(f"--limit must be at least 1, got {args.limit}")
    paths = DataPaths(args.data_dir, args.image_root, _file_overrides(args.file))
    # read the data before the model, which can take minutes
    task = get_task(args.task).loaded(paths, args.eval_split)
    state = process_state(args.device)
    torch.manual_seed(args.seed)  # a fresh projector's initialisation, identical in every process
    aim = load_aim(args.model, args.projector, device=args.device or state.device, dtype=args.dtype)
    fit = fresh_projector(args.model, args.projector) and "aim" in args.modes and any(args.shots)
    if fit and task.train:
        _fit_copy_map(aim, task, args)
    rows = run_eval(
        aim,
        task,
        shots=args.shots,
        modes=args.modes,
        trials=args.trials,
        selection=args.selection,
        limit=args.limit,
        output_dir=args.output_dir or Path("eval-results") / task.name,
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


def _fit_copy_map(aim, task, args: argparse.Namespace) -> None:
    from aim_icl.eval.selection import draw_pool

    logger.warning(
        "no --projector: fitting the copy map on %d pool demos (AIM then ≈ text-only demos)", args.fit_demos
    )
    pool = draw_pool(task.train, args.pool_size, args.seed)[: args.fit_demos]
    aim.fit_projector([task.demo(item) for item in pool])


def _file_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise AIMError(f"--file takes NAME=PATH, got {pair!r}")
        overrides[name] = path
    return overrides
