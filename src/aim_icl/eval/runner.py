"""Evaluate a task in several modes and shot counts over seeded trials: `run_eval(aim, task, ...) -> rows`.

Work is a list of cells (mode, shots, trial). Zero-shot is one cell whatever the modes (every mode with no demos
is the same prompt, and greedy decoding makes trials identical). Under `accelerate launch`, process r evaluates
queries `i % world_size == r`; every process appends its records to its own file, and after a barrier the rows
are computed from all files, so they equal a single-process run's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aim_icl.bank.fingerprint import weights_hash
from aim_icl.core.aim import AIM, MODES
from aim_icl.core.placement import process_state
from aim_icl.errors import AIMError
from aim_icl.eval.aggregate import rows_from_records
from aim_icl.eval.demos import DemoSource, open_pool_bank
from aim_icl.eval.memory import PeakMemory, synchronize
from aim_icl.eval.scoring import METRICS, needs_scores
from aim_icl.eval.selection import SELECTORS, Selector, draw_pool, support_pool
from aim_icl.eval.store import PredictionStore
from aim_icl.eval.task import Item, Task

logger = logging.getLogger(__name__)

SCORE_BATCH = 8  # candidate answers per scoring forward pass


@dataclass(frozen=True)
class Cell:
    mode: str
    shots: int
    trial: int
    seed: int


def plan_cells(modes: Sequence[str], shots: Sequence[int], trials: int, seed: int) -> list[Cell]:
    """Zero-shot once (if `zero` is a mode or 0 a shot count), then every other mode x shots > 0 x trial."""
    cells = [Cell("zero", 0, 0, seed)] if "zero" in modes or 0 in shots else []
    for mode in (m for m in MODES if m in modes and m != "zero"):
        cells += [Cell(mode, k, t, seed + t) for k in sorted(set(shots)) if k > 0 for t in range(trials)]
    return cells


def run_eval(
    aim: AIM,
    task: Task,
    shots: Sequence[int] = (0, 4, 8, 16),
    modes: Sequence[str] = MODES,
    trials: int = 3,
    selection: str = "random",
    limit: int | None = None,
    output_dir: str | Path | None = None,
    pool_size: int = 2048,
    seed: int = 0,
    bank: str | Path | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Evaluate `task` (items loaded) and return one row per (mode, shots, metric); see `aggregate` for fields.

    With `output_dir`, predictions are appended there as they are made (a rerun skips what is done) and the
    results JSON, Markdown table and plots are written there. Queries: the first `limit` evaluation items; demos:
    `selection` from a pool of `pool_size` train items drawn with `seed`; trial t uses seed `seed + t`. With
    selection `support`, a query's k demos are the first k of its own (`Item.support`), the same in every trial.
    """
    _check_arguments(task, shots, modes, trials, selection)
    queries = task.test if limit is None else task.test[:limit]
    max_shots = max(shots) if set(modes) - {"zero"} else 0
    if selection == "support":
        pool = support_pool(queries, max_shots)
    else:
        pool = demo_pool(task, pool_size, seed, max_shots)
    state = process_state(aim.backbone.device.type)
    directory = None if output_dir is None else Path(output_dir)
    store = PredictionStore(directory, state.process_index, state.num_processes)
    if directory is not None:
        config = run_config(aim, task, selection, seed, pool_size, max_new_tokens, bank is not None)
        check_run_config(directory, config, state)
    cells = plan_cells(modes, shots, trials, seed)
    use_bank = bank is not None and pool and (selection == "similarity" or "aim" in modes)
    pool_bank = open_pool_bank(bank, aim, task, pool, state) if use_bank else None
    try:
        select = SELECTORS.get(selection)(pool=pool, bank=pool_bank)
        n_new = max_new_tokens or task.max_new_tokens
        run = _Run(aim, task, select, DemoSource(aim, task, pool, pool_bank), store, n_new)
        run.evaluate(
            cells, queries[state.process_index :: state.num_processes], progress and state.is_main_process
        )
    finally:
        if pool_bank is not None:
            pool_bank.bank.close()
    state.wait_for_everyone()
    rows = rows_from_records(task, cells, queries, store.read("predictions"), store.read("stats"), selection)
    if directory is not None and state.is_main_process:
        from aim_icl.eval.report import write_report

        write_report(rows, directory)
    state.wait_for_everyone()
    return rows


@dataclass
class _Run:
    """One process's share of the work, and what it needs to answer a query."""

    aim: AIM
    task: Task
    select: Selector
    source: DemoSource
    store: PredictionStore
    max_new_tokens: int

    def evaluate(self, cells: list[Cell], queries: list[Item], progress: bool) -> None:
        todo = {c: [q for q in queries if _key(c, q) not in self.store.done] for c in cells}
        with tqdm(
            total=sum(map(len, todo.values())), desc=f"eval {self.task.name}", disable=not progress
        ) as bar:
            for cell, items in todo.items():
                if items:
                    bar.set_postfix(mode=cell.mode, shots=cell.shots, trial=cell.trial)
                    self.run_cell(cell, items, bar)

    def run_cell(self, cell: Cell, items: list[Item], bar) -> None:
        """Answer the cell's unfinished queries, appending each record; then one stats record for the stretch."""
        start, encode_start = time.perf_counter(), self.source.encode_seconds
        with PeakMemory(self.aim.backbone.device) as peak:
            for query in items:
                picks = self.select(query, cell.shots, cell.seed) if cell.shots else []
                demos = self.source.demos(picks, cell.mode)
                record = answer_query(self.aim, self.task, query, demos, cell.mode, self.max_new_tokens)
                self.store.add({"mode": cell.mode, "shots": cell.shots, "trial": cell.trial, **record})
                bar.update()
        stats = {"mode": cell.mode, "shots": cell.shots, "trial": cell.trial, "queries": len(items)}
        stats.update(wall_s=time.perf_counter() - start, encode_s=self.source.encode_seconds - encode_start)
        self.store.add_stats({**stats, "peak_memory_mb": peak.mb, "memory": peak.kind})


