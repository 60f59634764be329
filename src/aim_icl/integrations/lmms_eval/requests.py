"""lmms-eval's requests (`Instance`s) read into what the model needs: the task object, the document, what to do.

The arguments differ by request type and by model kind, but always end in `(doc_id, task_name, split)` and always
carry one of the task object's bound methods (`doc_to_visual`, `doc_to_messages` or `doc_to_target`), through which
the task object itself is reached:

- simple `generate_until`: `(ctx, gen_kwargs, doc_to_visual, doc_id, task, split)`
- chat `generate_until`: `(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)`
- `loglikelihood`: `(ctx, continuation, doc_to_visual, doc_id, task, split)`, the continuation a string
  (multiple choice: target delimiter + choice) or the task's `doc_to_target`

`ctx` (lmms-eval's text-only few-shot context) is not used: the query's text is the document's `doc_to_text`,
and the demos are the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aim_icl.errors import AIMError


@dataclass
class Request:
    """One request: its task object, document and split, and generation settings or a continuation to score."""

    task: object  # lmms_eval.api.task.ConfigurableTask
    doc_id: int
    split: str
    gen_kwargs: dict = field(default_factory=dict)
    continuation: str | None = None

    @property
    def task_name(self) -> str:
        return self.task.config.task


def read_request(instance) -> Request:
    args = instance.args
    doc_id, _, split = args[-3:]
    task = _task_object(args)
    if instance.request_type == "loglikelihood":
        continuation = args[1]
        if callable(continuation):  # output_type loglikelihood: the document's target
            continuation = continuation(task.dataset[split][doc_id])
        if isinstance(continuation, list):
            continuation = continuation[0]
        return Request(task, int(doc_id), split, continuation=str(continuation))
    gen_kwargs = next((a for a in args if isinstance(a, dict)), {})
    return Request(task, int(doc_id), split, gen_kwargs=dict(gen_kwargs))


def _task_object(args: tuple):
    for arg in args:
        owner = getattr(arg, "__self__", None)
        if owner is not None and hasattr(owner, "doc_to_text") and hasattr(owner, "config"):
            return owner
    raise AIMError(
        "aim_icl cannot find the task object of this request (no bound doc_to_visual/doc_to_messages among its "
        "arguments); it runs lmms-eval's configurable tasks"
    )
