"""Many queries through the model at once: collate `aim.build_inputs` / `build_batch` outputs, generate, score.

The one generation path: `AIM.generate` and `AIM.score`, the evaluation harness (`eval.answer`) and the server
all answer through `generate_batch` / `generate_reading` and score through `score_batch` / `score_read`. It takes
the `AIM` as an argument and imports nothing of it (`AIMLike`), so `core.aim` can call it without a circle.

Inputs may come from one call for many queries or from separate calls (each its own processor call, its own
demos), so a batch can mix prompts of any length, image count and mode; this module only stacks them. Per-token tensors (`input_ids`, `inputs_embeds`, `attention_mask`,
`token_type_ids`, `mm_token_type_ids`, `labels`) are padded along the sequence, on the left by default: every row
ends in the last column, where generation appends and where scored answers sit. Every other tensor (`pixel_values`, `image_sizes`, `image_grid_thw`, `pixel_attention_mask`, ...) is concatenated
along its first dimension, zero-padded in its other dimensions where rows differ: that is what the families'
processors do themselves (LLaVA-Next pads patches, Idefics3 pads images, Pixtral pads pixels; the models skip the
padding by `image_sizes` or by all-zero images).

Positions follow the attention mask: `generate` derives them from it (M-RoPE families through the model's rope
index function, which reads the mask), so a left-padded row gets the positions it has alone; for a forward
(scoring), `collate(..., positions=True)` adds them explicitly. Padded rows give the one-by-one logits up to float
rounding: masked attention and batched matrix products sum in another order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from aim_icl.core.backbone import Backbone
from aim_icl.core.prompt import PromptEncoder, is_per_token
from aim_icl.errors import AIMError


class AIMLike(Protocol):
    """What batching uses of an `aim_icl.AIM` (whose `generate` and `score` call this module)."""

    model: nn.Module
    backbone: Backbone
    encoder: PromptEncoder

    def forward(self, inputs: dict[str, torch.Tensor], **kwargs) -> Any: ...


# The fill of each per-token key in padded positions (others: 0); `input_ids` takes the encoder's pad id.
_FILL = {"labels": -100}


def collate(
    aim: AIMLike,
    inputs_list: Sequence[dict[str, torch.Tensor]],
    padding_side: str = "left",
    positions: bool = False,
) -> dict[str, torch.Tensor]:
    """One padded batch from per-query inputs (each a `build_inputs` / `build_batch` output of one or more rows).

    Rows keep their order; a multi-row input's own padding moves to `padding_side` too. `positions=True` adds
    `position_ids` that count each row's real tokens from 0 (the rope index positions for M-RoPE families), for a
    `model(...)` call on a left-padded batch.
    """
    if padding_side not in ("left", "right"):
        raise AIMError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if not inputs_list:
        raise AIMError("nothing to collate: give at least one query's inputs")
    if any("inputs_embeds" in inputs for inputs in _same_keys(inputs_list)):
        inputs_list = [_with_embeds(aim, inputs) for inputs in inputs_list]
    inputs_list = [_align(inputs, padding_side) for inputs in inputs_list]
    width = max(inputs["input_ids"].shape[1] for inputs in inputs_list)
    batch = {}
    for key in inputs_list[0]:
        values = [inputs[key] for inputs in inputs_list]
        if is_per_token(inputs_list[0], key):
            batch[key] = torch.cat([_pad_tokens(aim, key, v, width, padding_side) for v in values])
        else:
            batch[key] = torch.cat(_pad_trailing(values))
    if positions:
        batch["position_ids"] = _positions(aim, batch)
    return batch


@torch.no_grad()
def generate_batch(
    aim: AIMLike, inputs_list: Sequence[dict[str, torch.Tensor]], **generate_kwargs
) -> list[str]:
    """Answer every query in one left-padded `generate` call; new tokens only, decoded as `aim.generate` does.

    `generate_kwargs` go to `model.generate` (greedy and `max_new_tokens=32` unless given; sampling settings, a
    streamer, stopping criteria pass through). With `num_return_sequences=n`, each query's n answers follow each
    other. Greedy answers equal one-by-one answers up to float rounding in masked attention.
    """
    return generate_reading(aim, inputs_list, keep=False, **generate_kwargs)[0]


@dataclass
class ReadPrompts:
    """A left-padded batch of prompts as the model read them: inputs (with positions), each row's next-token
    log-probabilities (B, vocab), and the KV cache over the prompts (what scoring candidates needs)."""

    batch: dict[str, torch.Tensor]
    first: torch.Tensor
    cache: Any


@torch.no_grad()
def generate_reading(
    aim: AIMLike, inputs_list: Sequence[dict[str, torch.Tensor]], keep: bool = True, **generate_kwargs
) -> tuple[list[str], ReadPrompts | None]:
    """`generate_batch`, also keeping the prompts as generation read them (`keep`, greedy only): candidates can
    then be scored on them (`score_read`) without reading the prompts again. None where the cache cannot be cut
    back to the prompts (sliding-window layers)."""
    generate_kwargs.setdefault("max_new_tokens", 32)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", aim.encoder.pad_id)
    if keep:
        generate_kwargs.update(return_dict_in_generate=True, output_logits=True)
    batch = collate(aim, inputs_list, padding_side="left")
    output = aim.model.generate(**batch, **generate_kwargs)
    sequences = getattr(output, "sequences", output)  # a dict with return_dict_in_generate=True
    width = batch["input_ids"].shape[1]
    new_tokens = sequences[:, width:]  # (B * n, new)
    config = generate_kwargs.get("generation_config")
    stops = eos_ids(aim, generate_kwargs.get("eos_token_id") or getattr(config, "eos_token_id", None))
    pad = generate_kwargs["pad_token_id"]
    texts = [_decode(aim, row, stops, pad) for row in new_tokens]
    cache = getattr(output, "cache", None) if keep else None
    if cache is None or not getattr(cache, "is_croppable", True) or len(sequences) != len(batch["input_ids"]):
        return texts, None
    extra = cache.get_seq_length() - width
    if extra:
        cache.crop(-extra)  # the prompts alone: the generated tokens go
    batch["position_ids"] = _positions(aim, batch)
    return texts, ReadPrompts(batch, output.logits[0].float().log_softmax(-1), cache)


def answer_ids(aim: AIMLike, text: str, candidates: Sequence[str]) -> list[torch.Tensor]:
    """Each candidate answer's tokens as they follow the query `text` in the prompt (what generation produces)."""
    return [aim.encoder.query_answer_ids(text, c) for c in candidates]


