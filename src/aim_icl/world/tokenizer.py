"""The world's word-level tokenizer, built with `tokenizers`: one token per word or punctuation mark, two per name.

Names split into their syllables (`kadex` -> `ka ##dex`, WordPiece style); whitespace, newlines included, separates
words and costs no token.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from aim_icl.world.names import CODAS, ONSETS
from aim_icl.world.vocab import BOS, EOS, IMAGE, PAD, SPECIAL, UNK, WORDS

PIECE = "##"  # marks a syllable that continues a name


def vocabulary() -> dict[str, int]:
    """Specials first, then words, then name syllables: a fixed order."""
    tokens = [*SPECIAL, *WORDS, *ONSETS, *(PIECE + c for c in CODAS)]
    assert len(set(tokens)) == len(tokens), "a syllable collides with a word"
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = vocabulary()
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix=PIECE))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix=PIECE, cleanup=False)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[IMAGE],
        clean_up_tokenization_spaces=False,
    )
