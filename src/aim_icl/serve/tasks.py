"""Named tasks a client registers once and queries many times: fixed demos (prefix-cached where the mode allows)
or `k` demos picked per query from the bank. `prepare_task` only validates and decodes images (no model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aim_icl.core.demo import Demo
from aim_icl.core.modes import mode_of
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.schemas import TaskRequest
from aim_icl.serve.templates import check_template


@dataclass
class ServedTask:
    """A registered task: fixed demos (with a prefix cache where the mode allows) or per-query selection."""

    name: str
    mode: str
    strategy: str
    k: int
    template: str
    demo_keys: list[str]
    demos: list = field(default_factory=list)  # fixed tasks: Demo (icl) or bank states
    cache: object | None = None  # PrefixCache for fixed demos in aim/text/zero mode


@dataclass
class TaskSpec:
    """A validated task request with its uploaded images decoded."""

    request: TaskRequest
    uploaded: list[Demo]


def prepare_task(request: TaskRequest, policy: ImagePolicy, max_demos: int) -> TaskSpec:
    """Check a task request and decode its uploaded images (no model, no bank)."""
    check_template(request.template, ("question",), required=("question",))
    count = len(request.demos) + len(request.demo_keys)
    rules = mode_of(request.mode)
    if request.strategy == "fixed" and not rules.demos and count:
        raise RequestError("mode 'zero' takes no demos")
    if request.strategy != "fixed" and (request.k is None or not rules.demos or rules.demo_images):
        raise RequestError(f"strategy {request.strategy!r} needs k and mode 'aim' or 'text'")
    if rules.demo_images and request.demo_keys:
        raise RequestError("mode 'icl' needs uploaded demos with images; bank keys hold no image")
    if max(count, request.k or 0) > max_demos:
        raise RequestError(f"too many demonstrations: at most {max_demos} per task", "too_large")
    uploaded = [
        Demo(None if d.image is None else fetch_image(d.image, policy), d.text) for d in request.demos
    ]
    return TaskSpec(request, uploaded)
