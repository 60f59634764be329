"""Result rows from prediction and stats records: one row per (mode, shots, metric), mean and std over trials.

Row fields (other tools read them; keep the names): `task`, `mode`, `shots`, `metric`, `value` (mean over trials),
`std` (population std over trials, as OpenFlamingo reports), `trials`, `values` (per trial), `prompt_tokens` (mean
prompt length of the generation prompt), `peak_memory_mb` (largest over the row's cells and processes; see
`memory.py` for what it measures), `memory` (what kind of peak), `latency_ms` (mean model time per query: prompt
building, generation and candidate scoring, a batch's time shared equally by its queries; demo reading excluded),
`throughput_qps` (queries per second
of wall time, demo reading and image loading included, summed over processes), `queries`, `selection`, `seeds`,
`fits`: False when the mode's prompt did not fit the model's context at this shot count (nothing was generated;
value, std and costs are NaN), `failed`: queries that could not be answered (an unreadable image; logged with the
item id, left out of the scores), and where the time went, in seconds summed over the row's cells (`STAGES`):
`prepare_s` (images and prompts on the CPU, in the pipeline's workers or inline), `wait_s` (the model's thread
waiting for a prepared batch: large when preparation bounds the run), `read_s` (reading new demos through the
backbone, `aim` mode: the one name for demo-reading time), `build_s` (fusing and
writing the demos in), `generate_s`, `score_s`; `example`: the first query's `id`, `prediction` and `answers` in
the first trial (None where nothing was generated)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from aim_icl.eval.items import Item
from aim_icl.eval.scoring import cell_scores
from aim_icl.eval.task import Task

logger = logging.getLogger(__name__)

# where a cell's time goes, in order (`eval.answer.Stages` measures them)
STAGES = ("prepare_s", "wait_s", "read_s", "build_s", "generate_s", "score_s")


def rows_from_records(
    task: Task,
    cells: Sequence,
    queries: Sequence[Item],
    predictions: list[dict],
    stats: list[dict],
    selection: str,
) -> list[dict]:
    items = {q.id: q for q in queries}
    by_cell, failed = defaultdict(list), defaultdict(set)
    for record in predictions:
        if record["id"] in items:
            cell = (record["mode"], int(record["shots"]), int(record["trial"]))
            (failed[cell].add(record["id"]) if "error" in record else by_cell[cell].append(record))
    groups = defaultdict(list)  # (mode, shots) -> cells in trial order
    for cell in cells:
        groups[(cell.mode, cell.shots)].append(cell)
    rows = []
    for (mode, shots), group in groups.items():
        records = [by_cell[(c.mode, c.shots, c.trial)] for c in group]
        if any(len(r) < len(queries) for r in records):
            logger.warning(
                "%s %d-shot: some queries have no prediction yet; scores cover the rest", mode, shots
            )
        if any(r.get("fits") is False for rs in records for r in rs):
            rows += _not_fitting(task, mode, shots, [r for rs in records for r in rs], selection)
            continue
        per_trial = [cell_scores(r, items, task) for r in records if r]
        if not per_trial:
            continue
        cost = _cost(
            [r for rs in records for r in rs], [s for s in stats if (s["mode"], s["shots"]) == (mode, shots)]
        )
        for metric in task.metric_names():
            values = [scores[metric] for scores in per_trial]
            rows.append(
                {
                    "task": task.name,
                    "mode": mode,
                    "shots": shots,
                    "metric": metric,
                    "value": _mean(values),
                    "std": _std(values),
                    "trials": len(values),
                    "values": values,
                    **cost,
                    "queries": len(records[0]),
                    "selection": selection if shots else None,
                    "seeds": [c.seed for c in group],
                    "fits": True,
                    "failed": max(len(failed[(c.mode, c.shots, c.trial)]) for c in group),
                    "example": _example(records[0], items),
                }
            )
    return rows


def _example(records: list[dict], items: dict[str, Item]) -> dict | None:
    """The first query's answer (first trial), so a reader of the results sees what was generated, not only scores."""
    answered = {r["id"]: r for r in records if "prediction" in r}
    first = next((answered[i] for i in items if i in answered), None)
    if first is None:
        return None
    return {"id": first["id"], "prediction": first["prediction"], "answers": list(items[first["id"]].answers)}


def _not_fitting(task: Task, mode: str, shots: int, records: list[dict], selection: str) -> list[dict]:
    """Rows saying the prompt did not fit: its length, and no score or cost (NaN)."""
    nan = float("nan")
    row = {
        "task": task.name,
        "mode": mode,
        "shots": shots,
        "value": nan,
        "std": nan,
        "trials": 0,
        "values": [],
    }
    row.update(prompt_tokens=float(np.mean([r["prompt_tokens"] for r in records])), fits=False)
    row.update(peak_memory_mb=nan, memory=None, latency_ms=nan, throughput_qps=nan)
    row.update(queries=len(records), selection=selection if shots else None, failed=0, example=None)
    row.update(dict.fromkeys(STAGES, nan))
    return [{**row, "metric": metric} for metric in task.metric_names()]


def _cost(records: list[dict], stats: list[dict]) -> dict:
    """Prompt length and latency from the records; peak memory, throughput and the stages from the stats."""
    by_rank = defaultdict(lambda: [0, 0.0])  # process -> [queries, wall seconds]
    for s in stats:
        by_rank[s.get("rank", 0)][0] += s["queries"]
        by_rank[s.get("rank", 0)][1] += s["wall_s"]
    return {
        "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in records])),
        "peak_memory_mb": max((s["peak_memory_mb"] for s in stats), default=float("nan")),
        "memory": stats[0]["memory"] if stats else None,
        "latency_ms": float(np.mean([r["latency_ms"] for r in records])),
        "throughput_qps": sum(n / wall for n, wall in by_rank.values() if wall > 0) or float("nan"),
        **{stage: float(sum(s.get(stage, 0.0) for s in stats)) for stage in STAGES},
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _std(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")
