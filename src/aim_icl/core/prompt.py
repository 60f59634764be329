"""Prompts as parts (text, images, token slots), encoded through the model's own processor.

A prompt is a list of parts: strings, images, and `Slots` that stand for a demo's text tokens. The processor sees
the text with one marker token per `Slots` (so it expands images exactly as usual); each marker is then widened into
the slot's tokens, and every per-token tensor the processor returned (attention mask, token types) is widened with
it. In `text` mode the slots hold the demo's own token ids; in `aim` mode they hold a placeholder id whose input
embedding is then overwritten with a fused vector. Both modes therefore share one token layout.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from aim_icl.core.backbone import TokenLayout
from aim_icl.core.demo import Demo, DemoStates, Query, load_image
from aim_icl.core.modes import mode_of
from aim_icl.errors import AIMError

SLOT_TOKEN = "<|aim_slot|>"
TOKENS_KEPT = 65536  # texts whose tokens an encoder keeps (then it starts over)
_TEXT = "AIMQUERYTEXTSENTINEL"


@dataclass
class Slots:
    """Positions that hold one demo's text: its token ids, and optionally the vectors to write there."""

    ids: torch.Tensor  # (n,)
    embeds: torch.Tensor | None = None  # (n, embed); None keeps the ids' own embeddings


Part = str | Image.Image | Slots


@dataclass(frozen=True)
class PromptTemplate:
    """Where demos and the query sit: `prefix [demo separator]* image text suffix`.

    `image` is the text that places one image (the family's marker plus whatever the chat template puts after it).
    Demos in `text`/`aim` mode are their text tokens; in `icl` mode each is `image` + its text.
    """

    prefix: str = ""
    image: str = "<image>"
    suffix: str = ""
    separator: str = "\n"
    add_special_tokens: bool = True  # False for chat templates, which render BOS and the like themselves

    @classmethod
    def from_chat_template(cls, processor, image_marker: str, separator: str = "\n") -> PromptTemplate:
        """Read prefix, image text and suffix off the processor's chat template (one user turn: image, text)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _TEXT}]}]
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        before, found, suffix = rendered.partition(_TEXT)
        start = before.find(image_marker)
        if not found or start < 0:
            raise AIMError(
                f"cannot find the image marker {image_marker!r} in this chat template's output; "
                "pass a PromptTemplate explicitly"
            )
        return cls(before[:start], before[start:], suffix, separator, add_special_tokens=False)


def query_parts(template: PromptTemplate, image, text: str, demos: list[list[Part]]) -> list[Part]:
    """`prefix [demo separator]* [image] text suffix` as parts (demos already rendered as parts)."""
    parts: list[Part] = [template.prefix]
    for demo in demos:
        parts += [*demo, template.separator]
    if image is not None:
        parts.append(image)
    return [*parts, text, template.suffix]


@dataclass
class Encoded:
    """Prompts encoded on the CPU, before any fused vector is written."""

    inputs: dict[
        str, torch.Tensor
    ]  # processor outputs, widened, right-padded; `labels` when targets were given
    slot_positions: list[list[torch.Tensor]]  # [row][slot] -> positions (n,) of that Slots part
    lengths: list[int]  # each row's real length (its prompt tokens, the target's included)


class PromptTooLong(AIMError):
    """A prompt longer than the model's context: refused rather than run past the positions it was trained on."""

    def __init__(self, length: int, context: int):
        super().__init__(
            f"prompt is {length} tokens but the model's context is {context}; use fewer or shorter demos"
        )
        self.length, self.context = length, context


