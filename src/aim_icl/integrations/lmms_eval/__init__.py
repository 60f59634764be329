"""aim-icl inside lmms-eval (`pip install "aim-icl[lmms-eval]"`): the `aim_icl` model and the world's task YAMLs.

lmms-eval finds the model through the `lmms_eval.models` entry point (`manifest.MANIFEST`); its few-shot sampler
joins only the demos' texts, so the model picks its demos itself from the task's own documents (`demos.py`) and
shows them in any mode: `zero`, `text`, `icl` (every demo image in the prompt) or `aim` (fused tokens).

Modules: `manifest` (the entry point; imports nothing heavy), `options` (model_args), `requests` (lmms-eval's
requests and task object), `demos` (pool, selection, demo states), `answer` (batches through the evaluation
harness's batched path), `model` (the lmms class), `scoring` (process_results of the world tasks), `export`
(`aim-icl world export --lmms-eval DIR`: the world tasks' data and YAMLs).
"""