@torch.no_grad()
def score_batch(
    aim: AIMLike,
    prompts: Sequence[dict[str, torch.Tensor]],
    answers: Sequence[Sequence[torch.Tensor]],
    max_rows: int | None = None,
) -> list[torch.Tensor]:
    """Summed log-likelihood of each prompt row's candidate answers: `[(n_i,) for each row]`.

    `prompts`: `build_inputs` / `build_batch` outputs (one or more rows each); `answers[i]`: the candidates' tokens
    (`answer_ids`) for row i of all the prompts' rows in order. The prompts go through the model once, left-padded
    with their own positions and keeping their KV cache; each candidate then reads only its own tokens on a copy
    of its prompt's cache. At most `max_rows` candidates per pass (at least one whole prompt). Equal to scoring
    each candidate on the full prompt up to float rounding.
    """
    rows = [len(p["input_ids"]) for p in prompts]
    if sum(rows) != len(answers):
        raise AIMError(f"give one list of candidates per prompt row: {sum(rows)} rows, {len(answers)} lists")
    starts = [sum(rows[:i]) for i in range(len(rows))]
    per_prompt = [list(answers[start : start + n]) for start, n in zip(starts, rows)]
    scores: list[torch.Tensor] = []
    for group in _groups(list(zip(prompts, per_prompt)), max_rows):
        scores += _score_group(aim, [p for p, _ in group], [a for _, rows in group for a in rows])
    return scores


