"""Evaluate a task in several modes and shot counts over seeded trials: `run_eval(aim, task, ...) -> rows`.

Work is a list of cells (mode, shots, trial). Zero-shot is one cell whatever the modes (every mode with no demos
is the same prompt, and greedy decoding makes trials identical). Under `accelerate launch`, process r evaluates
queries `i % world_size == r`; every process appends its records to its own file, and after a barrier the rows
are computed from all files, so they equal a single-process run's.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aim_icl.bank.fingerprint import weights_hash
from aim_icl.core.aim import AIM
from aim_icl.core.demo import Query
from aim_icl.core.modes import MODE_TABLE, MODES
from aim_icl.core.pipeline import default_workers, release_memory
from aim_icl.core.placement import process_state
from aim_icl.errors import AIMError
from aim_icl.eval.aggregate import rows_from_records
from aim_icl.eval.answer import (
    BatchJob,
    PreparedBatch,
    Stages,
    answer_prepared,
    default_batch_size,
    prepare_batch,
)
from aim_icl.eval.demos import DemoSource, open_pool_bank
from aim_icl.eval.items import Item
from aim_icl.eval.memory import PeakMemory
from aim_icl.eval.scoring import METRICS, needs_scores
from aim_icl.eval.selection import SELECTIONS, QuerySelector, draw_pool, support_pool
from aim_icl.eval.store import PredictionStore
from aim_icl.eval.task import Task

logger = logging.getLogger(__name__)

DEMO_BATCH = 256  # demos read per forward pass at least (a cell's new demos are read together)


@dataclass(frozen=True)
class Cell:
    mode: str
    shots: int
    trial: int
    seed: int


def plan_cells(modes: Sequence[str], shots: Sequence[int], trials: int, seed: int) -> list[Cell]:
    """Zero-shot once (if `zero` is a mode or 0 a shot count), then every other mode x shots > 0 x trial."""
    cells = [Cell("zero", 0, 0, seed)] if "zero" in modes or 0 in shots else []
    for mode in (m for m in MODES if m in modes and MODE_TABLE[m].demos):
        cells += [Cell(mode, k, t, seed + t) for k in sorted(set(shots)) if k > 0 for t in range(trials)]
    return cells


def run_eval(
    aim: AIM,
    task: Task,
    shots: Sequence[int] = (0, 4, 8, 16),
    modes: Sequence[str] = MODES,
    trials: int = 3,
    selection: str | None = None,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    pool_size: int = 2048,
    seed: int = 0,
    bank: str | Path | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Evaluate `task` (a task without items is read by its loader first): one row per (mode, shots, metric), see
    `aggregate`. With `output_dir`, predictions are appended there as made (a rerun skips what is done), then the
    results JSON, Markdown table and plots written. Queries: the first `limit` evaluation items; demos:
    `selection` (None: the task's) from `pool_size` train items drawn with `seed`, trial t using `seed + t`
    (`support`: a query's first k of its own `Item.support`). `batch_size` queries per forward pass (answers as
    one by one); `workers` processes prepare batches ahead (None: `core.pipeline.default_workers()`; 0: none).
    """
    if not task.test and task.load is not None:
        task = task.loaded()
    selection = selection or task.selection
    check_arguments(task, shots, modes, trials, selection, bank, batch_size, workers)
    queries = task.test if limit is None else task.test[:limit]
    pool = plan_pool(task, queries, shots, modes, selection, pool_size, seed)
    state = process_state(aim.backbone.device.type)
    setup = functools.partial(
        run_config, aim, task, selection, seed, pool_size, max_new_tokens, bank is not None
    )
    store = open_store(output_dir, setup, state)
    cells = plan_cells(modes, shots, trials, seed)
    use_bank = bank is not None and pool and (selection == "similarity" or "aim" in modes)
    pool_bank = open_pool_bank(bank, aim, task, pool, state) if use_bank else None
    try:
        select = SELECTIONS.get(selection)(pool=pool, bank=pool_bank)
        n_new = max_new_tokens or task.max_new_tokens
        size = batch_size or default_batch_size(aim.backbone.device)
        workers = default_workers(aim.backbone.device) if workers is None else workers
        source = DemoSource(aim, task, pool, pool_bank, batch_size=max(DEMO_BATCH, size), workers=workers)
        run = _Run(aim, task, select, source, store, n_new, size, workers)
        run.evaluate(
            cells, queries[state.process_index :: state.num_processes], progress and state.is_main_process
        )
    finally:
        if pool_bank is not None:
            pool_bank.bank.close()
    state.wait_for_everyone()
    rows = rows_from_records(task, cells, queries, store.read("predictions"), store.read("stats"), selection)
    if store.directory is not None and state.is_main_process:
        from aim_icl.eval.report import write_report

        write_report(rows, store.directory)
    state.wait_for_everyone()
    return rows


