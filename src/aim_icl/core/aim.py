"""AIM: fused virtual tokens replace whole image-text demonstrations in the prompt of a frozen MLLM."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from aim_icl.core.backbone import Backbone, accept_inputs_embeds, resolve_backbone
from aim_icl.core.batching import answer_ids, generate_batch, score_batch
from aim_icl.core.demo import Demo, DemoStates, Query, as_queries, per_query
from aim_icl.core.hub_files import HubSource, hub_source
from aim_icl.core.loading import load_model, load_processor
from aim_icl.core.modes import mode_of
from aim_icl.core.pipeline import PreparePool, default_workers, release_memory
from aim_icl.core.projector import build_projector, load_projector, projector_config, save_projector
from aim_icl.core.projector_config import ProjectorConfig
from aim_icl.core.prompt import Encoded, PromptEncoder, PromptTemplate
from aim_icl.errors import AIMError

logger = logging.getLogger(__name__)

# a copy map fitted on fewer token positions per hidden unit overfits (its held-out error still falls up to here)
POSITIONS_PER_UNIT = 4
DemoLike = Demo | DemoStates | torch.Tensor


class AIM:
    """Wrap a loaded Hugging Face MLLM and its processor for many-shot in-context learning with fused tokens.

    The model stays frozen; `projector` is the only trainable part. `template` says where demos and the query sit
    (default: the processor's chat template when it has one, else a plain `[demos] image text` prompt).
    `layer` picks the hidden states the projector reads (-1: the last layer, after the final norm, as the paper); a
    saved projector records its layer, and `layer` left as None takes it.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        projector: nn.Module | str | Path | HubSource | None = None,
        template: PromptTemplate | None = None,
        layer: int | None = None,
        projector_name: str = "gated",
        projector_options: dict | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        accept_inputs_embeds(model)  # so `model.generate(**aim.build_inputs(...))` works on every family
        self.backbone: Backbone = resolve_backbone(model, processor)
        self.template = template or default_template(processor, self.backbone)
        self.encoder = PromptEncoder(processor, self.backbone.layout, self.template)
        read = -1 if layer is None else layer
        self.projector_config = ProjectorConfig(
            projector_name, self.backbone.signature, projector_options or {}, layer=read
        )
        if projector is None:
            projector = build_projector(self.projector_config)
        elif isinstance(projector, (str, Path, HubSource)):
            projector, self.projector_config = load_projector(projector, self.backbone.signature)
            if layer is not None and layer != self.projector_config.layer:
                raise AIMError(
                    f"the projector in {projector} was trained on layer {self.projector_config.layer}'s hidden "
                    f"states, not layer {layer}; leave layer unset to read the layer it was trained on"
                )
        else:  # a module of the caller's: its own kind and options, whatever `projector_name` says
            self.projector_config = projector_config(projector, self.backbone.signature, read)
        self.layer = self.projector_config.layer
        self.projector: nn.Module = projector.to(self.backbone.device)
        self._pools: dict[int, PreparePool] = {}  # by worker count

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_dir: str | Path,
        projector: str | Path | None = None,
        *,
        revision: str | None = None,
        projector_revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        subfolder: str = "",
        **hf_kwargs,
    ) -> AIM:
        """Load model and processor from a Hub id or directory, as transformers does, then wrap them.

        `revision`, `token`, `cache_dir`, `trust_remote_code`, `local_files_only` and `subfolder` mean what they
        mean to transformers' `from_pretrained` and reach the model and its processor alike (one revision of one
        repo). `projector`: a directory written by `save_projector`, or a Hub repo `org/name` (None: a fresh one);
        `projector_revision`: that repo's branch, tag or commit (or spell it `org/name@revision`); it is fetched
        with the same `token`, `cache_dir` and `local_files_only`, and its config is checked against the backbone
        before its weights are fetched. The keyword arguments `template`, `layer`, `projector_name` and
        `projector_options` are `AIM`'s own; every other keyword goes to the model's `from_pretrained` alone
        (e.g. `dtype`, `device_map`, `attn_implementation`).
        """
        if projector is None and projector_revision is not None:
            raise AIMError(
                f"projector_revision={projector_revision!r} is a Hub projector's, and no projector was given"
            )
        access = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        if projector is not None:  # bad input fails before loading
            projector = hub_source(projector, projector_revision, **access) or projector
        own = ("template", "layer", "projector_name", "projector_options")
        aim_kwargs = {k: hf_kwargs.pop(k) for k in own if k in hf_kwargs}
        hub = {**access, "revision": revision, "trust_remote_code": trust_remote_code, "subfolder": subfolder}
        model = load_model(model_id_or_dir, **hub, **hf_kwargs)
        return cls(model, load_processor(model_id_or_dir, **hub), projector=projector, **aim_kwargs)

    def save_projector(self, directory: str | Path) -> Path:
        return save_projector(self.projector, self.projector_config, directory)

    # -- reading demonstrations -------------------------------------------------------------------------------

    def encode(
        self, demos: Sequence[Demo], batch_size: int = 8, progress: bool = False, workers: int | None = 0
    ) -> list[DemoStates]:
        """Read demos through the frozen backbone: pre-projector hidden states over each demo's text tokens.

        Each demo is read as the model's normal single-image input, the query layout with the demo's text in the
        query's place. Batches are right-padded, so each row matches its one-by-one reading; a batch that runs out
        of device memory is read in halves. `workers`: processes preparing the batches' images and prompts ahead
        of the model (`core.pipeline`; 0: in this thread, None: the machine's default).
        """
        if not demos:
            return []
        batches = [demos[i : i + batch_size] for i in range(0, len(demos), batch_size)]
        prepared = self.pipeline(workers).map(PromptEncoder.prepare_reading, [(b,) for b in batches])
        states: list[DemoStates] = []
        bar = tqdm(total=len(demos), desc="reading demos", unit="demo", disable=not progress)
        for batch, encoded in zip(batches, prepared):
            states += self._read_prepared(batch, encoded)
            bar.update(len(batch))
        bar.close()
        return states

    @torch.no_grad()
    def _read_prepared(self, demos: Sequence[Demo], encoded: Encoded) -> list[DemoStates]:
        """The states of demos whose reading `encoder.prepare_reading(demos)` prepared (in halves on out-of-memory)."""
        try:
            hidden = self._hidden_states(encoded.inputs)  # (B, T, hidden)
        except torch.OutOfMemoryError:
            if len(demos) == 1:
                raise
            release_memory(self.backbone.device)
            half = len(demos) // 2
            logger.warning("out of memory reading %d demos at once: reading halves", len(demos))
            return [
                s for part in (demos[:half], demos[half:]) for s in self._read_prepared(part, self.encoder.prepare_reading(part))
            ]  # fmt: skip
        states = []
        for row, demo in enumerate(demos):
            pos = encoded.slot_positions[row][0]
            token_ids = self.encoder.text_ids(demo.text)
            states.append(DemoStates(hidden[row, pos].detach(), token_ids, demo.text, dict(demo.metadata)))
        return states

    def pipeline(self, workers: int | None = 0) -> PreparePool:
        """The pool of worker processes that prepare this AIM's prompts on the CPU (`core.pipeline`), kept
        across calls; `workers=None` takes the machine's default, 0 prepares in the calling thread."""
        workers = default_workers(self.backbone.device) if workers is None else workers
        # one pool per worker count, none ever closed here: a pool asked for with another count (`fuse` reading
        # demos inline while an evaluation's batches are prepared ahead) must not cancel the other's queued jobs
        if workers not in self._pools:
            self._pools[workers] = PreparePool(self.encoder, workers)
        return self._pools[workers]

    def aggregate(
        self, demo: Demo | Sequence[Demo], batch_size: int = 8
    ) -> torch.Tensor | list[torch.Tensor]:
        """Fused virtual tokens of one demo, (n_text_tokens, embed), or of a list of demos (batched reading)."""
        single = isinstance(demo, Demo)
        fused = self.fuse([demo] if single else list(demo), batch_size=batch_size)
        return fused[0] if single else fused

    def project(
        self, hidden: torch.Tensor, projector: nn.Module | None = None, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the projector to cached hidden states (carries gradients while the projector trains).

        `projector`: the module to apply instead of `self.projector` (a training wrapper around it, e.g. DDP).
        `token_ids`: the demo text's tokens, one per row of `hidden`; needed by a projector that `reads_text`.
        """
        if projector is None:  # a projector passed in is one being trained
            self._warn_if_untrained()
        projector = projector or self.projector
        p = next(projector.parameters())
        inputs = [hidden.to(p.device, p.dtype)]
        if reads_text(projector):
            if token_ids is None:
                raise AIMError(f"{type(self.projector).__name__} reads the demo's token ids: pass token_ids")
            inputs.append(self.backbone.embed(token_ids).to(p.device, p.dtype))
        return projector(*inputs).to(self.backbone.dtype)

    def fuse(
        self, demos: Sequence[DemoLike], batch_size: int = 8, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        """Every demo as its fused tokens, each (n_tokens, embed), in order.

        Fresh `Demo`s are read in one batched pass, every `DemoStates` (fresh or cached) goes through the projector
        in one call, fused tensors pass as they are. `projector` as in `project`.
        """
        fresh = iter(self.encode([d for d in demos if isinstance(d, Demo)], batch_size=batch_size))
        items = [next(fresh) if isinstance(d, Demo) else d for d in demos]
        states = [d for d in items if isinstance(d, DemoStates)]
        if states:
            hidden = torch.cat([s.hidden for s in states])  # (sum n_i, hidden)
            token_ids = torch.cat([s.token_ids for s in states])  # (sum n_i,)
            projected = self.project(hidden, projector, token_ids).split([len(s.hidden) for s in states])
            projected = iter(projected)
            items = [next(projected) if isinstance(d, DemoStates) else d for d in items]
        for item in items:
            if not isinstance(item, torch.Tensor):
                raise AIMError(f"demos must be Demo, DemoStates or fused tensors, not {type(item).__name__}")
        return items

    @torch.no_grad()
    def fit_projector(
        self, demos: Sequence[Demo | DemoStates], ridge: float = 1e-2, batch_size: int = 8
    ) -> None:
        """Fit the residual projector's copy map ê on these demos' hidden states (any images; a few hundred)."""
        if not hasattr(self.projector, "fit_copy"):
            raise AIMError(f"projector {type(self.projector).__name__} has no closed-form copy map to fit")
        read = [d for d in demos if isinstance(d, Demo)]
        states = [d for d in demos if isinstance(d, DemoStates)]
        states += self.encode(read, batch_size=batch_size, progress=len(read) > 4 * batch_size)
        hidden = torch.cat([s.hidden.to(self.backbone.device) for s in states]).float()
        embeds = torch.cat([self.backbone.embed(s.token_ids) for s in states]).float()
        if len(hidden) < POSITIONS_PER_UNIT * self.backbone.hidden_size:
            logger.warning(
                "fitting the copy map on %d token positions for %d hidden units: it will fit these demos but "
                "generalise poorly to others; fit on demos with at least %d text tokens in all",
                len(hidden),
                self.backbone.hidden_size,
                POSITIONS_PER_UNIT * self.backbone.hidden_size,
            )
        self.projector.fit_copy(hidden, embeds, ridge=ridge)

    # -- building prompts -------------------------------------------------------------------------------------

    def build_inputs(
        self, image, text: str, demos: Iterable[DemoLike] = (), mode: str = "aim", target: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments for `model.generate` (or, via `forward`, a training step when `target` is given).

        `aim`: `input_ids` with a placeholder at each fused slot and `inputs_embeds` holding the fused vectors;
        `text`: the demos' text tokens; `icl`: every demo image and text; `zero`: no demos.
        With `target`, its tokens (+ EOS) follow the prompt and `labels` mark them alone.
        """
        return self.build_batch([Query(image, text, list(demos), target)], mode=mode)

    def build_batch(
        self, queries: Sequence[Query], mode: str = "aim", eos: bool = True
    ) -> dict[str, torch.Tensor]:
        """Batched `build_inputs`, one row per `Query` (right-padded).

        Targets end with EOS unless `eos` is False (scoring candidate answers). The prompts are encoded on the CPU
        (`encoder.prepare`), then the demos' fused vectors are written in on the model's device (`finish`).
        """
        fused = None
        if mode_of(mode).fused:  # every demo of the batch fused at once: one reading pass, one projector call
            vectors = iter(self.fuse([d for q in queries for d in q.demos]))
            fused = [[next(vectors) for _ in q.demos] for q in queries]
            queries = [replace(q, demos=row) for q, row in zip(queries, fused)]
        return self.finish(self.encoder.prepare(queries, mode, eos), fused)

    def finish(self, encoded: Encoded, fused: Sequence[Sequence[torch.Tensor]] | None = None) -> dict:
        """Model inputs on the device from prompts the encoder prepared: `fused[row][j]` (aim mode) is written at
        row's j-th demo slot in `inputs_embeds`. Without fused vectors, exactly the model's normal inputs."""
        device = self.backbone.device
        inputs = {k: v.to(device) for k, v in encoded.inputs.items()}
        if not fused or not any(fused):
            return inputs
        embeds = self.backbone.embed(inputs["input_ids"]).clone()  # (B, T, embed)
        for row, vectors in enumerate(fused):
            for pos, vector in zip(encoded.slot_positions[row], vectors, strict=True):
                if vector.ndim != 2 or vector.shape[-1] != embeds.shape[-1]:
                    raise AIMError(
                        f"a fused demo must be (n_tokens, {embeds.shape[-1]}), got {tuple(vector.shape)}"
                    )
                embeds[row, pos.to(device)] = vector.to(device, embeds.dtype)
        inputs["inputs_embeds"] = embeds
        return inputs

    def forward(self, inputs: dict[str, torch.Tensor], **kwargs):
        """A forward pass on `build_inputs` output (e.g. a training step with `labels`).

        Most families refuse `input_ids` with `inputs_embeds`: they are dropped, and M-RoPE families get explicit
        positions computed from them first.
        """
        inputs = dict(inputs)
        if "inputs_embeds" in inputs:
            if self.backbone.rope_index is not None:
                inputs["position_ids"] = self.backbone.positions(inputs)
            inputs.pop("input_ids")
        return self.model(**inputs, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        image,
        text: str | Sequence[str] | None = None,
        demos: Iterable[DemoLike] | Sequence[Sequence[DemoLike]] = (),
        mode: str = "aim",
        max_new_tokens: int = 32,
        batch_size: int = 8,
        **generate_kwargs,
    ) -> str | list[str]:
        """Answer one query, or a list of queries batched; returns the new tokens only, decoded (greedy unless
        `generate_kwargs`, which go to `model.generate`, say otherwise).

        One query: `generate(image, text, demos)` or `generate(Query(image, text, demos))` -> str. Several:
        `generate([Query, ...])` or `generate(images, texts, demos)` with `demos` one list shared by every query
        or one list per query -> list[str], in order, equal to answering each alone. Queries go through the model
        `batch_size` at a time, in left-padded batches (`core.batching`, as the evaluation harness runs them).
        With `num_return_sequences=n`, each query's answer is a list of n.
        """
        queries, single = as_queries(image, text, demos)
        n = generate_kwargs.get("num_return_sequences", 1)
        answers: list = [None] * len(queries)
        for rows in _batches(queries, batch_size):
            inputs = self._prompts([queries[i] for i in rows], mode)
            texts = generate_batch(self, [inputs], max_new_tokens=max_new_tokens, **generate_kwargs)
            for j, i in enumerate(rows):
                answers[i] = texts[j] if n == 1 else texts[j * n : (j + 1) * n]
        return answers[0] if single else answers

    @torch.no_grad()
    def score(
        self,
        image,
        text: str | Sequence[str] | None = None,
        candidates: Sequence[str] | Sequence[Sequence[str]] = (),
        demos: Iterable[DemoLike] | Sequence[Sequence[DemoLike]] = (),
        mode: str = "aim",
        batch_size: int = 8,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Log-likelihood of each candidate answer after the prompt, summed over its tokens: (n_candidates,).

        For closed answer sets (classification, ROC-AUC from yes/no scores). Queries are given as to `generate`;
        for several, `candidates` is one list for every query or one list per query, and the result one tensor per
        query. Each prompt is read once for all its candidates (`core.batching.score_batch`).
        """
        queries, single = as_queries(image, text, demos)
        answers = [answer_ids(self, q.text, c) for q, c in zip(queries, per_query(candidates, len(queries)))]
        scores: list = [None] * len(queries)
        for rows in _batches(queries, batch_size):
            inputs = self._prompts([queries[i] for i in rows], mode)
            for i, values in zip(rows, score_batch(self, [inputs], [answers[i] for i in rows])):
                scores[i] = values
        return scores[0] if single else scores

    @torch.no_grad()
    def generate_from(self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 32, **kwargs) -> str:
        """Answer from one query's inputs that `build_inputs` made (greedy by default); new tokens only, decoded."""
        return generate_batch(self, [inputs], max_new_tokens=max_new_tokens, **kwargs)[0]

    # -- internals ----------------------------------------------------------------------------------------------

    def _prompts(self, queries: Sequence[Query], mode: str) -> dict[str, torch.Tensor]:
        """The prompts of queries to answer: a query's training target, if it has one, is no part of them."""
        return self.build_batch([replace(q, target=None) for q in queries], mode)

    @torch.no_grad()
    def _hidden_states(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.backbone.device) for k, v in inputs.items()}
        out = self.model(**inputs, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[self.layer]

    def _warn_if_untrained(self) -> None:
        """Once per AIM, where `aim` mode runs on a projector nobody trained: say what it gives instead."""
        if getattr(self, "_warned_untrained", False):
            return
        gate = getattr(self.projector, "gate", None)  # gated projector: a zero gate is exactly `text` mode
        if isinstance(gate, torch.Tensor) and not bool(gate.any()):
            what = "`aim` mode runs as `text` mode (each fused token is its word's embedding)"
        elif not bool(getattr(self.projector, "fitted", True)):
            what = "fused tokens are zero (the residual projector's copy map is unfitted: aim.fit_projector)"
        else:
            return
        self._warned_untrained = True
        logger.warning(
            "no trained projector: %s; load one with --projector DIR_OR_REPO or from_pretrained(..., projector=)",
            what,
        )


def reads_text(projector: nn.Module) -> bool:
    """Whether a projector (or a training wrapper around one, e.g. DDP) takes the demo text's embeddings too."""
    return getattr(getattr(projector, "module", projector), "reads_text", False)


def _batches(queries: Sequence[Query], size: int) -> list[list[int]]:
    """The queries' indices in batches of at most `size`; queries with an image and without one apart (a
    processor call takes prompts of one kind)."""
    if size < 1:
        raise AIMError(f"batch_size must be at least 1, not {size}")
    kinds: dict[bool, list[int]] = {}
    for i, query in enumerate(queries):
        kinds.setdefault(query.image is None, []).append(i)
    return [rows[s : s + size] for rows in kinds.values() for s in range(0, len(rows), size)]


def default_template(processor, backbone: Backbone) -> PromptTemplate:
    """The processor's chat template when it has one (instruct models), else a plain prompt (base models)."""
    marker = backbone.family.image_marker or processor.image_token
    if getattr(processor, "chat_template", None):
        return PromptTemplate.from_chat_template(processor, marker)
    return PromptTemplate(image=marker)
