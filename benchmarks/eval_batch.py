"""Where evaluation time goes, and what batching and the prompt pipeline's workers buy: `run_eval` in configurations
compared in one process, with the same predictions.

Two models:

- `--model world` (default): the shipped world model and projector; every world task (`WORLD_TASKS`) drawn from
  `--seed`, every mode and shot count (selection `support`, one trial, as `aim-icl demo` does).
- `--model llava_next`: LLaVA-Next at its real image geometry (672x672 JPEG files decoded by the pipeline, 336-px
  CLIP patches, v1.6 grid pinpoints: 2,928 tokens an image) with an LM of `--width` (random weights: the answers
  are noise, the work is real); one task of `--items` queries, each with its own `--shots` demos.

Each configuration is `batch,workers` (`--configs 1,0 16,0`). Runs alternate `--repeats` times so that every
configuration sees the same stretch of machine load; the fastest run of each counts. Columns: wall seconds,
answers per second, the ratio to the first configuration, the seconds of each stage (`eval.aggregate.STAGES`,
summed over cells), and `busy`: the fraction of wall time the model's forward passes took (CUDA events on a GPU,
so it is the accelerator's busy time; on the CPU, time inside `model.forward`). Predictions must be equal query by
query; scores may differ by float rounding only (the largest difference is printed).

Usage:
  python benchmarks/eval_batch.py                                   # world: batch 1 vs 16, no workers
  python benchmarks/eval_batch.py --model llava_next --configs 16,0 16,1 --items 64
  python benchmarks/eval_batch.py --model llava_next --width 4096 --device cuda --configs 1,0 64,0 64,8
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from aim_icl.core.aim import AIM
from aim_icl.core.modes import MODES
from aim_icl.eval.aggregate import STAGES
from aim_icl.eval.runner import run_eval
from aim_icl.eval.task import Item, Task
from aim_icl.testing.tiny import build_tiny, tiny_image
from aim_icl.world.checkpoint import load_shipped
from aim_icl.world.tasks import WORLD_TASKS

SIZE = (672, 672)  # LLaVA-Next's 2x2 grid of 336-px tiles, plus the base image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("world", "llava_next"), default="world")
    parser.add_argument("--configs", nargs="+", default=["1,0", "16,0"], help="batch,workers pairs")
    parser.add_argument("--items", type=int, default=32, help="queries per task")
    parser.add_argument("--shots", type=int, nargs="+", help="default: 0 1 4 16 (world), 4 (llava_next)")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="default: all (world), aim (llava_next)")
    parser.add_argument("--tasks", nargs="+", choices=list(WORLD_TASKS), default=list(WORLD_TASKS))
    parser.add_argument("--width", type=int, default=64, help="llava_next: LM width (4096: a 7B's)")
    parser.add_argument("--layers", type=int, default=2, help="llava_next: LM layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("aim_icl").setLevel(logging.ERROR)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
    with tempfile.TemporaryDirectory() as tmp:
        aim, tasks, shots, modes = setup(args, Path(tmp))
        aim.model.to(args.device)
        aim.projector.to(args.device)
        print(
            f"{describe(args, aim)}; {args.items} queries per task, shots {shots}, modes {' '.join(modes)}\n"
        )
        runs = {c: Timed() for c in configs}
        for repeat in range(args.repeats):
            for config in configs:  # alternating: every configuration sees the same stretch of load
                for task in tasks:
                    out = Path(tmp) / f"{task.name}-{config}-{repeat}"
                    runs[config].run(aim, task, shots, modes, config, out, repeat)
    print(table(runs, configs))


def setup(args, tmp: Path) -> tuple[AIM, list[Task], list[int], list[str]]:
    if args.model == "world":
        shots = args.shots or [0, 1, 4, 16]
        tasks = [WORLD_TASKS[name](args.seed, args.items, max(shots)) for name in args.tasks]
        return load_shipped(), tasks, shots, args.modes or list(MODES)
    shots = args.shots or [4]
    return (
        real_geometry_aim(args.width, args.layers),
        [image_task(tmp, args.items, max(shots))],
        shots,
        args.modes or ["aim"],
    )


def real_geometry_aim(width: int, layers: int) -> AIM:
    """LLaVA-Next at its real image geometry, LM width `width` (heads of 128 dims past 64), random weights."""
    text = {"max_position_embeddings": 1 << 17, "num_hidden_layers": layers}
    if width != 64:
        heads = max(1, width // 128)
        text.update(hidden_size=width, intermediate_size=int(width * 2.7), num_attention_heads=heads)
        text.update(num_key_value_heads=heads)
    model, processor = build_tiny("llava_next", real_geometry=True, text_config=text)
    return AIM(model, processor)  # a fresh projector: the same work as a trained one


def image_task(tmp: Path, n_items: int, shots: int) -> Task:
    """`n_items` queries, each with `shots` demos of its own, every image a 672x672 JPEG file read when needed."""
    items = []
    for i in range(n_items):
        support = tuple(_demo_item(tmp, i * 100 + j) for j in range(shots))
        items.append(
            Item(f"q{i}", _jpeg(tmp, 10_000 + i), {"question": "what is it?"}, ("a red circle",), support)
        )
    task = Task("images", "Question: {question} Answer:", ("exact_match",), max_new_tokens=8)
    return task.with_items([], items)


def _demo_item(tmp: Path, i: int) -> Item:
    return Item(f"d{i}", _jpeg(tmp, i), {"question": "what is it?"}, (f"a shape number {i % 7}",))


def _jpeg(tmp: Path, seed: int) -> Path:
    path = tmp / f"{seed}.jpg"
    tiny_image(seed, size=SIZE).save(path, quality=90)
    return path


def describe(args, aim: AIM) -> str:
    params = sum(p.numel() for p in aim.model.parameters()) / 1e6
    where = f"{args.device}" + (f", {args.threads} threads" if args.device == "cpu" else "")
    name = "world model" if args.model == "world" else f"LLaVA-Next 672x672, LM width {args.width}"
    return f"{name} ({params:.1f}M parameters), {where}"


class Timed:
    """The fastest run's seconds (wall, stages, model busy) per configuration, and its prediction records."""

    def __init__(self):
        self.runs: dict[int, dict] = defaultdict(lambda: defaultdict(float))  # repeat -> totals
        self.records: dict[tuple, dict] = {}

    def run(self, aim, task, shots, modes, config, out: Path, repeat: int) -> None:
        batch, workers = config
        with model_time(aim.model) as busy:
            wall = time.perf_counter()
            rows = run_eval(aim, task, shots, modes, trials=1, selection="support", output_dir=out,
                            batch_size=batch, workers=workers, progress=False)  # fmt: skip
            wall = time.perf_counter() - wall
        totals = self.runs[repeat]
        totals["wall"] += wall
        totals["busy"] += busy()
        totals["queries"] += sum({(r["mode"], r["shots"]): r["queries"] for r in rows}.values())
        seen = set()
        for r in rows:  # one row per metric: a cell's stages once
            if (r["mode"], r["shots"]) not in seen and r["fits"]:
                seen.add((r["mode"], r["shots"]))
                for stage in STAGES:
                    totals[stage] += r[stage]
        for line in (out / "predictions.jsonl").read_text().splitlines():
            r = json.loads(line)
            self.records[(task.name, r["mode"], r["shots"], r["trial"], r["id"])] = r

    def best(self) -> dict:
        return min(self.runs.values(), key=lambda t: t["wall"])


