"""The `aim_icl` model of lmms-eval: any aim-icl backbone, answering with multimodal demos in any mode.

`lmms-eval eval --model aim_icl --model_args mode=aim,num_fewshot=16,... --tasks ...` (`options.Options` lists the
model_args). lmms-eval's own few-shot context (text only) is not used: each query's demos are picked from the
task's own documents (`demos.TaskDemos`) and shown as the mode says. Requests go through the evaluation harness's
batched path (`answer.answer_all`), `batch_size` queries per model call.

- `generate_until`: greedy generation, cut at the task's `until` strings. A prompt past the model's context (`icl`
  at many shots) is not run: it answers "" (scored wrong), and one warning says how many did not fit.
- `loglikelihood` (the simple class, `--force_simple`; multiple-choice tasks): per continuation, its negative
  log-likelihood summed over its tokens (lmms-eval's HF models return a loss and its multiple-choice scoring takes
  the smallest), and whether greedy generation starts with it. A prompt past the context scores `inf`. lmms-eval
  0.7.3's response cache (`--use_cache`) cannot store these results: run multiple-choice tasks without it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from tqdm.auto import tqdm

from aim_icl.integrations.lmms_eval.answer import Ask, answer_all
from aim_icl.integrations.lmms_eval.demos import TaskDemos
from aim_icl.integrations.lmms_eval.docs import TaskView
from aim_icl.integrations.lmms_eval.options import Options
from aim_icl.integrations.lmms_eval.requests import Request, read_request

logger = logging.getLogger(__name__)
MAX_NEW_TOKENS = 128  # when a task's generation_kwargs name none


class AIMSimple(lmms):
    """lmms-eval's "simple" model kind: takes `generate_until` and `loglikelihood` requests."""

    is_simple = True

    def __init__(self, **model_args):
        super().__init__()
        import torch

        from aim_icl.core.pipeline import default_workers
        from aim_icl.eval.answer import default_batch_size
        from aim_icl.models import load_aim

        self.options = Options.parse(**model_args)
        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.aim = load_aim(
            self.options.pretrained, self.options.projector, device=device, dtype=self.options.dtype
        )
        self.batch_size = self.options.batch_size or default_batch_size(self.aim.backbone.device)
        self.workers = default_workers(device) if self.options.workers is None else self.options.workers
        self._demos: dict[tuple[int, str], TaskDemos] = {}
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval's `--batch_size`/`--device` (`additional_config`), overridden by the same keys in
        `--model_args` (lmms-eval's own would pass both and fail)."""
        args = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args.update(simple_parse_args_string(arg_string))
        return cls(**args)

    @property
    def demos_read(self) -> int:
        """Demos read through the model so far (not taken from memory or a bank)."""
        return sum(d.read for d in self._demos.values())

    # -- lmms-eval's request types ------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        reads = [read_request(r) for r in requests]
        texts = [""] * len(reads)
        for positions in _groups(reads, lambda r: _frozen(r.gen_kwargs)).values():
            group = [reads[i] for i in positions]
            kwargs = group[0].gen_kwargs
            self._check_sampling(kwargs)
            new_tokens = int(kwargs.get("max_new_tokens") or kwargs.get("max_gen_toks") or MAX_NEW_TOKENS)
            records = self._answer(group, [()] * len(group), new_tokens)
            until = kwargs.get("until") or []
            for i, record in zip(positions, records):
                texts[i] = _cut(record.get("generated", ""), [until] if isinstance(until, str) else until)
                self.cache_hook.add_partial("generate_until", (requests[i].args[0], kwargs), texts[i])
        return texts

    def loglikelihood(self, requests) -> list[GenerationResult]:
        reads = [read_request(r) for r in requests]
        results: list[tuple[float, bool]] = [(float("inf"), False)] * len(reads)
        by_task: dict = defaultdict(list)  # (task, split) -> each document's request positions
        for (task, split, _), positions in _groups(reads, lambda r: r.doc_id).items():
            by_task[(task, split)].append(positions)  # a multiple-choice document's choices: one prompt
        for docs in by_task.values():
            continuations = [tuple(reads[i].continuation for i in positions) for positions in docs]
            records = self._answer([reads[p[0]] for p in docs], continuations, 1)
            for positions, record in zip(docs, records):
                greedy = record.get("generated", "").split()
                for i, score in zip(positions, record.get("scores") or []):
                    words = reads[i].continuation.split()
                    results[i] = (-float(score), greedy[: len(words)] == words)
        # lmms-eval 0.7.3's evaluator turns every response but a string or a GenerationResult into its str(), so a
        # bare (loss, greedy) pair would reach the task's scoring as text: the pair travels as the result's `text`
        return [GenerationResult(text=pair) for pair in results]

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            "aim_icl answers one turn per document; multi-round tasks are not supported"
        )

    # -- internals ----------------------------------------------------------------------------------------------

    def _answer(
        self, group: list[Request], continuations: list[tuple[str, ...]], new_tokens: int
    ) -> list[dict]:
        """Harness records for requests of one task and split (in order)."""
        first = group[0]
        demos = self._task_demos(first)
        shots = self._shots(first.task)
        mode = self.options.mode if shots else "zero"
        queries = [demos.query(r.doc_id) for r in group]
        asks = [Ask(q, demos.picks(q, shots, self.options.seed), c) for q, c in zip(queries, continuations)]
        read_before = demos.read
        bar = tqdm(
            total=len(asks), desc=f"aim_icl {first.task_name} {mode} {shots}-shot", disable=self.rank != 0
        )
        records = answer_all(
            self.aim, demos, asks, mode, new_tokens, self.batch_size, self.workers, bar.update
        )
        bar.close()
        self._report(first.task_name, mode, shots, records, demos.read - read_before)
        return records

    def _task_demos(self, request: Request) -> TaskDemos:
        key = (id(request.task), request.split)
        if key not in self._demos:
            from aim_icl.core.placement import process_state

            view = TaskView(request.task)
            state = process_state(str(self.aim.backbone.device))
            self._demos[key] = TaskDemos(
                view, self.aim, self.options, request.split, self.batch_size, self.workers, state
            )
        return self._demos[key]

    def _shots(self, task) -> int:
        if self.options.mode == "zero":
            return 0
        if self.options.num_fewshot is not None:
            return self.options.num_fewshot
        return int(task.config.num_fewshot or 0)

    def _report(self, task: str, mode: str, shots: int, records: list[dict], read: int) -> None:
        unfit = [r["prompt_tokens"] for r in records if r.get("fits") is False]
        if unfit:
            context = self.aim.encoder.layout.max_length
            logger.warning(
                "aim_icl, task %s: %d of %d prompts (mode=%s, %d shots, up to %d tokens) do not fit the model's "
                "context of %s tokens: not run, answered with an empty string (scored wrong); use fewer shots, "
                "or mode=aim",
                task, len(unfit), len(records), mode, shots, max(unfit), context,
            )  # fmt: skip
        for record in records:
            if "error" in record:
                logger.error("aim_icl, task %s: %s; answered with an empty string", task, record["error"])
        logger.info("aim_icl, task %s: %d demos read through the model", task, read)

    def _check_sampling(self, kwargs: dict) -> None:
        if (
            kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0
        ) and "sampling" not in self._warned:
            self._warned.add("sampling")
            logger.warning("aim_icl decodes greedily: the task's sampling settings are not used")


class AIMChat(AIMSimple):
    """lmms-eval's "chat" model kind (what `--model aim_icl` resolves to): `generate_until` requests only. The
    query is still the document's `doc_to_visual` and `doc_to_text`, as for the demos."""

    is_simple = False


def _groups(reads: list[Request], key) -> dict:
    """Positions of requests by (task object, split, key(request)), in first-seen order."""
    groups: dict = defaultdict(list)
    for i, r in enumerate(reads):
        groups[(id(r.task), r.split, key(r))].append(i)
    return groups


def _frozen(kwargs: dict) -> str:
    return repr(sorted(kwargs.items(), key=lambda kv: kv[0]))


def _cut(text: str, until: list[str]) -> str:
    """The text up to the first of the stop strings (greedy decoding: as if generation had stopped there)."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