@torch.no_grad()
def score_read(
    aim: AIMLike, read: ReadPrompts, answers: Sequence[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    """`score_batch` on prompts generation already read (`generate_reading`): `answers[i]` for row i. Uses up
    `read`'s cache."""
    return _score_answers(aim, read.batch, read.first, read.cache, answers)


def _score_group(
    aim: AIMLike, prompts: list[dict], answers: list[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    batch = collate(aim, prompts, padding_side="left", positions=True)
    out = aim.forward(batch, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, vocab): each prompt's next-token distribution
    return _score_answers(aim, batch, first, out.cache, answers)


def _score_answers(
    aim: AIMLike, batch: dict, first: torch.Tensor, cache, answers: Sequence[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    """Each row's candidates read on a copy of its prompt's cache (`first`: the prompts' next-token log-probs)."""
    device = first.device
    owner = torch.tensor([b for b, ids in enumerate(answers) for _ in ids], device=device)  # (R,)
    ids = torch.nn.utils.rnn.pad_sequence(
        [t.to(device) for ids in answers for t in ids], batch_first=True, padding_value=aim.encoder.pad_id
    )  # (R, L)
    lengths = torch.tensor([len(t) for ids in answers for t in ids], device=device)  # (R,)
    cache.batch_select_indices(owner)  # a copy of its prompt's cache for every candidate
    logits = aim.model(cache=cache, **_answer_inputs(aim, batch, owner, ids, lengths)).logits.float()
    logprobs = torch.cat([first[owner, None], logits[:, :-1].log_softmax(-1)], dim=1)  # (R, L, vocab)
    per_token = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (R, L): token t given the tokens before
    sums = (per_token * (torch.arange(ids.shape[1], device=device) < lengths[:, None])).sum(-1).cpu()
    return list(sums.split([len(ids) for ids in answers]))


def _answer_inputs(
    aim: AIMLike, batch: dict, owner: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
) -> dict:
    """Model inputs for the answers' tokens after their cached prompts: mask over prompt and answer, positions
    counting on from the prompt's last one (all M-RoPE sections alike, as for text after an image), and every other
    per-token input as `PromptEncoder` extends it for a target (the prompt's last value, or the family's)."""
    width = ids.shape[1]
    steps = torch.arange(width, device=ids.device)
    mask = torch.cat([batch["attention_mask"][owner], (steps < lengths[:, None]).long()], dim=1)  # (R, P + L)
    prompt_positions = batch["position_ids"]  # (B, P), or (sections, B, P) for M-RoPE
    last = prompt_positions.amax(-1) if prompt_positions.ndim == 2 else prompt_positions.amax(dim=(0, 2))
    positions = (last[owner] + 1)[:, None] + steps  # (R, L)
    if prompt_positions.ndim == 3:
        positions = positions.expand(prompt_positions.shape[0], -1, -1)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    overrides = aim.backbone.family.target_values
    for key, value in batch.items():
        if key not in inputs and key not in ("inputs_embeds", "labels") and is_per_token(batch, key):
            tail = value[owner, -1:].expand(-1, width)  # left-padded: column -1 is each prompt's last token
            inputs[key] = torch.full_like(tail, overrides[key]) if key in overrides else tail
    return inputs


# -- internals ----------------------------------------------------------------------------------------------


def _same_keys(inputs_list: Sequence[dict]) -> Sequence[dict]:
    keys = {k for inputs in inputs_list for k in inputs if k != "inputs_embeds"}
    for inputs in inputs_list:
        missing = keys - set(inputs)
        if missing:
            raise AIMError(
                f"queries of one batch need the same inputs; one lacks {', '.join(sorted(missing))} "
                "(give every query an image, or none)"
            )
    return inputs_list


def _with_embeds(aim: AIMLike, inputs: dict) -> dict:
    """When any query carries fused vectors, the others get their plain embeddings (what the model would compute)."""
    if "inputs_embeds" in inputs:
        return inputs
    return {**inputs, "inputs_embeds": aim.backbone.embed(inputs["input_ids"])}


def _align(inputs: dict, side: str) -> dict:
    """Move the padding of a multi-row input (`build_batch` pads on the right) to `side`, row by row."""
    mask = inputs["attention_mask"].bool()  # (B, T)
    if len(mask) == 1 or mask.all():
        return inputs
    length = mask.shape[1]
    ends = length - mask.flip(-1).long().argmax(-1)  # (B,): one past each row's last real token
    starts = mask.long().argmax(-1)  # (B,): each row's first real token
    shift = (length - ends) if side == "left" else -starts  # left: real tokens move to the end
    index = (torch.arange(length, device=mask.device)[None] - shift[:, None]) % length  # (B, T)
    out = dict(inputs)
    for key, value in inputs.items():
        if is_per_token(inputs, key):
            gather = index.view(*index.shape, *[1] * (value.ndim - 2)).expand_as(value)
            out[key] = value.gather(1, gather)
    return out


def _pad_tokens(aim: AIMLike, key: str, value: torch.Tensor, width: int, side: str) -> torch.Tensor:
    """Pad (B, T, ...) to (B, width, ...) along T; padded embeddings are the pad token's own."""
    missing = width - value.shape[1]
    if missing == 0:
        return value
    if key == "inputs_embeds":
        pad_ids = torch.full((value.shape[0], missing), aim.encoder.pad_id, device=value.device)
        pad = aim.backbone.embed(pad_ids).to(value.dtype)
    else:
        fill = aim.encoder.pad_id if key == "input_ids" else _FILL.get(key, 0)
        pad = value.new_full((value.shape[0], missing, *value.shape[2:]), fill)
    return torch.cat([pad, value] if side == "left" else [value, pad], dim=1)


def _pad_trailing(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad every dimension but the first to the largest size among `values`."""
    if len({v.ndim for v in values}) > 1:
        raise AIMError("queries of one batch have image inputs of different ranks; batch them separately")
    sizes = [max(v.shape[d] for v in values) for d in range(1, values[0].ndim)]
    out = []
    for v in values:
        pad = [p for d in reversed(range(1, v.ndim)) for p in (0, sizes[d - 1] - v.shape[d])]
        out.append(F.pad(v, pad) if any(pad) else v)
    return out


def _positions(aim: AIMLike, batch: dict) -> torch.Tensor:
    if aim.backbone.rope_index is not None:
        return aim.backbone.positions(batch)  # (3, B, T): the rope index reads the attention mask
    mask = batch["attention_mask"].long()
    return (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T)


def _groups(prompts: list[tuple[dict, list]], max_rows: int | None) -> list[list[tuple[dict, list]]]:
    """Consecutive prompts with at most `max_rows` answers in all (a prompt with more alone)."""
    groups: list[list[tuple[dict, list]]] = []
    rows = 0
    for query in prompts:
        n = sum(len(a) for a in query[1])
        if not groups or (max_rows is not None and rows + n > max_rows):
            groups.append([])
            rows = 0
        groups[-1].append(query)
        rows += n
    return groups


def eos_ids(aim: AIMLike, eos=None) -> set[int]:
    """Every token that ends an answer: `eos` when given (a `generate` argument), else the generation config's
    end tokens and the tokenizer's."""
    if eos is None:
        eos = aim.model.generation_config.eos_token_id
        extra = aim.encoder.tokenizer.eos_token_id
    else:
        extra = None
    if torch.is_tensor(eos):
        eos = eos.tolist()
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return {int(i) for i in (ids if extra is None else ids | {extra})}


def _decode(aim: AIMLike, tokens: torch.Tensor, stops: set[int], pad_id: int) -> str:
    """A row's tokens up to its first end-of-sequence token; the pads `generate` writes after a row finished go."""
    ids = tokens.tolist()
    end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
    ids = ids[:end]
    if end == len(tokens):  # stopped by length or a stopping criterion: the fill after it is pad tokens
        while ids and ids[-1] == pad_id and pad_id not in stops:
            ids.pop()
    return aim.encoder.tokenizer.decode(ids, skip_special_tokens=True).strip()