@contextmanager
def model_time(model: torch.nn.Module):
    """Seconds the model's forward passes took: CUDA events on a GPU (accelerator busy time), else wall time."""
    cuda = next(model.parameters()).is_cuda
    spans, starts = [], []

    def before(*_):
        if cuda:
            starts.append(torch.cuda.Event(enable_timing=True))
            starts[-1].record()
        else:
            starts.append(time.perf_counter())

    def after(*_):
        start = starts.pop()
        if cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            spans.append((start, end))
        else:
            spans.append(time.perf_counter() - start)

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]

    def total() -> float:
        if cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in spans) / 1000
        return sum(spans)

    try:
        yield total
    finally:
        for hook in hooks:
            hook.remove()


def table(runs: dict, configs: list) -> str:
    first = runs[configs[0]]
    base = first.best()
    head = (
        "| batch | workers | queries | wall s | answers/s | speed-up | busy | "
        + " | ".join(STAGES)
        + " | same predictions | max score diff |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for config in configs:
        timed = runs[config]
        best = timed.best()
        same = {k: r.get("prediction") for k, r in timed.records.items()} == {
            k: r.get("prediction") for k, r in first.records.items()
        }
        cells = [
            *map(str, config),
            f"{int(best['queries'])}",
            f"{best['wall']:.1f}",
            f"{best['queries'] / best['wall']:.1f}",
            f"{base['wall'] / best['wall']:.1f}x",
            f"{best['busy'] / best['wall']:.0%}",
            *(f"{best[s]:.1f}" for s in STAGES),
            str(same),
            f"{max_score_diff(first.records, timed.records):.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def max_score_diff(one: dict, other: dict) -> float:
    diffs = [
        abs(a - b)
        for key, r in one.items()
        if r.get("scores") is not None and key in other
        for a, b in zip(r["scores"], other[key]["scores"])
    ]
    return max(diffs, default=0.0)


if __name__ == "__main__":
    main()