@dataclass
class _Run:
    """One process's share of the work, and what it needs to answer a query."""

    aim: AIM
    task: Task
    select: QuerySelector
    source: DemoSource
    store: PredictionStore
    max_new_tokens: int
    batch_size: int = 1
    workers: int = 0

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
        """Answer the cell's unfinished queries a batch at a time, appending each batch's records as it is done;
        then one stats record for the stretch. Batches are prepared by the pipeline's workers ahead of the model;
        in `aim` mode the cell's new demos are read first, all together, in large batches."""
        start, stages = time.perf_counter(), Stages()
        picks = [self._picks(cell, q) for q in items]
        with PeakMemory(self.aim.backbone.device) as peak:
            if MODE_TABLE[cell.mode].fused:
                with stages.time("read_s", self.aim):
                    self.source.states([i for p in picks for i in p])
            starts = range(0, len(items), self.batch_size)
            jobs = [
                (self._job(cell, items[i : i + self.batch_size], picks[i : i + self.batch_size]),)
                for i in starts
            ]
            prepared_batches = self.aim.pipeline(self.workers).map(prepare_batch, jobs)
            for offset in starts:
                with stages.time("wait_s"):
                    prepared = next(prepared_batches)
                stages.add("prepare_s", prepared.seconds)
                batch_picks = picks[offset : offset + self.batch_size]
                for record in self.answer(prepared, batch_picks, cell.mode, stages):
                    self._log_failure(record)
                    self.store.add({"mode": cell.mode, "shots": cell.shots, "trial": cell.trial, **record})
                bar.update(len(prepared.job.ids))
        stats = {"mode": cell.mode, "shots": cell.shots, "trial": cell.trial, "queries": len(items)}
        stats.update(wall_s=time.perf_counter() - start, **stages.as_dict())
        self.store.add_stats({**stats, "peak_memory_mb": peak.mb, "memory": peak.kind})

    def answer(
        self, prepared: PreparedBatch, picks: list[list[int]], mode: str, stages: Stages
    ) -> list[dict]:
        """`answer_prepared`, halving the batch (for the rest of the run) while the device runs out of memory."""
        fused = [self.source.states(p) for p in picks] if MODE_TABLE[mode].fused else None
        try:
            return answer_prepared(self.aim, self.task, prepared, fused, stages)
        except torch.OutOfMemoryError:
            job = prepared.job
            if len(job.ids) == 1:
                raise
            self.batch_size = max(1, len(job.ids) // 2)
            logger.warning("out of memory at %d queries per batch: now %d", len(job.ids), self.batch_size)
            release_memory(self.aim.backbone.device)
            half = len(job.ids) // 2
            encoder = self.aim.encoder
            return [
                record
                for part, part_picks in ((_part(job, 0, half), picks[:half]), (_part(job, half, None), picks[half:]))
                for record in self.answer(prepare_batch(encoder, part), part_picks, mode, stages)
            ]  # fmt: skip

    def _job(self, cell: Cell, items: list[Item], picks: list[list[int]]) -> BatchJob:
        """What a worker needs for these queries: image sources, texts, demo texts (and images for `icl`)."""
        scored = needs_scores(self.task)
        queries = [
            Query(item.image, self.task.query_text(item), self.source.layouts(p, cell.mode))
            for item, p in zip(items, picks)
        ]
        candidates = [self.task.candidates_for(item) if scored else () for item in items]
        return BatchJob([item.id for item in items], queries, candidates, cell.mode, self.max_new_tokens)

    def _picks(self, cell: Cell, query: Item) -> list[int]:
        return self.select(query, cell.shots, cell.seed) if cell.shots else []

    @staticmethod
    def _log_failure(record: dict) -> None:
        if "error" in record:
            logger.error("%s; this query is skipped (a rerun tries it again)", record["error"])


def _part(job: BatchJob, start: int, end: int | None) -> BatchJob:
    return replace(
        job, ids=job.ids[start:end], queries=job.queries[start:end], candidates=job.candidates[start:end]
    )


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


def open_store(output_dir: str | Path | None, setup: Callable[[], dict], state) -> PredictionStore:
    """This process's prediction store (in memory without a directory); a directory holding predictions of
    another setup (`setup()`: what they depend on) is refused."""
    store = PredictionStore(output_dir, state.process_index, state.num_processes)  # makes the directory
    if store.directory is not None:
        check_run_config(store.directory, setup(), state)
    return store


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
                "use a new --output or delete that one"
            )
    state.wait_for_everyone()
    if state.is_main_process and not path.is_file():
        path.write_text(json.dumps(config, indent=2) + "\n")