def answer_query(aim: AIM, task: Task, item: Item, demos: list, mode: str, max_new_tokens: int) -> dict:
    """Generate the answer (and, for closed answer sets, score every candidate); time the model work."""
    image, text = item.load_image(), task.query_text(item)
    synchronize(aim.backbone.device)
    start = time.perf_counter()
    inputs = aim.build_inputs(image, text, demos, mode)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    if not fits_context(aim.model, prompt_tokens + max_new_tokens):
        return {"id": item.id, "fits": False, "prompt_tokens": prompt_tokens}
    generated = aim.generate_from(inputs, max_new_tokens)
    candidates = task.candidates_for(item)
    scores = score_candidates(aim, image, text, candidates, demos, mode) if needs_scores(task) else None
    synchronize(aim.backbone.device)
    latency_ms = (time.perf_counter() - start) * 1000
    return {
        "id": item.id,
        "generated": generated,
        "prediction": task.postprocess(generated),
        "scores": scores,
        "prompt_tokens": prompt_tokens,
        "latency_ms": latency_ms,
    }


def fits_context(model, length: int) -> bool:
    """Whether `length` positions fit the model's context (`max_position_embeddings` of its language model).

    A prompt past it is not run: its answer would say nothing about the mode, so the row reports it as not
    fitting, as a real deployment would refuse it."""
    config = model.config
    context = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    return context is None or length <= context


def score_candidates(aim: AIM, image, text: str, candidates, demos: list, mode: str) -> list[float]:
    """Summed log-likelihood of each candidate, scored `SCORE_BATCH` at a time (each row holds the whole prompt)."""
    chunks = [candidates[i : i + SCORE_BATCH] for i in range(0, len(candidates), SCORE_BATCH)]
    return [s for chunk in chunks for s in aim.score(image, text, chunk, demos, mode).tolist()]


@torch.no_grad()
def run_config(
    aim: AIM, task: Task, selection: str, seed: int, pool_size: int, max_new_tokens, bank: bool
) -> dict:
    """What predictions depend on; a rerun into the same directory must match it to reuse them."""
    return {
        "task": task.name,
        "query_template": task.query_template,
        "demo_template": task.demo_template,
        "eval_split": task.eval_split,
        "model": str(aim.backbone.signature.name_or_path),
        "projector_sha256": projector_fingerprint(aim),
        "selection": selection,
        "seed": seed,
        "pool_size": pool_size,
        "max_new_tokens": max_new_tokens or task.max_new_tokens,
        "bank": bank,  # bank states are stored in float16: `aim` answers may differ slightly
    }


def projector_fingerprint(aim: AIM) -> str:
    return weights_hash(aim.projector, per_tensor=None)  # every value: any trained change must show


def check_run_config(directory: Path, config: dict, state) -> None:
    path = directory / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in config if previous.get(k) != config[k])
        if changed:
            raise AIMError(
                f"{directory} holds predictions of another setup ({', '.join(changed)} differ); "
                "use a new --output-dir or delete that one"
            )
    state.wait_for_everyone()
    if state.is_main_process and not path.is_file():
        path.write_text(json.dumps(config, indent=2) + "\n")


def demo_pool(task: Task, size: int, seed: int, max_shots: int) -> list[Item]:
    pool = draw_pool(task.train, size, seed) if task.train else []
    if max_shots > len(pool):
        raise AIMError(
            f"{max_shots} shots need at least {max_shots} pool demos, but the pool has {len(pool)}"
        )
    return pool


def _check_arguments(task: Task, shots, modes, trials: int, selection: str) -> None:
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AIMError(f"unknown mode {bad[0] if bad else ''!r}; use some of {', '.join(MODES)}")
    if not shots or any(k < 0 for k in shots) or trials < 1:
        raise AIMError("give at least one shot count, all >= 0, and trials >= 1")
    SELECTORS.get(selection)
    if selection in ("similarity", "support") and trials > 1:
        logger.warning("%s selection gives every trial the same demos; --trials 1 costs less", selection)
    if not task.test:
        raise AIMError(f"task {task.name!r} has no evaluation items; load it first (task.loaded(paths))")
    for name in task.metric_names():
        METRICS.get(name)
    if needs_scores(task) and any(len(task.candidates_for(q)) < 2 for q in task.test):
        raise AIMError(f"task {task.name!r} scores candidates but an item has fewer than two")


def _key(cell: Cell, query: Item) -> tuple[str, int, int, str]:
    return (cell.mode, cell.shots, cell.trial, query.id)
