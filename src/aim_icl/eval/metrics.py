"""Task metrics that reproduce the official evaluation tools without their runtime dependencies.

VQA accuracy follows the VQA API's ``vqaEval.py`` (GT-Vision-Lab/VQA, master), CIDEr-D follows the
COCO caption toolkit (``pycocoevalcap`` ``Cider``), ROC-AUC equals ``sklearn.metrics.roc_auc_score``.
Only numpy and the standard library are needed, so evaluation runs anywhere (no Java, no sklearn).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "AGGREGATION",
    "cider",
    "cider_per_item",
    "exact_match",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "roc_auc",
    "vqa_accuracy",
]

# How each metric turns per-item values into a corpus number: "mean" metrics are averaged over
# items; "corpus" metrics must be computed on the whole corpus at once (CIDEr's document frequencies
# and ROC-AUC's ranking both depend on every item).
AGGREGATION: dict[str, str] = {
    "vqa_accuracy": "mean",
    "exact_match": "mean",
    "cider": "corpus",
    "roc_auc": "corpus",
}

# ---------------------------------------------------------------------------------------------------
# VQA accuracy (tables copied from the official vqaEval.py, master branch)
# ---------------------------------------------------------------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = list(';/[]"{}()=+\\_-><@`,?!')
# The official lookbehind is malformed ("(?!<=" is a lookahead), so every period not followed by a
# digit is removed; kept verbatim because it defines the metric.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code calls periodStrip.sub("", text, re.UNICODE): the flag lands in ``count``, so at
# most re.UNICODE == 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        # Decisions look at the *input* text while replacements accumulate, exactly as upstream.
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """The official answer normalisation (whitespace, punctuation, number words, articles, contractions).

    Exposed so callers can pre-normalise model outputs; :func:`vqa_accuracy` applies it only where
    the official evaluator does.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against its human answers, as the official ``vqaEval.py``.

    ``acc = mean over leave-one-out subsets of min(#humans in subset that gave the prediction / 3, 1)``,
    which with 10 answers is the published ``min(#matches/3, 1)`` averaged over the 10 choose 9 sets.
    Fewer answers are allowed (leave-one-out over what is given; a single answer therefore scores 0).

    Faithful to upstream (master), including its quirk: answers and prediction are only whitespace-
    stripped, and the full normalisation (:func:`normalize_vqa_answer`) is applied to both *only
    when the human answers disagree*. So with unanimous answers ``"yes"`` the prediction ``"Yes"``
    scores 0. Official VQA annotations are already lower-case and normalised; callers wanting a
    lenient score can pass ``normalize_vqa_answer(prediction)``. (Older upstream revisions always
    normalised the prediction and only punctuation-processed disagreeing answers; we follow master.)
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(a)) for a in gts]
        pred = _process_digit_article(_process_punctuation(pred))
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


# ---------------------------------------------------------------------------------------------------
# PTB tokenisation as used by the COCO caption toolkit
# ---------------------------------------------------------------------------------------------------

