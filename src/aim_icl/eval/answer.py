"""Answer a batch of queries of one cell: prepared on the CPU (in a worker), then generated and scored on the model.

A cell's queries go through two steps, so that the model's thread only runs the model:

1. `prepare_batch(encoder, job)` (a worker process, or inline): load each query's image (and `icl` demo images),
   build the batch's prompts in one processor call, find which prompts fit the model's context, tokenize the
   candidate answers. An image that cannot be read fails its query alone (`failed`, with the item id).
2. `answer_prepared(aim, task, prepared, fused)` (the model's thread): write the fused demos in (`aim` mode),
   generate the batch in one left-padded call, score every candidate (`core.batching`). Greedy answers and scores
   equal one-by-one answering. The model time of a batch is shared equally by its queries (`latency_ms`).

`Stages` adds up where a cell's time went: preparing (in workers, summed), waiting for prepared batches, demo
reading, prompt building, generation, scoring.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from aim_icl.core.aim import AIM
from aim_icl.core.batching import ReadPrompts, generate_reading, score_batch, score_read
from aim_icl.core.demo import Query, load_image
from aim_icl.core.modes import mode_of
from aim_icl.core.prompt import Encoded, PromptEncoder
from aim_icl.errors import AIMError
from aim_icl.eval.aggregate import STAGES
from aim_icl.eval.memory import synchronize
from aim_icl.eval.scoring import needs_scores
from aim_icl.eval.task import Task

SCORE_BATCH = 8  # candidate answers per query and scoring pass
CPU_BATCH = 64  # the default world demo on 2 cores: 87 s at batch 16, 71 at 64, 83 at 128 (wall)
ACCELERATOR_BATCH = 64  # first try on an accelerator; halved on out-of-memory until a batch fits


def default_batch_size(device: torch.device) -> int:
    """Queries per batch when the caller gives none: `CPU_BATCH` on a CPU, `ACCELERATOR_BATCH` elsewhere (the same
    now; kept apart because they are measured apart).

    On an accelerator the batch should fill the device: the runner starts at `ACCELERATOR_BATCH` and halves the
    batch whenever it runs out of memory, keeping the largest size that fits for the rest of the run.
    """
    return CPU_BATCH if device.type == "cpu" else ACCELERATOR_BATCH


@dataclass
class BatchJob:
    """What a worker needs to prepare one batch: queries with image sources (loaded there) and demo texts."""

    ids: list[str]
    queries: list[Query]  # `aim`/`text` demos as text alone; `icl` demos with their images
    candidates: list[tuple[str, ...]]  # per query; empty when the task scores nothing
    mode: str
    max_new_tokens: int


@dataclass
class PreparedBatch:
    """A batch ready for the model: `encoded` holds the rows of `run` (queries that loaded and fit), in order."""

    job: BatchJob
    prompt_tokens: list[int | None]  # per query; None where it failed
    run: list[int]
    encoded: Encoded | None
    answers: list[list[torch.Tensor]]  # per row of `run`: its candidates' tokens
    failed: dict[int, str] = field(default_factory=dict)  # query index -> why
    seconds: float = 0.0


def prepare_batch(encoder: PromptEncoder, job: BatchJob) -> PreparedBatch:
    """Step 1, on the CPU: images, prompts (one processor call), context check, candidate tokens."""
    start = time.perf_counter()
    loaded, failed = {}, {}
    for i, query in enumerate(job.queries):
        try:
            loaded[i] = _with_images(query, job.mode)
        except AIMError as err:
            failed[i] = f"item {job.ids[i]!r}: {err}"
    prompt_tokens: list[int | None] = [None] * len(job.queries)
    run = list(loaded)
    encoded = _encode(encoder, [loaded[i] for i in run], job.mode) if run else None
    if encoded is not None:
        for i, n in zip(run, encoded.lengths):
            prompt_tokens[i] = n
        # a prompt past the context is not run (its answer would say nothing about the mode): the row reports it
        # as not fitting, as a real deployment would refuse it; the others are encoded again without it
        fitting = [i for i in run if encoder.layout.fits(prompt_tokens[i], job.max_new_tokens)]
        if fitting != run:
            run = fitting
            encoded = _encode(encoder, [loaded[i] for i in run], job.mode) if run else None
    answers = [[encoder.query_answer_ids(job.queries[i].text, c) for c in job.candidates[i]] for i in run]
    return PreparedBatch(job, prompt_tokens, run, encoded, answers, failed, time.perf_counter() - start)


def answer_prepared(
    aim: AIM, task: Task, prepared: PreparedBatch, fused: Sequence[Sequence] | None, stages: Stages
) -> list[dict]:
    """Step 2, on the model: one record per query of the job, in order. `fused`: each query's demo states
    (`aim` mode), projected here."""
    job = prepared.job
    records: list[dict] = []
    for i, item_id in enumerate(job.ids):
        if i in prepared.failed:
            records.append({"id": item_id, "error": prepared.failed[i]})
        else:
            records.append({"id": item_id, "fits": False, "prompt_tokens": prepared.prompt_tokens[i]})
    if not prepared.run:
        return records
    synchronize(aim.backbone.device)
    start = time.perf_counter()
    with stages.time("build_s"):
        rows = None
        if fused is not None:  # one projector call for the whole batch's demos
            vectors = iter(aim.fuse([d for i in prepared.run for d in fused[i]]))
            rows = [[next(vectors) for _ in fused[i]] for i in prepared.run]
        inputs = aim.finish(prepared.encoded, rows)
    scored = needs_scores(task)
    with stages.time("generate_s", aim):
        generated, read = generate_reading(aim, [inputs], keep=scored, max_new_tokens=job.max_new_tokens)
    scores = [None] * len(prepared.run)
    if scored:
        with stages.time("score_s", aim):
            scores = _scores(aim, inputs, read, prepared.answers)
    share = (time.perf_counter() - start) * 1000 / len(job.ids)
    for i, answer, score in zip(prepared.run, generated, scores):
        records[i] = {
            "id": job.ids[i],
            "generated": answer,
            "prediction": task.postprocess(answer),
            "scores": score,
            "prompt_tokens": prepared.prompt_tokens[i],
            "latency_ms": share,
        }
    return records


class Stages:
    """Seconds per stage of a cell (`STAGES`); `add` takes a worker's preparation time."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def time(self, stage: str, aim: AIM | None = None):
        start = time.perf_counter()
        try:
            yield
        finally:
            if aim is not None:  # an accelerator's queued work belongs to this stage
                synchronize(aim.backbone.device)
            self.seconds[stage] += time.perf_counter() - start

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def as_dict(self) -> dict[str, float]:
        return {stage: self.seconds.get(stage, 0.0) for stage in STAGES}


