"""Answer a batch of queries of one cell: generate, and for closed answer sets score every candidate.

Each query's prompt is built alone (its own demos), then the batch goes through the model at once
(`aim_icl.core.batching`): greedy answers and scores equal one-by-one answering. The model time of a batch is
shared equally by its queries (`latency_ms`).
"""

from __future__ import annotations

import logging
import time

import torch

from aim_icl.core.aim import AIM
from aim_icl.core.batching import answer_ids, generate_batch, score_batch
from aim_icl.core.prompt import PromptTooLong
from aim_icl.eval.items import Item
from aim_icl.eval.memory import synchronize
from aim_icl.eval.scoring import needs_scores
from aim_icl.eval.task import Task

logger = logging.getLogger(__name__)

SCORE_BATCH = 8  # candidate answers per query and scoring pass
CPU_BATCH = 16  # on 2 cores the world demo's CPU time: 52 s at batch 1, 14 at 16, 15 at 32, 13 at 64
ACCELERATOR_BATCH = 64  # first try on an accelerator; halved on out-of-memory until a batch fits


def default_batch_size(device: torch.device) -> int:
    """Queries per batch when the caller gives none: `CPU_BATCH` on a CPU, `ACCELERATOR_BATCH` elsewhere.

    On an accelerator the batch should fill the device: the runner starts at `ACCELERATOR_BATCH` and halves the
    batch whenever it runs out of memory, keeping the largest size that fits for the rest of the run.
    """
    return CPU_BATCH if device.type == "cpu" else ACCELERATOR_BATCH


def answer_batch(
    aim: AIM, task: Task, asked: list[tuple[Item, list]], mode: str, max_new_tokens: int
) -> list[dict]:
    """One record per `(item, demos)` in `asked`, in order; prompts past the model's context are not run."""
    synchronize(aim.backbone.device)
    start = time.perf_counter()
    built = [_build(aim, task, item, demos, mode) for item, demos in asked]
    records: list[dict] = [
        {"id": b["item"].id, "fits": False, "prompt_tokens": b["prompt_tokens"]} for b in built
    ]
    context = aim.backbone.max_length
    run = [i for i, b in enumerate(built) if b["inputs"] is not None and fits(b, max_new_tokens, context)]
    if run:
        generated = generate_batch(aim, [built[i]["inputs"] for i in run], max_new_tokens=max_new_tokens)
        scores = _scores(aim, task, [built[i] for i in run]) if needs_scores(task) else [None] * len(run)
        for i, answer, score in zip(run, generated, scores):
            records[i] = _record(task, built[i], answer, score)
    synchronize(aim.backbone.device)
    share = (time.perf_counter() - start) * 1000 / len(asked)
    return [r if r.get("fits") is False else {**r, "latency_ms": share} for r in records]


def fits(built: dict, max_new_tokens: int, context: int | None) -> bool:
    """Whether the prompt and its answer fit the model's context. A prompt past it is not run: its answer would say
    nothing about the mode, so the row reports it as not fitting, as a real deployment would refuse it."""
    return context is None or built["prompt_tokens"] + max_new_tokens <= context


def _build(aim: AIM, task: Task, item: Item, demos: list, mode: str) -> dict:
    text = task.query_text(item)
    try:
        inputs = aim.build_inputs(item.load_image(), text, demos, mode)
    except PromptTooLong as err:
        return {"item": item, "inputs": None, "prompt_tokens": err.length}
    return {"item": item, "text": text, "inputs": inputs, "prompt_tokens": int(inputs["input_ids"].shape[1])}


def _scores(aim: AIM, task: Task, run: list[dict]) -> list[list[float]]:
    """Every query's candidates scored after its generation prompt (built once, read once per forward), at most
    `SCORE_BATCH` candidates per query and pass: a batch of queries with few candidates is one pass, a query with
    many takes several."""
    prompts, answers, owners = [], [], []
    for row, b in enumerate(run):
        candidates = task.candidates_for(b["item"])
        for i in range(0, len(candidates), SCORE_BATCH):
            prompts.append(b["inputs"])
            answers.append(answer_ids(aim, b["text"], candidates[i : i + SCORE_BATCH]))
            owners.append(row)
    scores: list[list[float]] = [[] for _ in run]
    for row, chunk in zip(owners, score_batch(aim, prompts, answers, max_rows=SCORE_BATCH * len(run))):
        scores[row] += chunk.tolist()
    return scores


def _record(task: Task, built: dict, generated: str, scores: list[float] | None) -> dict:
    return {
        "id": built["item"].id,
        "generated": generated,
        "prediction": task.postprocess(generated),
        "scores": scores,
        "prompt_tokens": built["prompt_tokens"],
    }