# Tokens the toolkit's ptbtokenizer.py drops after Stanford PTBTokenizer. Note "-LRB-" etc. are
# compared *after* lower-casing upstream, so they never match and "-lrb-"/"-rrb-" survive.
_PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_APOS = "'\u2019\u0092"
# Abbreviations that keep their period (PTBLexer's lists; a few are case-sensitive there too).
_ABBREV = (
    "mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|"
    "pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|vs|alex|wm|jos|cie|cf|treas|invt|elec|natl|m[ft]g|"
    "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri|"
    "ala|ariz|(?-i:A)rk|calif|colo|conn|dak|(?-i:D)el|fla|ga|(?-i:I)ll|ind|kans?|ky|(?-i:L)a|(?-i:M)ass|md|mich|minn|"
    "(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|(?-i:P)a|penn|tenn|(?-i:T)ex|va|vt|(?-i:W)ash|wisc?|wyo|"
    "inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys|ph|tel|est|ext|sq|ft|"
    "jr|sr|bros|blvd|rd|esq|etc|al|seq"
)
# After a one-letter abbreviation these capitalised words mark a sentence end (the period is split off).
_SENTENCE_STARTERS = (
    "About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|In|It|Last|Many|"
    "More|Mr\\.|Ms\\.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|The|Then|There|These|They|This|"
    "We|When|While|What|Yet|You"
)
_PTB_RE = re.compile(
    rf"""
    (?P<sgml></?[a-z!][^>]*>)
  | (?P<email>[a-z0-9][^\s"<>|()\u00a0]*@(?:[^\s"<>|().\u00a0]+\.)+[a-z]{{2,4}})
  | (?P<url>https?://[^\s"<>|()]*[^\s"<>|.!?(){{}},-])
  | (?P<ellipsis>\.{{3,5}}|[\u2026\u0085])
  | (?P<sentfinal>[a-z])(?=\.\s+(?-i:{_SENTENCE_STARTERS})(?:\s|$))
  | (?P<acro>[a-z](?:\.[a-z])+\.?)
  | (?P<abbrev>(?:{_ABBREV}|[a-z])\.|nos?\.(?=\s*\d))(?![a-z0-9])
  | (?P<assim>gon(?=na\b)|got(?=ta\b)|wan(?=na\b)|lem(?=me\b)|gim(?=me\b)|can(?=not\b))
  | (?P<nt_stem>[a-z]*[a-mo-z])(?=n[{_APOS}]t\b)
  | (?P<nt>n[{_APOS}]t)\b
  | (?P<word_before_clitic>[^\W\d_]+(?=[{_APOS}](?:s|m|d|re|ve|ll)(?![a-z])))
  | (?P<redaux>[{_APOS}](?:s|m|d|re|ve|ll))(?![a-z])
  | (?P<frac>(?:\d{{1,4}}[- \u00a0])?\d{{1,4}}(?:\\?/|\u2044)\d{{1,4}})
  | (?P<slash>[a-z0-9]+(?:-[a-z]+){{0,2}}(?:\\?/[a-z0-9]+(?:-[a-z]+){{0,2}}){{1,2}})
  | (?P<hyph>[a-z0-9][a-z0-9.,]*(?:[-_\u2010\u2011][a-z0-9]+)+)
  | (?P<number>[-+]?\d*(?:[.:,]\d+)+|[-+]?\d+(?![^\W_]))
  | (?P<apoword>[dol][{_APOS}][a-z0-9]+|c'mon|y[{_APOS}](?=[a-z])|[{_APOS}]n[{_APOS}]|[{_APOS}]n(?![a-z])
      |[{_APOS}][2-9]0s|[{_APOS}]\d\d(?=\s|$)|[a-z]+[aeiouy][{_APOS}][aeiou][a-z]*)
  | (?P<word>[^\W_]+)
  | (?P<dashes>-{{2,}}|[\u2013\u2014\u2015\u0096\u0097])
  | (?P<unds>_+)
  | (?P<qe>[?!]+)
  | (?P<dquote>"|&quot;|[\u201c\u201d\u201e\u201f\u00ab\u00bb\u0093\u0094]|``|'')
  | (?P<squote>[`'\u2018\u2019\u201a\u201b\u2039\u203a\u0091\u0092])
  | (?P<amp>&amp;)
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.IGNORECASE,
)
_SYMBOLS = {
    "(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-",
    "\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$",
    "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3",
}  # fmt: skip


def ptb_tokenize(text: str) -> list[str]:
    """Pure-Python stand-in for the COCO toolkit's tokenisation: Stanford PTBTokenizer (CoreNLP 3.4.1,
    as shipped in pycocoevalcap) run with ``-preserveLines -lowerCase``, then removal of the toolkit's
    punctuation tokens. Needs no Java.

    What it does, as upstream: punctuation is split off and dropped (``. , ; : ? ! - -- ...`` and
    quotes); clitics are split (``dog's`` -> ``dog 's``, ``don't`` -> ``do n't``, ``cannot`` -> ``can
    not``, ``gonna`` -> ``gon na``); hyphenated words, ``and/or``, ``1,000``, ``3.5``, ``4:30``, and
    abbreviations such as ``mr.`` / ``u.s.`` / a one-letter ``a.`` stay whole; brackets become
    ``-lrb-`` ``-rrb-`` ``-lsb-`` ``-rsb-`` ``-lcb-`` ``-rcb-`` and are *kept* (upstream compares
    upper-case names after lower-casing); runs like ``!!`` or ``?!`` survive as tokens.

    Checked against the Java tokenizer on ~12,000 caption-like strings: identical except where
    upstream looks into the *next* caption of its batch: a caption ending in a one-letter word plus
    period (``... a.``) loses the period upstream when the next caption starts with one of a few
    words (``A``, ``The``, ``This``, ...); here it keeps it. Also not reproduced:
    rare lexer classes (phone numbers, SGML entities) and deletion of characters the lexer cannot
    tokenise (kept here as one-character tokens).
    """
    text = text.replace("\n", " ")
    tokens: list[str] = []
    for m in _PTB_RE.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "ellipsis":
            tok = "..."
        elif kind in ("nt", "redaux"):
            tok = re.sub(f"[{_APOS}]", "'", tok)
        elif kind == "frac":
            tok = tok.replace(" ", "\u00a0")
        elif kind == "dashes":
            tok = "--" if tok[0] != "-" or 2 <= len(tok) <= 4 else tok
        elif kind == "dquote":
            tok = "''"
        elif kind == "squote":
            tok = "'"
        elif kind == "amp":
            tok = "&"
        elif tok in _SYMBOLS:
            tok = _SYMBOLS[tok]
        tok = tok.lower()
        if tok not in _PTB_PUNCTUATIONS:
            tokens.append(tok)
    return tokens


# ---------------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap Cider / CiderScorer)
# ---------------------------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _as_caption(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    if len(value) != 1:
        raise ValueError("each prediction must be one caption")
    return value[0]


def cider_per_item(
    predictions: Mapping,
    references: Mapping,
    *,
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> dict:
    """Per-image CIDEr-D scores (the ``scores`` array of pycocoevalcap's ``Cider.compute_score``).

    Mirrors ``CiderScorer`` exactly: tf-idf n-gram vectors with ``idf = log(N_images) -
    log(max(1, df))``, ``df`` counted over the *references of this corpus* (one count per image),
    candidate weights clipped by reference weights, cosine per n, Gaussian length penalty with
    ``sigma``, mean over n = 1..n, mean over references, times 10. Upstream's "length" counts
    *bigrams* (``n == 1`` on a 0-based index); replicated, though it only differs from the word count
    for empty captions, whose score is 0 either way. With ``tokenize=False`` texts are split on
    whitespace only, as when feeding already PTB-tokenised strings to the upstream scorer.
    """
    if set(predictions) != set(references):
        raise ValueError("predictions and references must have the same ids")
    if not predictions:
        raise ValueError("cider needs at least one item")
    split = ptb_tokenize if tokenize else str.split
    ids = list(references)
    hyp_counts = {i: _ngrams(split(_as_caption(predictions[i])), n) for i in ids}
    ref_counts = {}
    for i in ids:
        refs = references[i]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i!r}] must be a non-empty list of captions")
        ref_counts[i] = [_ngrams(split(r), n) for r in refs]

    doc_freq: Counter = Counter()
    for refs in ref_counts.values():
        doc_freq.update({g for r in refs for g in r})
    log_n_images = math.log(float(len(ids)))

    def to_vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_n_images - math.log(max(1.0, float(doc_freq[gram]))))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:  # upstream quirk: "length" counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = {}
    for i in ids:
        hypothesis = to_vec(hyp_counts[i])
        total = sum(_cider_similarity(hypothesis, to_vec(ref), sigma) for ref in ref_counts[i])
        scores[i] = float(np.mean(total) / len(ref_counts[i]) * 10.0)
    return scores


def _cider_similarity(hypothesis: tuple, reference: tuple, sigma: float) -> np.ndarray:
    """Per-n clipped cosine of two tf-idf vectors `(vec, norm, length)`, times the Gaussian length penalty."""
    (vec, norm, length), (vec_r, norm_r, length_r) = hypothesis, reference
    penalty = math.e ** (-(float(length - length_r) ** 2) / (2 * sigma**2))
    val = np.zeros(len(vec))
    for k in range(len(vec)):
        for gram, w in vec[k].items():
            w_r = vec_r[k].get(gram, 0.0)
            val[k] += min(w, w_r) * w_r
        if norm[k] != 0 and norm_r[k] != 0:
            val[k] /= norm[k] * norm_r[k]
        val[k] *= penalty
    return val


def cider(predictions: Mapping, references: Mapping, **kwargs) -> float:
    """Corpus CIDEr-D as reported by the COCO caption toolkit: mean of :func:`cider_per_item`.

    ``predictions``: id -> caption; ``references``: id -> list of captions. A corpus metric: the idf
    comes from the evaluated references, so scores of sub-corpora do not average to this value.
    """
    return float(np.mean(list(cider_per_item(predictions, references, **kwargs).values())))


# ---------------------------------------------------------------------------------------------------
# ROC-AUC and exact match
# ---------------------------------------------------------------------------------------------------


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Binary ROC-AUC, equal to ``sklearn.metrics.roc_auc_score``.

    Computed as the Mann-Whitney statistic with average ranks for tied scores, which is the area
    under the trapezoid-interpolated ROC curve (a tie between a positive and a negative counts 1/2).
    The larger of the two label values is the positive class, as in sklearn.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError("labels and scores must be 1-D sequences of equal length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(
            f"roc_auc needs both classes present in labels, got {len(classes)} distinct value(s)"
            " (ROC AUC is undefined with a single class)"
        )
    positive = y == classes[1]
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average 1-based rank within each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    n_pos = int(positive.sum())
    n_neg = len(s) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


_TRAILING_PUNCT = re.compile(rf"[\s{re.escape(string.punctuation)}]+$")


def _normalize_exact(text: str) -> str:
    return _TRAILING_PUNCT.sub("", " ".join(text.lower().split()))


def exact_match(prediction: str, answer: str) -> float:
    """1.0 if prediction and answer agree after light normalisation, else 0.0.

    Normalisation (so formatting noise from generation does not count as an error, while content
    still must match exactly): lower-case, collapse all whitespace runs to one space and strip the
    ends, then strip trailing ASCII punctuation (``"Paris."`` == ``"paris"``, ``"yes!!"`` == ``"yes"``).
    Leading and inner punctuation are kept.
    """
    return 1.0 if _normalize_exact(prediction) == _normalize_exact(answer) else 0.0