def _with_images(query: Query, mode: str) -> Query:
    """The query with its image (and in `icl` mode its demos' images) loaded: a bad one fails this query alone."""
    image = None if query.image is None else load_image(query.image)
    demos = query.demos
    if mode_of(mode).demo_images:
        demos = [replace(d, image=None if d.image is None else load_image(d.image)) for d in demos]
    return replace(query, image=image, demos=demos)


def _encode(encoder: PromptEncoder, queries: list[Query], mode: str) -> Encoded:
    return encoder.prepare(queries, mode, check_length=False)


def _scores(
    aim: AIM, inputs: dict, read: ReadPrompts | None, answers: list[list[torch.Tensor]]
) -> list[list[float]]:
    """Every row's candidates scored after its generation prompt, at most `SCORE_BATCH` candidates per row and
    pass. The first pass reads the candidates on the prompts as generation read them; rows with more candidates
    take further passes, each reading the prompts again."""
    scores: list[list[float]] = [[] for _ in answers]
    for start in range(0, max(len(a) for a in answers), SCORE_BATCH):
        chunk = [a[start : start + SCORE_BATCH] for a in answers]
        if start == 0 and read is not None:
            values = score_read(aim, read, chunk)
        else:
            values = score_batch(aim, [inputs], chunk)
        for row, row_values in enumerate(values):
            scores[row] += row_values.tolist()
    return scores
