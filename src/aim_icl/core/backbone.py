"""What AIM needs to know about a backbone, read from the model and processor; families state only differences.

One generic path serves every model that follows the usual image-placeholder convention (a processor that expands
an image marker in the text into image tokens, a config with the image token id, `get_input_embeddings`).
A family entry in `FAMILIES` says only what differs from that convention.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from aim_icl.core.projector_config import BackboneSignature
from aim_icl.errors import AIMError
from aim_icl.registry import Registry


@dataclass(frozen=True)
class Family:
    """How a model family differs from the generic convention."""

    image_marker: str | None = None  # text placing one image in a plain prompt (None: processor.image_token)
    images_first: bool = False  # the processor moves every image in front of the text
    target_values: dict[str, int] = field(default_factory=dict)  # per-token inputs for appended target tokens


FAMILIES: Registry[Family] = Registry("model family")
GENERIC = Family()

_QWEN = Family(image_marker="<|vision_start|><|image_pad|><|vision_end|>")
for _name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
    FAMILIES.register(_name, _QWEN)
# PaliGemma's processor puts every image first and BOS after the last; the answer (suffix) is causal, typed 1.
FAMILIES.register("paligemma", Family(images_first=True, target_values={"token_type_ids": 1}))


@dataclass(frozen=True)
class TokenLayout:
    """What building a prompt needs to know of a backbone: plain data, so a prompt encoder holding it pickles
    (worker processes prepare prompts with no model)."""

    family: Family
    image_token_id: int
    max_length: int | None  # the LM's context; None: unknown

    def room(self, prompt_tokens: int) -> int | None:
        """The one context rule: how many new tokens fit after a prompt of `prompt_tokens` (negative: the prompt
        itself does not fit; None: the context is unknown, so anything fits)."""
        return None if self.max_length is None else self.max_length - prompt_tokens

    def fits(self, prompt_tokens: int, new_tokens: int = 0) -> bool:
        """Whether a prompt and `new_tokens` of answer fit the context."""
        room = self.room(prompt_tokens)
        return room is None or room >= new_tokens


@dataclass
class Backbone:
    """The frozen MLLM plus what the generic path reads off it."""

    model: nn.Module
    layout: TokenLayout  # family, image token and context: the prompt encoder holds this same object
    hidden_size: int  # width of the LM hidden states
    embed_size: int  # width of the LM input embeddings
    signature: BackboneSignature
    rope_index: Callable | None  # M-RoPE position function (Qwen-VL style), None for 1-D positions

    @property
    def family(self) -> Family:
        return self.layout.family

    @property
    def image_token_id(self) -> int:
        return self.layout.image_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings exactly as the model makes them (Gemma's sqrt(d) scaling included)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Explicit M-RoPE positions from `input_ids`, for a forward that must drop them."""
        params = inspect.signature(self.rope_index).parameters
        kwargs = {k: v for k, v in inputs.items() if k in params}
        position_ids, _ = self.rope_index(**kwargs)
        return position_ids


def resolve_backbone(model: nn.Module, processor) -> Backbone:
    config = model.config
    family = FAMILIES.get(config.model_type) if config.model_type in FAMILIES else GENERIC
    image_token_id = _first_attr(config, "image_token_id", "image_token_index")
    missing = [
        what
        for what, ok in (
            ("config.image_token_id", image_token_id is not None),
            ("model.get_input_embeddings()", _has_embeddings(model)),
            ("processor.tokenizer", getattr(processor, "tokenizer", None) is not None),
            (
                "an image marker (processor.image_token)",
                family.image_marker or getattr(processor, "image_token", None),
            ),
        )
        if not ok
    ]
    if missing:
        raise AIMError(
            f"{type(model).__name__} does not follow the image-placeholder convention AIM needs: missing "
            f"{', '.join(missing)}; register a Family for model_type {config.model_type!r}"
        )
    text_config = config.get_text_config()
    embed_size = model.get_input_embeddings().embedding_dim
    hidden_size = text_config.hidden_size
    inner = getattr(model, "model", model)
    return Backbone(
        model=model,
        layout=TokenLayout(
            family, int(image_token_id), getattr(text_config, "max_position_embeddings", None)
        ),
        hidden_size=hidden_size,
        embed_size=embed_size,
        signature=BackboneSignature(
            model_type=config.model_type,
            hidden_size=hidden_size,
            embed_size=embed_size,
            name_or_path=getattr(config, "_name_or_path", "") or "",
        ),
        rope_index=getattr(inner, "get_rope_index", None) or getattr(model, "get_rope_index", None),
    )


def accept_inputs_embeds(model: nn.Module) -> None:
    """Let `model.generate` take `inputs_embeds` where the class's `prepare_inputs_for_generation` hides it.

    `generate` looks for an `inputs_embeds` parameter in that method's signature; the overrides of PaliGemma and
    Gemma 3 take it through `**kwargs` and pass it on to the base implementation, which uses it on the first
    step. The model instance gets a method with the parameter spelled out, once (a bound method: a deep copy of
    the model rebinds it to the copy).
    """
    if "inputs_embeds" not in inspect.signature(model.prepare_inputs_for_generation).parameters:
        model.prepare_inputs_for_generation = types.MethodType(_prepare_with_embeds, model)


def _prepare_with_embeds(self, input_ids, inputs_embeds=None, **kwargs):
    return type(self).prepare_inputs_for_generation(self, input_ids, inputs_embeds=inputs_embeds, **kwargs)


def _first_attr(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _has_embeddings(model: nn.Module) -> bool:
    try:
        return isinstance(model.get_input_embeddings(), nn.Module)
    except (AttributeError, NotImplementedError):
        return False
