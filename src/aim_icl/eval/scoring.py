"""Corpus scores of one evaluation cell (mode, shots, trial) from its prediction records.

A record holds an item's `id`, its post-processed `prediction` and, for closed answer sets, `scores`: the summed
log-likelihood of each of the task's candidates, in the task's order. Each metric below maps the cell's records to
one number; `needs_scores` says which ones read the likelihoods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from aim_icl.eval.items import Item
from aim_icl.eval.metrics import cider, exact_match, roc_auc, vqa_accuracy
from aim_icl.eval.task import Task
from aim_icl.registry import Registry

logger = logging.getLogger(__name__)

Metric = Callable[[Sequence[dict], Mapping[str, Item], Task], float]
METRICS: Registry[Metric] = Registry("metric")
NEEDS_SCORES = {"likelihood_accuracy", "roc_auc"}


def needs_scores(task: Task) -> bool:
    return any(name in NEEDS_SCORES for name in task.metric_names())


@METRICS.register("vqa_accuracy")
def _vqa(records, items, task) -> float:
    return float(np.mean([vqa_accuracy(r["prediction"], list(items[r["id"]].answers)) for r in records]))


@METRICS.register("cider")
def _cider(records, items, task) -> float:
    return cider(
        {r["id"]: r["prediction"] for r in records}, {r["id"]: list(items[r["id"]].answers) for r in records}
    )


@METRICS.register("exact_match")
def _exact(records, items, task) -> float:
    """A generated answer is right when it matches any reference."""
    return float(
        np.mean([max(exact_match(r["prediction"], a) for a in items[r["id"]].answers) for r in records])
    )


@METRICS.register("likelihood_accuracy")
def _ranked(records, items, task) -> float:
    """Classification by likelihood: the candidate the model scores highest, against the references."""
    hits = []
    for r in records:
        best = task.candidates_for(items[r["id"]])[int(np.argmax(r["scores"]))]
        hits.append(max(exact_match(best, a) for a in items[r["id"]].answers))
    return float(np.mean(hits))


@METRICS.register("roc_auc")
def _auc(records, items, task) -> float:
    """ROC-AUC of score(positive) - score(negative), the positive class being the task's first candidate."""
    positive = task.candidates[0]
    labels = [int(exact_match(positive, items[r["id"]].answers[0]) == 1.0) for r in records]
    margins = [r["scores"][0] - r["scores"][1] for r in records]
    return roc_auc(labels, margins)


def cell_scores(records: Sequence[dict], items: Mapping[str, Item], task: Task) -> dict[str, float]:
    """Every metric of the task on one cell's records (NaN where a metric is undefined, e.g. one class only)."""
    out = {}
    for name in task.metric_names():
        metric = METRICS.get(name)
        try:
            out[name] = metric(records, items, task)
        except ValueError as err:
            logger.warning(
                "%s is undefined on these %d queries (%s): reported as NaN", name, len(records), err
            )
            out[name] = float("nan")
    return out
