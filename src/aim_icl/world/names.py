"""Made-up names in three disjoint pools: pretraining names, projector names and held-out evaluation names.

A name is two syllables, an onset ("ka") and a coda ("dex"): "kadex", read as the tokens `ka ##dex`. Every onset
and coda occurs in pretraining names, but the evaluation names are combinations no training text contains, so fast
binding is tested on names the model has never seen (as a real LM meets a new word as known sub-word pieces) while
their tokens' embeddings are as trained as any.

The projector trains on names the LM never read either (corpus 4 alone uses them). On names the LM has memorized,
a name's second syllable follows from its first, so the projector's loss on it is met by the LM's memory and the
projector is free to overwrite that slot with the image: held-out names were then generated with the wrong ending.
Measured on one LM, 600 projector steps, 2-way items named from half the held-out pool: generated exact match
0.14-0.30 from 2 to 32 shots when the projector trained on pretraining names, 0.46-0.54 on names the LM never read.
"""

from __future__ import annotations

import itertools
import random

from aim_icl.world.vocab import WORDS

ONSETS = tuple(c + v for c, v in itertools.product("bdfgkmnprstvz", "aeiou") if c + v not in WORDS)[::2][:24]
CODAS = tuple(c + v + e for c, v, e in itertools.product("dlmnprst", "aeiou", "fkx"))[::7][:20]
N_EVAL = 96
N_PROJECTOR = 96


def _pools() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    # a name must not start with a longer word ("bar" + "ef"): the tokenizer matches longest pieces first
    names = [
        o + c for o, c in itertools.product(ONSETS, CODAS) if not any(o + c[:i] in WORDS for i in (1, 2))
    ]
    random.Random(1234).shuffle(names)  # fixed: the pools are part of the vocabulary, not of a run
    held_out, projector, pretrain = (
        names[:N_EVAL],
        names[N_EVAL : N_EVAL + N_PROJECTOR],
        names[N_EVAL + N_PROJECTOR :],
    )
    covered = {n[:2] for n in pretrain} | {n[2:] for n in pretrain}
    assert covered == set(ONSETS) | set(CODAS), "every syllable must occur in a pretraining name"
    return tuple(pretrain), tuple(projector), tuple(held_out)


TRAIN_NAMES, PROJECTOR_NAMES, EVAL_NAMES = _pools()
ALL_NAMES = TRAIN_NAMES + PROJECTOR_NAMES + EVAL_NAMES
