"""The world's words: every token its texts use, read off the formats and the scene attributes (names apart)."""

from __future__ import annotations

import re

from aim_icl.world import formats
from aim_icl.world.scene import ATTRIBUTES

SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PAD, UNK, BOS, EOS, IMAGE = SPECIAL


def _format_words() -> set[str]:
    texts = [
        *(t for pairs in formats.QUESTIONS.values() for pair in pairs for t in pair),
        *formats.YES_NO,
        *formats.BINDINGS,
        *(t for pair in formats.RECALLS for t in pair),
        *formats.NAME_QUERIES,
        formats.NAME_DEMO,
        *formats.CAPTION_STYLES.values(),
        formats.CAPTION_PROMPT,
        *formats.COPIES,
        *formats.FILLER,
    ]
    words = {w for t in texts for w in re.sub(r"\{\w+\}", " ", t).split()}
    return words | {"yes", "no", "the", "on"}


WORDS = tuple(sorted(_format_words() | {v for values in ATTRIBUTES.values() for v in values}))
