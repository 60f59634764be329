"""Training samples from a document: k earlier pairs are the demonstrations, a later pair is the target.

For web documents the query has no instruction: the prompt is `prompt` (empty by default), the target pair's
image is the query image, and its text is the target the loss is taken on. With a chat template the target is
then the assistant's answer to a user turn holding the fused demos and the image. The demos are pairs just before
the target, in document order (the context a reader of the page saw last).

Two choices of `SampleRules` shape what a sample can teach: which pair is the target (`random`: any pair with at
least `min_shots` pairs before it, as in the paper; `last`: the document's last pair, for documents written so that
their last pair refers back to earlier ones), and how many pairs before it are demos (`window`: k drawn in
[min_shots, max_shots]; `all`: every earlier pair, at most `max_shots`). On documents that introduce objects and
then show them again, a random target with a random window sees its object named among its demos far less often
than the last pair with all earlier pairs (measured on the embedded world's corpus: 43% against 100%).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aim_icl.core.demo import Query
from aim_icl.train.documents import Document

TARGETS = ("random", "last")
DEMOS = ("window", "all")


@dataclass(frozen=True)
class SampleRules:
    min_shots: int = 1
    max_shots: int = 4
    samples_per_document: int = 1  # distinct targets per document (with targets="random")
    prompt: str = ""
    shuffle_files: bool = True  # the stream reads the data files in a new seeded order each epoch
    targets: str = "random"  # one of TARGETS
    demos: str = "window"  # one of DEMOS


def document_samples(doc: Document, rng: random.Random, rule: SampleRules) -> list[Query]:
    """Up to `rule.samples_per_document` samples with distinct targets (in document order); [] when the document
    is too short."""
    n, count = len(doc.pairs), rule.samples_per_document
    if n <= rule.min_shots:
        return []
    if rule.targets == "last":
        targets = [n - 1]
    else:
        targets = sorted(rng.sample(range(rule.min_shots, n), min(count, n - rule.min_shots)))
    samples = []
    for t in targets:
        most = min(rule.max_shots, t)
        k = most if rule.demos == "all" else rng.randint(rule.min_shots, most)
        # the query: the target pair's image, the prompt, k earlier pairs as demos; the loss on the pair's text
        samples.append(Query(doc.pairs[t].image, rule.prompt, doc.pairs[t - k : t], doc.pairs[t].text))
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
