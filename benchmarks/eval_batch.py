"""Batched evaluation against one query at a time: the world tasks through `run_eval` at two batch sizes.

Model: the shipped world model and projector (`aim_icl.world.checkpoint.load_shipped`), on the CPU with `--threads`
threads. Every world task (`aim_icl.world.tasks.WORLD_TASKS`) is drawn once from `--seed` and evaluated in every
mode and shot count (selection `support`, one trial, as `aim-icl demo` does) at batch size 1 and at `--batch-size`,
alternating `--repeats` times in this process, so both see the same machine load; the fastest run of each counts.
Seconds are wall time of `run_eval` (prompt building, demo reading, generation, candidate scoring); the ratio is
batch 1 over batched, and the CPU ratio the same for this process's CPU time (the work done: on a machine loaded
by other processes it moves less than wall time). Predictions must be equal query by query; scores (summed log-likelihoods) may differ by float
rounding only, and the largest difference is printed.

Usage: python benchmarks/eval_batch.py [--items 32] [--shots 0 1 4 16] [--batch-size 16] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from aim_icl.core.modes import MODES
from aim_icl.eval.runner import run_eval
from aim_icl.world.checkpoint import load_shipped
from aim_icl.world.tasks import WORLD_TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=32, help="queries per task")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 4, 16])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tasks", nargs="+", choices=list(WORLD_TASKS), default=list(WORLD_TASKS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per batch size and task; the fastest counts"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("aim_icl").setLevel(logging.ERROR)
    aim = load_shipped()
    size = args.batch_size
    print(f"world model, {args.threads} threads, {args.items} queries per task, shots {args.shots}\n")
    print(
        f"| task | cells | queries | batch 1 s | batch {size} s | ratio | CPU ratio | same predictions | max score diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    runs = {1: Timed(), size: Timed()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks:
            task = WORLD_TASKS[name](args.seed, args.items, max(args.shots))
            now = {b: Timed() for b in (1, size)}
            for repeat in range(args.repeats):  # alternating, so both sizes see the same stretch of load
                for b in (1, size):
                    now[b].run(aim, task, args, b, Path(tmp) / f"{name}-{b}-{repeat}", prefix=name)
            for b in (1, size):
                runs[b].add(now[b])
            print(row(name, now[1], now[size]))
    print(row("all", runs[1], runs[size]))


class Timed:
    """Wall and CPU seconds of `run_eval` calls, and their prediction records by (task, mode, shots, trial, id)."""

    def __init__(self):
        self.wall, self.cpu, self.records = 0.0, 0.0, {}

    def run(self, aim, task, args, batch_size: int, out: Path, prefix: str) -> None:
        """Another run of the same work: the fastest run counts (load from other processes only adds time)."""
        wall, cpu = time.perf_counter(), time.process_time()
        run_eval(aim, task, args.shots, args.modes, trials=1, selection="support", seed=args.seed, output_dir=out,
                 batch_size=batch_size, progress=False)  # fmt: skip
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        first = not self.records
        self.wall = wall if first else min(self.wall, wall)
        self.cpu = cpu if first else min(self.cpu, cpu)
        for line in (out / "predictions.jsonl").read_text().splitlines():
            r = json.loads(line)
            self.records[(prefix, r["mode"], r["shots"], r["trial"], r["id"])] = r

    def add(self, other: Timed) -> None:
        self.wall, self.cpu = self.wall + other.wall, self.cpu + other.cpu
        self.records.update(other.records)


def row(name: str, one: Timed, many: Timed) -> str:
    """Wall time ratio (what a user waits) and CPU time ratio (the work done, less sensitive to other load)."""
    same = {k: r.get("prediction") for k, r in one.records.items()} == {
        k: r.get("prediction") for k, r in many.records.items()
    }
    cells = len({k[:-1] for k in one.records})
    ratios = f"{one.wall / many.wall:.1f}x | {one.cpu / many.cpu:.1f}x"
    diff = max_score_diff(one.records, many.records)
    return f"| {name} | {cells} | {len(one.records)} | {one.wall:.1f} | {many.wall:.1f} | {ratios} | {same} | {diff:.1e} |"


def max_score_diff(one: dict, many: dict) -> float:
    diffs = [
        abs(a - b)
        for key, r in one.items()
        if r.get("scores") is not None
        for a, b in zip(r["scores"], many[key]["scores"])
    ]
    return max(diffs, default=0.0)


if __name__ == "__main__":
    main()
