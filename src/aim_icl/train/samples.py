"""Training samples from a document: k earlier pairs are the demonstrations, a later pair is the target.

For web documents the query has no instruction: the prompt is `prompt` (empty by default), the target pair's
image is the query image, and its text is the target the loss is taken on. With a chat template the target is
then the assistant's answer to a user turn holding the fused demos and the image. The demos are the k pairs just
before the target, in document order (the context a reader of the page saw last), k drawn in [min_shots, max_shots].
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from aim_icl.core.demo import Demo
from aim_icl.train.documents import Document


@dataclass
class Sample:
    demos: list[Demo]  # k >= 1 earlier pairs, in document order
    image: Image.Image  # the target pair's real image
    prompt: str
    target: str  # the target pair's text: the only tokens with a loss


def document_samples(
    doc: Document, rng: random.Random, min_shots: int, max_shots: int, count: int = 1, prompt: str = ""
) -> list[Sample]:
    """Up to `count` samples with distinct targets (in document order); [] when the document is too short."""
    n = len(doc.pairs)
    if n <= min_shots:
        return []
    targets = sorted(rng.sample(range(min_shots, n), min(count, n - min_shots)))
    samples = []
    for t in targets:
        k = rng.randint(min_shots, min(max_shots, t))
        demos = [Demo(p.image, p.text) for p in doc.pairs[t - k : t]]
        samples.append(Sample(demos, doc.pairs[t].image, prompt, doc.pairs[t].text))
    return samples


class TextBudget:
    """Cuts a text to its first `max_tokens` tokens (at the character where the next token would start)."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, text: str) -> str:
        text = " ".join(text.split())  # web text: collapse runs of whitespace and newlines
        try:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:  # a slow tokenizer has no offsets: cut the ids and decode them
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return (
                text if len(ids) <= self.max_tokens else self.tokenizer.decode(ids[: self.max_tokens]).strip()
            )
        if len(encoded["input_ids"]) <= self.max_tokens:
            return text
        return text[: encoded["offset_mapping"][self.max_tokens][0]].rstrip()