class PromptEncoder:
    """Turns queries into model inputs on the CPU, through a private copy of the processor (one added marker token).

    It holds no model (of the backbone it knows only the `TokenLayout`), so it pickles: worker processes prepare
    prompts with it ahead of the model (`core.pipeline`). In `aim` mode every demo's slots hold the placeholder id;
    the fused vectors are written there afterwards, on the model's device (`AIM.finish`).
    """

    def __init__(self, processor, layout: TokenLayout, template: PromptTemplate):
        self.processor = copy.deepcopy(processor)  # the marker token must not leak into the user's tokenizer
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.add_tokens([SLOT_TOKEN], special_tokens=True)
        self.slot_id = self.tokenizer.convert_tokens_to_ids(SLOT_TOKEN)
        self.layout = layout
        self.template = template
        self.placeholder_id = _placeholder_id(self.tokenizer, layout.image_token_id)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.placeholder_id
        )
        # tokens of demo texts, and of answers after their context: both recur across cells and queries
        self._ids: dict[str | tuple[str, str], torch.Tensor] = {}

    def text_ids(self, text: str) -> torch.Tensor:
        """A demo text's own tokens: no BOS or other tokens a processor adds around it."""
        if not text or not text.strip():
            raise AIMError("demo text is empty; every demonstration needs some text")
        return self._kept(text, lambda: self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, context: str, answer: str) -> torch.Tensor:
        """An answer's tokens as they follow `context` (what generation would produce), not as tokenized alone.

        "Answer:" is followed by " yes" (the space belongs to the answer's first token in BPE vocabularies); a
        context ending in whitespace (a chat turn's opening) is followed by the answer as written.
        """
        if not answer.strip():
            raise AIMError("the target answer is empty; give some text to score or train on")
        return self._kept((context, answer), lambda: self._answer_ids(context, answer))

    def _answer_ids(self, context: str, answer: str) -> list[int]:
        if context and not context[-1].isspace() and not answer[0].isspace():
            answer = " " + answer
        ids = self.tokenizer(context + answer, add_special_tokens=False)["input_ids"]
        prefix = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        if ids[: len(prefix)] != prefix or len(ids) == len(prefix):  # a merge across the boundary
            ids, prefix = self.tokenizer(answer.lstrip(), add_special_tokens=False)["input_ids"], []
        return ids[len(prefix) :]

    def _kept(self, key: str | tuple[str, str], tokenize) -> torch.Tensor:
        ids = self._ids.get(key)
        if ids is None:
            ids = torch.tensor(tokenize(), dtype=torch.long)
            # the image token in a text makes the model look for an image that is not there
            if (ids == self.layout.image_token_id).any():
                text = key if isinstance(key, str) else key[1]
                marker = self.tokenizer.convert_ids_to_tokens(self.layout.image_token_id)
                raise AIMError(
                    f"the text {text[:60]!r} holds the image token {marker!r}; remove it: only images place it"
                )
            if len(self._ids) >= TOKENS_KEPT:
                self._ids.clear()
            self._ids[key] = ids
        return ids

    def query_answer_ids(self, text: str, answer: str, eos: bool = False) -> torch.Tensor:
        """An answer's tokens after the query `text` in the prompt (+ EOS, for a training target)."""
        ids = self.answer_ids(text + self.template.suffix, answer)
        eos_id = self.tokenizer.eos_token_id
        return ids if eos_id is None or not eos else torch.cat([ids, torch.tensor([eos_id])])

    def prepare(
        self, queries: Sequence[Query], mode: str, eos: bool = True, check_length: bool = True
    ) -> Encoded:
        """The queries' prompts in `mode` (one processor call): images loaded, demos laid out as the mode says.

        With targets (all queries or none), their tokens (+ EOS unless `eos` is False) follow each prompt and
        `labels` mark them alone. `check_length`: refuse a batch with a prompt past the model's context.
        """
        rules = mode_of(mode)
        prompts, targets = [], []
        for query in queries:
            if not rules.demos and query.demos:
                raise AIMError("mode 'zero' takes no demos; pass demos=[] or use mode 'text', 'icl' or 'aim'")
            image = None if query.image is None else load_image(query.image)
            demos = [self.demo_parts(d, mode) for d in query.demos]
            prompts.append(query_parts(self.template, image, query.text, demos))
            targets.append(
                None if query.target is None else self.query_answer_ids(query.text, query.target, eos)
            )
        if any(t is not None for t in targets) and not all(t is not None for t in targets):
            raise AIMError("give every query in a batch a target, or none")
        return self.encode(prompts, targets if targets[0] is not None else None, check_length)

    def prepare_reading(self, demos: Sequence[Demo]) -> Encoded:
        """Demos as the backbone reads them: each its normal single-image input, the query layout with the demo's
        text (one slot of its own tokens) in the query's place."""
        prompts = []
        for demo in demos:
            image = None if demo.image is None else load_image(demo.image)
            parts = query_parts(self.template, image, "", [])
            prompts.append([*parts[:-1], Slots(self.text_ids(demo.text)), parts[-1]])
        return self.encode(prompts)

    def demo_parts(self, demo, mode: str) -> list[Part]:
        """One demo's parts in `mode`: its text's slot (the placeholder id in `aim`), after its image in `icl`.

        `demo`: a `Demo`, its `DemoStates`, a fused tensor (n_tokens, embed) or token ids (n_tokens,).
        """
        rules = mode_of(mode)
        if isinstance(demo, torch.Tensor):
            if not rules.fused and (demo.ndim != 1 or demo.is_floating_point()):
                raise AIMError(
                    f"fused tensors can only be used in mode 'aim', not {mode!r}; pass Demo objects"
                )
            ids = demo if demo.ndim == 1 else torch.zeros(len(demo), dtype=torch.long)
        elif isinstance(demo, DemoStates):
            if rules.demo_images:
                raise AIMError("cached demo states hold no image; mode 'icl' needs Demo objects")
            ids = demo.token_ids
        elif isinstance(demo, Demo):
            ids = self.text_ids(demo.text)
        else:
            raise AIMError(f"demos must be Demo, DemoStates or fused tensors, not {type(demo).__name__}")
        slot = Slots(torch.full_like(ids, self.placeholder_id) if rules.fused else ids)
        if not rules.demo_images:
            return [slot]
        if demo.image is None:
            raise AIMError("mode 'icl' needs every demo to have an image")
        return [load_image(demo.image), slot]

    def encode(
        self, prompts: list[list[Part]], targets: list[torch.Tensor] | None = None, check_length: bool = True
    ) -> Encoded:
        rendered = [self._render(parts) for parts in prompts]
        texts = [text for text, _, _ in rendered]
        images = [imgs for _, imgs, _ in rendered]
        kwargs = {"add_special_tokens": self.template.add_special_tokens}
        if len(texts) > 1:
            kwargs["padding"] = True
        if any(images):
            if not all(images):
                raise AIMError("a batch must give every prompt an image, or none")
            kwargs["images"] = images  # nested per prompt: some processors (OneVision) change mode on nesting
        try:
            out = self.processor(text=texts, return_tensors="pt", **kwargs)
        except (ValueError, TypeError, IndexError) as err:
            raise AIMError(f"the processor refused the prompt: {_first_line(err)}") from None
        out = {k: v for k, v in out.items() if k != "labels" and isinstance(v, torch.Tensor)}
        rows, positions = [], []
        for i, (_, _, slots) in enumerate(rendered):
            row, pos = self._widen(out, i, slots)
            if targets is not None:
                row = self._append_target(row, targets[i])
            rows.append(row)
            positions.append(pos)
        inputs = {k: v for k, v in out.items() if not is_per_token(out, k)}
        inputs.update(self._pad(rows))
        lengths = [len(r["input_ids"]) for r in rows]
        if check_length and not self.layout.fits(max(lengths)):
            raise PromptTooLong(max(lengths), self.layout.max_length)
        return Encoded(inputs=inputs, slot_positions=positions, lengths=lengths)

    def _render(self, parts: list[Part]) -> tuple[str, list[Image.Image], list[Slots]]:
        text, images, slots = [], [], []
        for part in parts:
            if isinstance(part, str):
                text.append(part)
            elif isinstance(part, Slots):
                text.append(SLOT_TOKEN)
                slots.append(part)
            else:
                text.append(self.template.image)
                images.append(part)
        text = "".join(text)
        if self.layout.family.images_first:
            text = self.template.image * len(images) + text.replace(self.template.image, "")
        return text, images, slots

    def _widen(
        self, out: dict, i: int, slots: list[Slots]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Replace row i's markers by the slots' tokens, widening every per-token tensor alike."""
        ids = out["input_ids"][i]
        keep = (
            out["attention_mask"][i].bool()
            if "attention_mask" in out
            else torch.ones_like(ids, dtype=torch.bool)
        )
        per_token = {k: v[i][keep] for k, v in out.items() if is_per_token(out, k)}
        markers = (per_token["input_ids"] == self.slot_id).nonzero().flatten().tolist()
        if len(markers) != len(slots):
            raise AIMError("a demo text or template contains the reserved slot token; remove it")
        pieces = {k: [] for k in per_token}
        positions, start, length = [], 0, 0
        for marker, slot in zip(markers, slots):
            n = len(slot.ids)
            for key, values in per_token.items():
                widened = slot.ids.to(values) if key == "input_ids" else values[marker].repeat(n)
                pieces[key] += [values[start:marker], widened]
            length += marker - start
            positions.append(torch.arange(length, length + n))
            length, start = length + n, marker + 1
        for key, values in per_token.items():
            pieces[key].append(values[start:])
        return {k: torch.cat(v) for k, v in pieces.items()}, positions

    def _append_target(self, row: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append the answer tokens after the prompt, as generation would produce them, with labels on them only."""
        n = len(target)
        overrides = self.layout.family.target_values
        out = {}
        for key, values in row.items():
            tail = target.to(values) if key == "input_ids" else values[-1:].repeat(n)
            if key in overrides:
                tail = torch.full_like(tail, overrides[key])
            out[key] = torch.cat([values, tail])
        out["labels"] = torch.cat([torch.full_like(row["input_ids"], -100), target.to(row["input_ids"])])
        return out

    def _pad(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad rows to one length, so each row's positions match its unpadded encoding."""
        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": self.pad_id, "labels": -100}
        batch = {}
        for key in rows[0]:
            padded = [
                torch.cat([r[key], r[key].new_full((width - len(r[key]),), fill.get(key, 0))]) for r in rows
            ]
            batch[key] = torch.stack(padded)
        if "attention_mask" not in batch:
            lengths = torch.tensor([len(r["input_ids"]) for r in rows])
            batch["attention_mask"] = (torch.arange(width)[None] < lengths[:, None]).long()
        return batch


def laid_out(demos: Sequence, mode: str) -> list:
    """Demos as a prompt in `mode` lays them out, and no more (cheap to send to a prepare worker): `Demo`s keep
    their image only where the mode shows it (`icl`), stored states become their token ids, fused tensors the
    length they take."""
    images = mode_of(mode).demo_images
    return [
        (d if images else Demo(None, d.text))
        if isinstance(d, Demo)
        else d.token_ids
        if isinstance(d, DemoStates)
        else torch.zeros(len(d), dtype=torch.long)
        if isinstance(d, torch.Tensor) and d.ndim == 2
        else d
        for d in demos
    ]


def is_per_token(inputs: dict[str, torch.Tensor], key: str) -> bool:
    """Whether `inputs[key]` has a value per token, (B, T, ...) like `input_ids` (pixel inputs never do)."""
    value = inputs[key]
    return (
        isinstance(value, torch.Tensor)
        and not key.startswith("pixel_")
        and value.shape[:2] == inputs["input_ids"].shape
    )


def _placeholder_id(tokenizer, image_token_id: int) -> int:
    """An id for fused slots that no image merging can mistake for an image token."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None and candidate != image_token_id:
            return int(candidate)
    return 1


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