def plan_pool(
    task: Task, queries: list[Item], shots, modes, selection: str, pool_size: int, seed: int
) -> list[Item]:
    """The demo pool a run draws from (no model needed: the CLI checks it before loading one)."""
    max_shots = max(shots) if set(modes) - {"zero"} else 0
    if selection == "support":
        return support_pool(queries, max_shots)
    return demo_pool(task, pool_size, seed, max_shots)


def demo_pool(task: Task, size: int, seed: int, max_shots: int) -> list[Item]:
    pool = draw_pool(task.train, size, seed) if task.train else []
    if max_shots > len(pool):
        raise AIMError(
            f"{max_shots} shots need at least {max_shots} pool demos, but the pool has {len(pool)}"
        )
    return pool


def check_arguments(
    task: Task, shots, modes, trials: int, selection: str, bank=None, batch_size=None, workers=None
) -> None:
    """Everything about a run that can be wrong before a model is loaded."""
    if batch_size is not None and batch_size < 1:
        raise AIMError(f"batch_size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise AIMError(f"workers must be 0 (prepare in this thread) or more, got {workers}")
    if selection == "similarity" and bank is None:
        raise AIMError(
            "selection similarity ranks the pool by image similarity: it needs a bank (--bank PATH)"
        )
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AIMError(f"unknown mode {bad[0] if bad else ''!r}; use some of {', '.join(MODES)}")
    if not shots or any(k < 0 for k in shots) or trials < 1:
        raise AIMError("give at least one shot count, all >= 0, and trials >= 1")
    SELECTIONS.get(selection)
    if selection in ("similarity", "support") and trials > 1:
        logger.warning("%s selection gives every trial the same demos; --trials 1 costs less", selection)
    if not task.test:
        raise AIMError(f"task {task.name!r} has no evaluation items and no loader to read them")
    for name in task.metric_names():
        METRICS.get(name)
    if needs_scores(task) and any(len(task.candidates_for(q)) < 2 for q in task.test):
        raise AIMError(f"task {task.name!r} scores candidates but an item has fewer than two")


def _key(cell: Cell, query: Item) -> tuple[str, int, int, str]:
    return (cell.mode, cell.shots, cell.trial, query.id)
