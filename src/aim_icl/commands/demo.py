"""The main job: the embedded world's in-context tasks through the evaluation harness, in the four modes.

Loads the shipped world model and its AIM projector (no downloads), draws fresh evaluation items from `--seed`
(held-out names, new objects, new demo orders), runs `run_eval` per task and prints score, prompt tokens, peak
memory and latency per mode and shot count, then one table per task and metric (modes as rows, shots as columns);
writes the rows (results.json, results.md), those tables (tables.md), the harness's plots and one overview plot to
`--output`. A mode whose prompt does not fit the model's context at some shot count (`icl` past 16 shots: 16 image
tokens per demo, 512 positions) is reported as not fitting there. The 16-way task runs to 64 shots.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from aim_icl.commands._model import (
    add_device_arguments,
    add_output_argument,
    add_workers_argument,
    non_negative_int,
    positive_int,
)
from aim_icl.core.modes import MODES

DEFAULT_TASKS = ("fast_binding", "fast_binding_4way", "fast_binding_16way", "caption_style")
EXTRA = "eval"  # the optional extra this verb runs on (the CLI checks it first)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aim_icl.world.tasks import WORLD_TASKS

    parser.add_argument(
        "--seed", type=int, default=0, help="draws the evaluation items (names, objects, demos)"
    )
    parser.add_argument("--items", type=positive_int, default=100, help="queries per task")
    parser.add_argument("--tasks", nargs="+", choices=list(WORLD_TASKS), default=list(DEFAULT_TASKS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--shots",
        type=non_negative_int,
        nargs="+",
        help="shot counts for every task (default: 0-32 in doublings; 0 and 4-64 for fast_binding_16way)",
    )
    add_output_argument(
        parser, "directory for the report and plots", old="--out", type=Path, default=Path("demo-results")
    )
    parser.add_argument("--json", type=Path, help="also write the rows (the harness's results format) here")
    parser.add_argument("--model", type=Path, help="world model directory (default: the shipped one)")
    parser.add_argument(
        "--projector", type=Path, help="projector directory or Hub repo org/name (default: the shipped one)"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=positive_int, help="queries per forward pass (default: 64)")
    add_workers_argument(parser)
    add_device_arguments(parser, dtype=False)  # the world model's own float32: the README's numbers


def run(args: argparse.Namespace) -> int:
    import torch

    from aim_icl.core.placement import resolve_device
    from aim_icl.eval.report import write_report
    from aim_icl.eval.runner import run_eval
    from aim_icl.world.checkpoint import load_shipped
    from aim_icl.world.report import examples, overview_plot, shots_tables, summary_table
    from aim_icl.world.tasks import DEMO_SHOTS, WORLD_TASKS

    torch.set_num_threads(args.threads)
    logging.getLogger("aim_icl").setLevel(logging.ERROR)
    device = resolve_device(args.device)
    aim = load_shipped(args.model, args.projector)
    aim.model.to(device)
    aim.projector.to(device)
    rows, chance, tasks = [], {}, []
    for name in args.tasks:
        shots = args.shots or DEMO_SHOTS[name]
        task = WORLD_TASKS[name](args.seed, args.items, max(shots))
        tasks.append(task)
        chance[task.name] = sum(1 / len(task.candidates_for(item)) for item in task.test) / len(task.test)
        rows += run_eval(
            aim,
            task,
            shots,
            args.modes,
            trials=1,
            selection="support",
            seed=args.seed,
            batch_size=args.batch_size,
            workers=args.workers,
        )
    print(summary_table(rows))
    tables = "\n\n".join(
        shots_tables([r for r in rows if r["task"] == task.name]) + "\n\n" + examples(rows, task)
        for task in tasks
    )
    print(f"\n{tables}")
    written = write_report(rows, args.output)
    (args.output / "tables.md").write_text(tables + "\n")
    written += [args.output / "tables.md", overview_plot(rows, args.output / "demo.png", chance)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written[0], args.json)
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0
