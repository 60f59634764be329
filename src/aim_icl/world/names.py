"""Made-up names in two disjoint pools: training names and held-out evaluation names.

A name is two syllables, an onset ("ka") and a coda ("dex"): "kadex", read as the tokens `ka ##dex`. Every onset
and coda occurs in training names, but the evaluation names are combinations no training text contains, so fast
binding is tested on names the model has never seen (as a real LM meets a new word as known sub-word pieces) while
their tokens' embeddings are as trained as any.
"""

from __future__ import annotations

import itertools
import random

from aim_icl.world.vocab import WORDS

ONSETS = tuple(c + v for c, v in itertools.product("bdfgkmnprstvz", "aeiou") if c + v not in WORDS)[::2][:24]
CODAS = tuple(c + v + e for c, v, e in itertools.product("dlmnprst", "aeiou", "fkx"))[::7][:20]
N_EVAL = 96


def _pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    # a name must not start with a longer word ("bar" + "ef"): the tokenizer matches longest pieces first
    names = [
        o + c for o, c in itertools.product(ONSETS, CODAS) if not any(o + c[:i] in WORDS for i in (1, 2))
    ]
    random.Random(1234).shuffle(names)  # fixed: the pools are part of the vocabulary, not of a run
    held_out = names[:N_EVAL]
    covered = {n[:2] for n in names[N_EVAL:]} | {n[2:] for n in names[N_EVAL:]}
    assert covered == set(ONSETS) | set(CODAS), "every syllable must occur in a training name"
    return tuple(names[N_EVAL:]), tuple(held_out)


TRAIN_NAMES, EVAL_NAMES = _pools()
ALL_NAMES = TRAIN_NAMES + EVAL_NAMES
