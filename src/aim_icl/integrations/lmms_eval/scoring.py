"""`process_results` of the world tasks' YAMLs: the evaluation harness's exact match on the first sentence.

A generated answer is cut after its first full stop (`world.tasks.first_sentence`, the world tasks'
post-processing) and compared with the reference by `eval.metrics.exact_match`: the score `aim-icl eval` gives.
"""

from __future__ import annotations

from aim_icl.eval.metrics import exact_match
from aim_icl.world.tasks import first_sentence


def world_exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": exact_match(first_sentence(results[0]), doc["answer"])}
