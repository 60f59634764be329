"""A task's queries through the evaluation harness's batched path (`aim_icl.eval.answer`), as `aim-icl eval` runs
a cell: in `aim` mode every picked demo is read first (new ones together, in large batches), then the queries go
`batch_size` at a time: prepared on the CPU (images, one processor call, the context check; in workers when
`workers` > 0), generated in one left-padded call, and their continuations scored on the prompts generation read.

A prompt that does not fit the model's context is not run (`fits: False` in its record), as in the harness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from aim_icl.core.demo import Query
from aim_icl.core.modes import mode_of
from aim_icl.eval.answer import BatchJob, Stages, answer_prepared, prepare_batch
from aim_icl.eval.items import Item
from aim_icl.integrations.lmms_eval.demos import TaskDemos


@dataclass
class Ask:
    """One query: its item, the pool indices of its demos, and the continuations to score (loglikelihood)."""

    item: Item
    picks: list[int]
    continuations: tuple[str, ...] = ()


def answer_all(
    aim,
    demos: TaskDemos,
    asks: list[Ask],
    mode: str,
    max_new_tokens: int,
    batch_size: int,
    workers: int,
    progress: Callable[[int], object] | None = None,
) -> list[dict]:
    """One harness record per ask, in order: `generated`, and `scores` (summed log-likelihood of each
    continuation) where continuations were given; or `fits: False`, or `error`. `progress(n)` after each batch."""
    scored = any(a.continuations for a in asks)
    task = demos.view.harness_task
    if scored:  # the harness scores candidates for a task whose metrics read likelihoods
        task = dataclasses.replace(task, metrics=("likelihood_accuracy",))
    fused = mode_of(mode).fused
    if fused:  # as a harness cell: the new demos read together before any query
        demos.source.states([i for a in asks for i in a.picks])
    chunks = [asks[i : i + batch_size] for i in range(0, len(asks), batch_size)]
    jobs = [(_job(aim, demos, chunk, mode, max_new_tokens, scored),) for chunk in chunks]
    stages, records = Stages(), []
    for chunk, prepared in zip(chunks, aim.pipeline(workers).map(prepare_batch, jobs)):
        states = [demos.source.states(a.picks) for a in chunk] if fused else None
        records += answer_prepared(aim, task, prepared, states, stages)
        if progress is not None:
            progress(len(chunk))
    return records


def _job(aim, demos: TaskDemos, asks: list[Ask], mode: str, max_new_tokens: int, scored: bool) -> BatchJob:
    """The batch a worker prepares: images loaded here (documents are read from the task's dataset, which stays
    in this process), demo texts (and `icl` images); scoring generates as many tokens as the longest
    continuation, so whether greedy decoding gives it can be read off the generation."""
    queries = [
        Query(a.item.load_image(), a.item.fields["text"], demos.source.layouts(a.picks, mode)) for a in asks
    ]
    if scored:
        lengths = [
            len(aim.encoder.query_answer_ids(q.text, c))
            for q, a in zip(queries, asks)
            for c in a.continuations
        ]
        max_new_tokens = max(lengths)
    candidates = [a.continuations for a in asks]
    return BatchJob([a.item.id for a in asks], queries, candidates, mode, max_new_tokens)
